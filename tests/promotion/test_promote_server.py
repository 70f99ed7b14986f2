"""Promotion through a running server: the CLI over SHIPYARD_URL with role keys, the
background jobs, a replay gate against the server's own prediction log, approval by
role, and evaluation triggered by registering with a policy's on_register alias."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from tests import fixtures
from tests.polling import eventually
from tests.security.conftest import make_keyed_home
from tests.server import running_server, shipyard_command

DEPLOYMENT = "churn-api"


@dataclass
class Site:
    url: str
    home: Path
    tokens: dict[str, str]
    folder: Path
    holdout: Path

    def cli(self, role: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "COLUMNS": "200",
            "SHIPYARD_URL": self.url,
            "SHIPYARD_API_KEY": self.tokens[role],
            "SHIPYARD_HOME": str(self.home),
        }
        return subprocess.run(
            [*shipyard_command(), *args], env=env, capture_output=True, text=True, timeout=180
        )

    def registry(self) -> Registry:
        return Registry.open(Settings(home=self.home))


def _model(folder: Path, rule: str) -> Path:
    """A logistic regression of `same` (the data's true rule, f0 + f1 > 0) or `other`
    (f0 - f1 > 0): the two disagree on about half the rows."""
    features, truth = fixtures.training_data(rows=200)
    labels = truth if rule == "same" else (features[:, 0] - features[:, 1] > 0).astype(np.int64)
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(LogisticRegression().fit(features, labels), folder / "model.joblib")
    return folder / "model.joblib"


def _holdout(folder: Path) -> Path:
    features, labels = fixtures.training_data(rows=200, seed=9)
    path = folder / "holdout.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([*fixtures.FEATURES, "label"])
        for row, label in zip(features.tolist(), labels, strict=True):
            writer.writerow([*row, int(label)])
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """v1 (the true rule) is production behind churn-api, which logged 40 requests."""
    folder = tmp_path_factory.mktemp("promote-server")
    keyed = make_keyed_home(folder / "home")
    example = fixtures.write_example_csv(folder, rows=100)
    registry = Registry.open(Settings(home=keyed.home))
    try:
        registry.register(
            _model(folder / "v1", "same"),
            RegistrationOptions(name="churn", aliases=["production"]),
            example,
        )
        manifest = (
            f"name: {DEPLOYMENT}\nmodel: churn\nroutes: [{{alias: production}}]\n"
            "monitoring: {sample: 1.0}\n"
        )
        registry.deployments.apply(parse_manifest(manifest))
    finally:
        registry.close()
    env = {**keyed.env, "SHIPYARD_PREDICTION_LOG_FLUSH_SECONDS": "0.1"}
    with running_server(env) as server:
        headers = {"authorization": f"Bearer {keyed.tokens['predictor']}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
            for seed in range(40):
                row = fixtures.training_data(rows=1, seed=100 + seed)[0][0]
                body = {
                    "inputs": [
                        {"name": name, "datatype": "FP64", "shape": [1], "data": [value]}
                        for name, value in zip(fixtures.FEATURES, row, strict=True)
                    ]
                }
                answer = http.post(f"/v2/models/{DEPLOYMENT}/infer", json=body)
                assert answer.status_code == 200, answer.text
        logged = Registry.open(Settings(home=keyed.home))
        try:
            from shipyard.monitoring.store import MonitoringStore, PredictionFilter

            store = MonitoringStore(logged.engine)
            eventually(
                lambda: (
                    len(store.predictions(PredictionFilter(deployment=DEPLOYMENT), limit=100)) == 40
                    or None
                ),
                "the 40 requests in the prediction log",
            )
        finally:
            logged.close()
        yield Site(server.url, keyed.home, keyed.tokens, folder, _holdout(folder))


def _register(site: Site, name: str, rule: str, *aliases: str) -> int:
    example = site.folder / "example.csv"
    args = [
        "models",
        "register",
        str(_model(site.folder / name, rule)),
        "--name",
        "churn",
        "--signature-from",
        str(example),
        "--json",
    ]
    for alias in aliases:
        args += ["--alias", alias]
    registered = site.cli("deployer", *args)
    assert registered.returncode == 0, registered.stderr
    return int(json.loads(registered.stdout)["version"])


def _policy(site: Site, text: str, name: str = "policy.yaml") -> Path:
    path = site.folder / name
    path.write_text(text)
    return path


REPLAY_POLICY = f"""
name: churn-replay
model: churn
alias: production
metrics: {{accuracy: {{min: 0.3}}}}
replay: {{deployment: {DEPLOYMENT}, window: 1h, min_agreement: 0.95, max_error_rate: 0.0}}
"""


def test_a_candidate_that_disagrees_on_replayed_traffic_fails_in_ci(site: Site) -> None:
    version = _register(site, "other", "other")
    policy = _policy(site, REPLAY_POLICY)

    run = site.cli(
        "deployer",
        "promote",
        f"churn:{version}",
        "--policy",
        str(policy),
        "--data",
        str(site.holdout),
        "--label",
        "label",
    )

    assert run.returncode == 1, run.stdout + run.stderr  # CI fails with it
    lines = {
        line.split("│")[1].strip(): line for line in run.stdout.splitlines() if line.count("│") >= 4
    }
    assert "FAIL" in lines["replay.agreement"]
    assert "pass" in lines["replay.error_rate"] and "pass" in lines["metrics.accuracy"]
    shown = json.loads(site.cli("deployer", "promotions", "list", "churn", "--json").stdout)
    newest = shown[0]
    assert newest["state"] == "failed" and newest["version"] == version
    replayed = json.loads(
        site.cli("viewer", "evaluations", "show", str(newest["replay_id"]), "--json").stdout
    )
    assert replayed["kind"] == "replay" and replayed["result"]["requests"] == 40
    assert replayed["result"]["agreement"] < 0.95
    registry = site.registry()
    try:
        assert registry.models.get_version(ModelRef("churn", alias="production")).version == 1
    finally:
        registry.close()


APPROVAL_POLICY = """
name: churn-approval
model: churn
alias: production
metrics: {accuracy: {min: 0.8}}
approval: {required: true, roles: [admin]}
"""


def test_approval_waits_for_an_allowed_role(site: Site) -> None:
    version = _register(site, "same-again", "same")
    policy = _policy(site, APPROVAL_POLICY, "approval.yaml")

    run = site.cli(
        "deployer",
        "promote",
        f"churn:{version}",
        "--policy",
        str(policy),
        "--data",
        str(site.holdout),
        "--label",
        "label",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    waiting = json.loads(run.stdout)
    assert waiting["state"] == "awaiting_approval"
    assert waiting["requested_by"].endswith("(deployer)")  # the key, not the local user

    refused = site.cli("deployer", "approve", f"churn:{version}")
    assert refused.returncode == 1
    assert "lets only admin" in refused.stderr
    approved = site.cli("admin", "approve", f"churn:{version}", "--reason", "ok", "--json")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["state"] == "promoted"
    with httpx.Client(
        base_url=site.url, timeout=10, headers={"authorization": f"Bearer {site.tokens['viewer']}"}
    ) as http:
        assert http.get("/api/models/churn/versions/production").json()["version"] == version
        audit_refused = http.get("/api/audit")
        assert audit_refused.status_code == 403  # a viewer reads promotions, not the trail
        shown = http.get(f"/api/promotions/{waiting['id']}").json()
        assert shown["decided_by"].endswith("(admin)")


def test_registering_with_the_on_register_alias_evaluates_on_the_server(site: Site) -> None:
    policy = f"""
name: churn-candidates
model: churn
alias: production
data: {{path: {site.holdout}, label: label}}
metrics: {{accuracy: {{min: 0.99}}}}
on_register: {{alias: candidate}}
"""
    applied = site.cli("deployer", "policies", "apply", str(_policy(site, policy, "cand.yaml")))
    assert applied.returncode == 0, applied.stderr

    version = _register(site, "candidate", "same", "candidate")

    def finished() -> dict[str, object] | None:
        shown = site.cli("viewer", "evaluations", "list", f"churn:{version}", "--json")
        found = json.loads(shown.stdout)
        return found[0] if found and found[0]["state"] != "running" else None

    evaluation = eventually(finished, "the background evaluation", timeout=120)
    assert evaluation["state"] == "succeeded", evaluation["error"]
    result = evaluation["result"]
    assert result["policy"] == "churn-candidates"
    assert [g["gate"] for g in result["gates"]] == ["metrics.accuracy", "signature"]
    shown = site.cli("viewer", "models", "show", f"churn:{version}")
    assert "evaluations" in shown.stdout and str(evaluation["id"]) in shown.stdout


def test_bad_requests_get_a_clear_4xx(site: Site) -> None:
    headers = {"authorization": f"Bearer {site.tokens['deployer']}"}
    with httpx.Client(base_url=site.url, headers=headers, timeout=10) as http:
        no_data = http.post("/api/models/churn/versions/1/evaluations", data={"label": "y"})
        assert no_data.status_code == 400
        assert "data" in no_data.json()["error"]
        bad_policy = http.post("/api/policies", data={"policy": "name: x\nmetrics: {auc: {}}"})
        assert bad_policy.status_code == 400
        assert "metrics" in bad_policy.json()["error"]
        ghost = http.post("/api/deployments/ghost/replay", json={"to": "churn:1"})
        assert ghost.status_code == 404
        assert http.get("/api/promotions/999").status_code == 404
