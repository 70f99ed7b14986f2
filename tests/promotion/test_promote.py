"""Promotion gates end to end on a local registry: real models scored in worker processes.

Each candidate is built to fail exactly one gate (or none); the gate the test expects is
named by hand from the policy it wrote, never read back from the code under test.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.errors import Conflict, Forbidden
from shipyard.promotion.policy import parse_policy
from shipyard.promotion.service import EvaluationOrder, PromotionService
from shipyard.registry.audit import Actor, acting_as
from shipyard.registry.records import ModelVersion, PromotionState, RegistrationOptions
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from tests import fixtures

# The true rule of fixtures.training_data: label = f0 + f1 > 0.
RULE_MODEL = """
import time

import numpy as np


class Rule:
    def load(self):
        self.pause = {pause}

    def predict(self, inputs):
        if self.pause:
            time.sleep(self.pause)
        label = (inputs["f0"] + inputs["f1"] > 0).astype(np.int64)
        edge = inputs["f2"] < {edge}
        return np.where(edge, 1 - label, label)
"""


@pytest.fixture
def sqlite_registry(sqlite_settings: Settings) -> Iterator[Registry]:
    opened = Registry.open(sqlite_settings)
    yield opened
    opened.close()


def _holdout(folder: Path) -> Path:
    """300 rows with the label and a region: `edge` where f2 < -1.5 (about 7%)."""
    features, labels = fixtures.training_data(rows=300, seed=5)
    path = folder / "holdout.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*fixtures.FEATURES, "label", "region"])
        for row, label in zip(features.tolist(), labels, strict=True):
            writer.writerow([*row, int(label), "edge" if row[2] < -1.5 else "core"])
    return path


def _register_sklearn(
    registry: Registry, folder: Path, shuffle: bool = False, features: int = 4
) -> ModelVersion:
    data, labels = fixtures.training_data(rows=200)
    if shuffle:
        labels = np.random.default_rng(3).permutation(labels)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression().fit(data[:, :features], labels), folder / "model.joblib")
    example = folder / "example.csv"
    with example.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(fixtures.FEATURES[:features])
        writer.writerows(data[:, :features].tolist())
    return registry.register(folder / "model.joblib", RegistrationOptions(name="churn"), example)


def _register_rule(
    registry: Registry, folder: Path, pause: float = 0.0, edge: float = -99.0
) -> ModelVersion:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rule.py").write_text(RULE_MODEL.format(pause=pause, edge=edge))
    example = fixtures.write_example_csv(folder, rows=200)
    return registry.register(folder / "rule.py", RegistrationOptions(name="churn"), example)


POLICY = """
name: churn-gates
model: churn
alias: production
metrics:
  accuracy: {min: 0.8, min_change: 0.0, per_slice: true}
