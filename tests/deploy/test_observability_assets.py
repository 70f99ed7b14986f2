"""The Grafana dashboard and the Prometheus alert rules in deploy/: valid, and built only
from metrics a live server really exports, with the labels it really puts on them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests import fixtures
from tests.conftest import IN_CI
from tests.polling import eventually
from tests.server import running_server

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "shipyard.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yml")

_METRIC = re.compile(r"\bshipyard_[a-z0-9_]+")
_SELECTOR = re.compile(r"\b(shipyard_[a-z0-9_]+)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
# Grafana's variables, replaced by what they stand for when Prometheus gets the query.
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
                      "$deployment": ".*", "$model": ".*", "$version": ".*"}  # fmt: skip
MANIFEST = """
name: fraud-api
model: fraud
routes: [{version: 1}]
monitoring:
  sample: 1.0
  drift: {window: 1h, min_rows: 5}
"""
REQUESTS = 10


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        message = "promtool not found (Debian/Ubuntu: apt-get install prometheus)"
        if IN_CI:
            pytest.fail(message + ": CI must check the alert rules")
        pytest.skip(message)
    return binary


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those folded inside collapsed rows too."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries() -> list[str]:
    dashboard = _dashboard()
    queries = [
        target["expr"]
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]
    variables = dashboard["templating"]["list"]
    queries += [v["definition"] for v in variables if v["type"] == "query"]
    return queries


def rule_queries() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _grafana_to_promql(query: str) -> str:
    for variable, value in _GRAFANA_VARIABLES.items():
        query = query.replace(variable, value)
    return query


def test_alert_rules_pass_promtool(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_fire_as_the_slo_arithmetic_says(promtool: str) -> None:
    """alerts_test.yml: error burn at 5% failing fires, at 0.01% stays silent, and so on."""
    done = subprocess.run(
        [promtool, "test", "rules", ALERTS_TEST.name],
        cwd=ALERTS_TEST.parent, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_alert_rules_are_labelled_and_documented() -> None:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert {rule["alert"] for rule in rules} >= {
        "ShipyardErrorBudgetBurnFast", "ShipyardErrorBudgetBurnSlow",
        "ShipyardLatencyBudgetBurnFast", "ShipyardLatencyBudgetBurnSlow",
        "ShipyardWorkerCrashLoop", "ShipyardLoadShed", "ShipyardDriftDetected",
    }  # fmt: skip
    runbook = "docs/monitoring.md#alert-runbook"
    assert "### Alert runbook" in (ROOT / "docs" / "monitoring.md").read_text()
    for rule in rules:
        assert rule["for"], rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        assert annotations["runbook_url"] == runbook, rule["alert"]
    error_burns = [r for r in rules if r.get("labels", {}).get("slo") == "availability"]
    assert all("99.9%" in rule["annotations"]["description"] for rule in error_burns)


def test_dashboard_is_valid_grafana_json() -> None:
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    panels = list(_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("deployment", "model", "version"):
        assert variables[name]["definition"].startswith("label_values(")
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    for panel in panels:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    titles = " ".join(panel["title"].lower() for panel in panels)
    for topic in ("requests/s", "errors", "p50", "p99", "batch size", "queue", "workers",
                  "cold starts", "drift", "cost per 1,000", "refused"):  # fmt: skip
        assert topic in titles, topic


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool cannot read a dashboard: each query, its Grafana variables filled in, becomes
    a recording rule that `promtool check rules` parses."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": _grafana_to_promql(query)}
        for i, query in enumerate(q for q in dashboard_queries() if "label_values" not in q)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, str]]]:
    """Sample name -> label sets on a live server's /metrics, after it served through a
    deployment, logged its predictions and ran a drift check (so every family has series)."""
    folder = tmp_path_factory.mktemp("observability")
    home = folder / "home"
    registry = Registry.open(Settings(home=home))
    registry.register(
        fixtures.write_sklearn_model(folder),
        RegistrationOptions(name="fraud"),
        fixtures.write_example_csv(folder, rows=100),
    )
    registry.deployments.apply(parse_manifest(MANIFEST))
    registry.close()
    env = {
        "SHIPYARD_HOME": str(home),
        "SHIPYARD_PRICE_PER_REPLICA_HOUR": "0.5",
        "SHIPYARD_PREDICTION_LOG_FLUSH_SECONDS": "0.1",
    }
    features, _ = fixtures.training_data(rows=2 * REQUESTS)
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for start in range(0, 2 * REQUESTS, 2):
            rows = features[start : start + 2]
            body = {"inputs": [{"name": n, "datatype": "FP64", "shape": [2], "data": rows[:, j]
                                .tolist()} for j, n in enumerate(fixtures.FEATURES)]}  # fmt: skip
            assert http.post("/v2/models/fraud-api/infer", json=body).status_code == 200
        eventually(
            lambda: len(http.get("/api/predictions").json()) >= REQUESTS or None,
            "requests logged in the prediction log",
        )
        checked = http.post("/api/deployments/fraud-api/drift")
        assert checked.status_code == 200, checked.text
        exposition = http.get("/metrics").text
    samples: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample.labels)
    return samples


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_used_is_exported_with_its_labels(
    source: str, exported: dict[str, list[dict[str, str]]]
) -> None:
    queries = dashboard_queries() if source == "dashboard" else rule_queries()
    used = {name for query in queries for name in _METRIC.findall(query)}
    assert used, f"no shipyard_ metric found in the {source}"
    missing = sorted(used - exported.keys())
    assert not missing, f"{source} uses metrics no live server exports: {missing}"
    for query in queries:
        for name, matchers in _SELECTOR.findall(query):
            labels = set(_MATCHER.findall(matchers))
            assert any(labels <= series.keys() for series in exported[name]), (
                f"{source}: no {name} series has the labels {sorted(labels)}: {exported[name][:3]}"
            )
