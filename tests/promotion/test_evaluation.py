"""Evaluation end to end: real registered sklearn models scored in child processes.

Expected values come from loading the same model files here with joblib and scoring
with sklearn.metrics (and a hand loop for calibration), never from the code under test.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn import metrics as sk
from sklearn.linear_model import LinearRegression, LogisticRegression

from shipyard.config import IsolationLimits, Settings
from shipyard.errors import InvalidInput
from shipyard.promotion.evaluation import EvaluationRequest, evaluate, reference_sample
from shipyard.registry.records import ModelVersion, RegistrationOptions
from shipyard.registry.service import Registry
from tests import fixtures

LIMITS = IsolationLimits(seconds=60.0)
ROWS = 300


@pytest.fixture
def registry(sqlite_settings: Settings) -> Iterator[Registry]:
    opened = Registry.open(sqlite_settings)
    yield opened
    opened.close()


def _register(registry: Registry, folder: Path, model: Any, example: bool = True) -> ModelVersion:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.joblib"
    joblib.dump(model, path)
    example_path = fixtures.write_example_csv(folder, rows=200) if example else None
    return registry.register(path, RegistrationOptions(name="churn"), example_path)


def _classifiers() -> tuple[LogisticRegression, LogisticRegression]:
    """A good model, and one trained on shuffled labels (little better than a coin)."""
    features, labels = fixtures.training_data(rows=200)
    good = LogisticRegression().fit(features, labels)
    shuffled = np.random.default_rng(1).permutation(labels)
    return good, LogisticRegression().fit(features, shuffled)


def _holdout(folder: Path, rows: int = ROWS) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A CSV of features, a label and a region (north where f2 > 0): not a model input."""
    features, labels = fixtures.training_data(rows=rows, seed=11)
    regions = np.where(features[:, 2] > 0, "north", "south")
    path = folder / "holdout.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*fixtures.FEATURES, "label", "region"])
        for row, label, region in zip(features.tolist(), labels, regions, strict=True):
            writer.writerow([*row, int(label), region])
    return path, features, labels, regions


def _hand_ece(truth: np.ndarray, scores: np.ndarray) -> float:
    confidence, top = scores.max(axis=1), scores.argmax(axis=1)
    total = 0.0
    for low in np.arange(10) / 10:
        inside = (confidence > low) & (confidence <= low + 0.1)
        if inside.any():
            gap = abs(np.mean(top[inside] == truth[inside]) - confidence[inside].mean())
            total += inside.sum() * gap
    return total / len(truth)


def _expected(model: Any, features: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    predicted, scores = model.predict(features), model.predict_proba(features)
    return {
        "accuracy": sk.accuracy_score(truth, predicted),
        "precision": sk.precision_score(truth, predicted, average="macro", zero_division=0),
        "recall": sk.recall_score(truth, predicted, average="macro", zero_division=0),
        "f1": sk.f1_score(truth, predicted, average="macro"),
        "roc_auc": sk.roc_auc_score(truth, scores[:, 1]),
        "log_loss": sk.log_loss(truth, scores, labels=[0, 1]),
        "calibration_error": _hand_ece(truth, scores),
    }


def _assert_metrics(actual: dict[str, Any], expected: dict[str, float]) -> None:
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, abs=1e-9), name


def test_candidate_against_champion(registry: Registry, tmp_path: Path) -> None:
    good, bad = _classifiers()
    champion = _register(registry, tmp_path / "v1", good)
    candidate = _register(registry, tmp_path / "v2", bad)
    path, features, truth, regions = _holdout(tmp_path)
    request = EvaluationRequest(str(path), "label", slice_by="region")

    result = evaluate(registry, candidate, champion, request, LIMITS)

    assert result["kind"] == "evaluation"
    assert result["candidate"] == {"model": "churn", "version": 2}
    assert result["champion"] == {"model": "churn", "version": 1}
    assert result["data"] == {
        "uri": str(path), "rows": ROWS, "label": "label", "slice_by": "region",
        "digest": hashlib.sha256(path.read_bytes()).hexdigest(),
    }  # fmt: skip
    assert result["task"] == "classification"
    _assert_metrics(result["metrics"]["candidate"], _expected(bad, features, truth))
    _assert_metrics(result["metrics"]["champion"], _expected(good, features, truth))
    assert result["metrics"]["candidate"]["accuracy"] < result["metrics"]["champion"]["accuracy"]

    assert [s["value"] for s in result["slices"]] == ["north", "south"]
    for entry in result["slices"]:
        inside = regions == entry["value"]
        assert entry["rows"] == int(inside.sum())
        _assert_metrics(entry["candidate"], _expected(bad, features[inside], truth[inside]))
        _assert_metrics(entry["champion"], _expected(good, features[inside], truth[inside]))
    north = result["slices"][0]
    assert north["candidate"]["accuracy"] < north["champion"]["accuracy"]

    differ = sum(a != b for a, b in zip(bad.predict(features), good.predict(features), strict=True))
    assert result["disagreement"] == pytest.approx(differ / ROWS)
    assert result["errors"] == {"candidate": 0, "champion": 0}
    for side in ("candidate", "champion"):
        latency = result["latency"][side]
        assert set(latency) == {
            "one_row_p50_ms",
            "one_row_p95_ms",
            "batch32_p50_ms",
            "batch32_p95_ms",
        }
        assert all(value > 0 for value in latency.values())
        assert latency["one_row_p95_ms"] >= latency["one_row_p50_ms"]
        resources = result["resources"][side]
        assert resources["worker_memory_bytes"] > 10 * 2**20  # an interpreter with sklearn
        assert resources["artifact_bytes"] == (tmp_path / ("v2" if side == "candidate" else "v1")
                                               / "model.joblib").stat().st_size  # fmt: skip
    assert result["signature"] == {"compatible": True, "breaking": [], "non_breaking": []}
    checked = {check["feature"] for check in result["data_checks"]["checks"]}
    assert checked == set(fixtures.FEATURES)  # the label and the region are not features