signature: compatible
"""


def _promote(registry: Registry, version: int, holdout: Path, policy: str = POLICY):
    service = PromotionService(registry)
    order = EvaluationOrder(str(holdout), "label", slice_by="region")
    return service.promote(ModelRef("churn", version=version), parse_policy(policy), order)


def _gates(promotion) -> dict[str, bool]:  # type: ignore[no-untyped-def]
    return {gate["gate"]: gate["passed"] for gate in promotion.gates}


def test_a_better_candidate_passes_and_takes_the_alias(registry: Registry, tmp_path: Path) -> None:
    champion = _register_sklearn(registry, tmp_path / "v1", shuffle=True)
    registry.models.set_alias("churn", "production", champion.version)
    candidate = _register_sklearn(registry, tmp_path / "v2")  # fits the true, linear rule

    promotion = _promote(registry, candidate.version, _holdout(tmp_path))

    assert promotion.state is PromotionState.PROMOTED, promotion.reason
    assert _gates(promotion) == {
        "metrics.accuracy": True,
        "metrics.accuracy[region=core]": True,
        "metrics.accuracy[region=edge]": True,
        "signature": True,
    }
    assert registry.models.get_version(ModelRef("churn", alias="production")).version == 2
    assert promotion.previous_version == 1
    evaluation = registry.evaluations.get(promotion.evaluation_id or 0)
    assert evaluation.state == "succeeded" and evaluation.against == 1
    assert "<svg" in registry.evaluations.report(evaluation.id)
    actions = [e.action for e in registry.audit.events(limit=20)]
    assert {"policy.apply", "promotion.request", "promotion.pass", "promotion.promote"} <= set(
        actions
    )


def test_worse_on_one_slice_fails_that_slice_gate(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    registry = sqlite_registry
    champion = _register_rule(registry, tmp_path / "v1")  # the true rule: accuracy 1.0
    registry.models.set_alias("churn", "production", champion.version)
    # Right everywhere but the edge region, where it answers the opposite.
    candidate = _register_rule(registry, tmp_path / "v2", edge=-1.5)
    policy = POLICY.replace("min_change: 0.0, ", "")  # overall it may be a little worse

    promotion = _promote(registry, candidate.version, _holdout(tmp_path), policy)

    assert promotion.state is PromotionState.FAILED
    assert _gates(promotion) == {
        "metrics.accuracy": True,
        "metrics.accuracy[region=core]": True,
        "metrics.accuracy[region=edge]": False,
        "signature": True,
    }
    assert "metrics.accuracy[region=edge]" in promotion.reason
    assert registry.models.get_version(ModelRef("churn", alias="production")).version == 1


def test_a_removed_input_fails_the_signature_gate(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    registry = sqlite_registry
    champion = _register_sklearn(registry, tmp_path / "v1", shuffle=True)
    registry.models.set_alias("churn", "production", champion.version)
    candidate = _register_sklearn(registry, tmp_path / "v2", features=3)  # no f3

    promotion = _promote(registry, candidate.version, _holdout(tmp_path))

    assert promotion.state is PromotionState.FAILED
    assert _gates(promotion)["signature"] is False
    (signature,) = [g for g in promotion.gates if g["gate"] == "signature"]
    assert "f3" in signature["value"]
    assert registry.models.get_version(ModelRef("churn", alias="production")).version == 1


def test_a_slow_candidate_fails_the_latency_budget(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    registry = sqlite_registry
    champion = _register_rule(registry, tmp_path / "v1")
    registry.models.set_alias("churn", "production", champion.version)
    candidate = _register_rule(registry, tmp_path / "v2", pause=0.03)  # 30 ms a call
    policy = POLICY + "latency: {one_row_p95_ms: 20}\n"

    promotion = _promote(registry, candidate.version, _holdout(tmp_path), policy)

    assert promotion.state is PromotionState.FAILED
    gates = _gates(promotion)
    assert gates["latency.one_row_p95_ms"] is False
    assert gates["metrics.accuracy"] is True  # only the budget stands in its way


APPROVAL = POLICY + "approval: {required: true, roles: [admin], four_eyes: true}\n"


def test_approval_by_an_allowed_role_with_four_eyes(
    sqlite_registry: Registry, tmp_path: Path
) -> None:
    registry = sqlite_registry
    with acting_as(Actor("rita", "deployer")):
        champion = _register_sklearn(registry, tmp_path / "v1", shuffle=True)
        registry.models.set_alias("churn", "production", champion.version)
        candidate = _register_sklearn(registry, tmp_path / "v2")
        waiting = _promote(registry, candidate.version, _holdout(tmp_path), APPROVAL)
    assert waiting.state is PromotionState.AWAITING_APPROVAL
    assert registry.models.get_version(ModelRef("churn", alias="production")).version == 1

    service = PromotionService(registry)
    with acting_as(Actor("dan", "deployer")), pytest.raises(Forbidden, match="admin"):
        service.decide(waiting.id, approve=True)
    with acting_as(Actor("rita", "admin")), pytest.raises(Forbidden, match="four eyes"):
        service.decide(waiting.id, approve=True)  # she registered and asked: not her call
    with acting_as(Actor("ada", "admin")):
        approved = service.decide(waiting.id, approve=True, reason="looked at the report")
    assert approved.state is PromotionState.PROMOTED
    assert approved.decided_by == "ada"
    assert registry.models.get_version(ModelRef("churn", alias="production")).version == 2
    with acting_as(Actor("ada", "admin")), pytest.raises(Conflict):
        service.decide(waiting.id, approve=False)  # decided already


def test_a_rejected_promotion_moves_nothing(sqlite_registry: Registry, tmp_path: Path) -> None:
    registry = sqlite_registry
    champion = _register_sklearn(registry, tmp_path / "v1", shuffle=True)
    registry.models.set_alias("churn", "production", champion.version)
    candidate = _register_sklearn(registry, tmp_path / "v2")
    waiting = _promote(
        registry,
        candidate.version,
        _holdout(tmp_path),
        APPROVAL.replace("four_eyes: true", "four_eyes: false"),
    )

    with acting_as(Actor("ada", "admin")):
        rejected = PromotionService(registry).decide(waiting.id, approve=False, reason="not now")

    assert rejected.state is PromotionState.REJECTED and rejected.reason == "not now"
    assert registry.models.get_version(ModelRef("churn", alias="production")).version == 1