def test_no_champion_and_rows_the_model_cannot_score(registry: Registry, tmp_path: Path) -> None:
    good, _ = _classifiers()
    candidate = _register(registry, tmp_path / "v1", good, example=False)
    path, features, truth, _ = _holdout(tmp_path, rows=40)
    lines = path.read_text().splitlines()
    lines[3] = "oops," + lines[3].split(",", 1)[1]  # row 2's f0 is not a number
    path.write_text("\n".join(lines) + "\n")
    request = EvaluationRequest(str(path), "label", slice_by="region", max_rows=30)

    result = evaluate(registry, candidate, None, request, LIMITS)

    assert result["data"]["rows"] == 30
    assert result["errors"] == {"candidate": 1, "champion": None}
    scored = np.delete(np.arange(30), 2)
    expected = _expected(good, features[scored], truth[scored])
    _assert_metrics(result["metrics"]["candidate"], expected)
    assert result["metrics"]["champion"] is None
    assert result["disagreement"] is None
    assert result["latency"]["champion"] is None
    assert result["resources"]["champion"] is None
    assert sum(entry["rows"] for entry in result["slices"]) == 30
    assert all(entry["champion"] is None for entry in result["slices"])
    assert result["signature"] == {"compatible": True, "breaking": [], "non_breaking": []}
    # Registered without an example: no reference sample to check the data against.
    assert reference_sample(registry, candidate) is None
    assert result["data_checks"]["passed"] is True
    assert [c["check"] for c in result["data_checks"]["checks"]] == ["reference"]


def test_regression_metrics_and_disagreement(registry: Registry, tmp_path: Path) -> None:
    features, _ = fixtures.training_data(rows=200)
    target = features @ np.array([1.0, -2.0, 0.5, 0.0])
    champion_model = LinearRegression().fit(features, target)
    candidate_model = LinearRegression().fit(features, target + features[:, 3])
    champion = _register(registry, tmp_path / "v1", champion_model)
    candidate = _register(registry, tmp_path / "v2", candidate_model)
    holdout, _ = fixtures.training_data(rows=50, seed=5)
    truth = holdout @ np.array([1.0, -2.0, 0.5, 0.0])
    path = tmp_path / "holdout.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*fixtures.FEATURES, "y"])
        writer.writerows([[*row, y] for row, y in zip(holdout.tolist(), truth, strict=True)])

    result = evaluate(registry, candidate, champion, EvaluationRequest(str(path), "y"), LIMITS)

    assert result["task"] == "regression"
    ours, theirs = candidate_model.predict(holdout), champion_model.predict(holdout)
    assert result["metrics"]["candidate"] == pytest.approx(
        {
            "mae": sk.mean_absolute_error(truth, ours),
            "rmse": np.sqrt(sk.mean_squared_error(truth, ours)),
            "r2": sk.r2_score(truth, ours),
        }
    )
    assert result["disagreement"] == pytest.approx(np.mean(np.abs(ours - theirs)) / np.std(theirs))
    assert result["slices"] == []


def test_a_model_that_scores_nothing_is_refused(registry: Registry, tmp_path: Path) -> None:
    good, _ = _classifiers()
    candidate = _register(registry, tmp_path / "v1", good)
    path = tmp_path / "holdout.csv"
    path.write_text("f0,f1,f2,label\n0.1,0.2,0.3,1\n")  # f3 is missing

    with pytest.raises(InvalidInput, match="f3"):
        evaluate(registry, candidate, None, EvaluationRequest(str(path), "label"), LIMITS)
    with pytest.raises(InvalidInput, match="no label column 'target'"):
        evaluate(registry, candidate, None, EvaluationRequest(str(path), "target"), LIMITS)
