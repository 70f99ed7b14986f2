"""Ground truth joined to the prediction log, and drift checks from log to report and alert."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.monitoring.drift_monitor import DriftScheduler
from shipyard.monitoring.prediction_log import PredictionLog
from shipyard.monitoring.service import MonitoringService
from shipyard.monitoring.store import FeedbackItem
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from shipyard.serving.types import RequestContext
from tests import fixtures
from tests.server import running_server, shipyard_command

MANIFEST = """
name: fraud-api
model: fraud
routes: [{version: 1}]
monitoring:
  sample: 1.0
  drift: {window: 1h, min_rows: 50%s}
"""


def _register(registry: Registry, folder: Path, example_rows: int = 400) -> Path:
    model = fixtures.write_sklearn_model(folder)
    example = fixtures.write_example_csv(folder, rows=example_rows)
    registry.register(model, RegistrationOptions(name="fraud"), example)
    return model


def _log(
    registry: Registry,
    deployment: str,
    requests: list[tuple[str, np.ndarray, np.ndarray]],
    version: str = "1",
) -> None:
    """Write (request id, features, predictions) through the real prediction log writer."""
    log = PredictionLog(registry.engine, lambda _: 1.0)
    for request_id, features, predicted in requests:
        context = RequestContext(request_id, time.perf_counter(), time.time())
        context.deployment, context.model, context.version = deployment, "fraud", version
        context.rows = len(features)
        inputs = {name: features[:, j] for j, name in enumerate(fixtures.FEATURES)}
        log.offer(context, inputs, {"predict": predicted})
    log.flush()
    assert log.stats.written == len(requests)


def test_feedback_joins_by_request_id_and_live_accuracy_matches(
    registry: Registry, tmp_path: Path
) -> None:
    model = joblib.load(_register(registry, tmp_path))
    registry.deployments.apply(parse_manifest(MANIFEST % ""))
    features, truth = fixtures.training_data(rows=90, seed=7)
    predicted = model.predict(features)
    # 30 requests of 3 rows each; a label list per request, one label per row.
    requests = [(f"req-{i}", features[3 * i : 3 * i + 3], predicted[3 * i : 3 * i + 3])
                for i in range(30)]  # fmt: skip
    _log(registry, "fraud-api", requests)
    service = MonitoringService(registry)
    labelled = [FeedbackItem(request_id=f"req-{i}", label=truth[3 * i : 3 * i + 3].tolist())
                for i in range(20)]  # fmt: skip
    stray = FeedbackItem(request_id="never-logged", label=[1, 0, 1])
    result = service.feedback([*labelled, stray], "tester")
    assert (result.accepted, result.matched) == (21, 20)
    # A correction: the newest label for an id wins.
    flipped = (1 - truth[0:3]).tolist()
    service.feedback([FeedbackItem(request_id="req-0", label=flipped)])

    answer = service.quality("fraud-api", window_seconds=3600)
    expected_truth = np.concatenate([flipped, truth[3:60]])
    hand_accuracy = float(np.mean(predicted[:60] == expected_truth))
    metrics = answer["by_version"]["1"]
    assert answer["labelled_rows"] == 60 and metrics["count"] == 60
    assert metrics["accuracy"] == pytest.approx(hand_accuracy)
    tp = np.sum((predicted[:60] == 1) & (expected_truth == 1))
    f1_pos = 2 * tp / (np.sum(predicted[:60] == 1) + np.sum(expected_truth == 1))
    tn = np.sum((predicted[:60] == 0) & (expected_truth == 0))
    f1_neg = 2 * tn / (np.sum(predicted[:60] == 0) + np.sum(expected_truth == 0))
    assert metrics["f1"] == pytest.approx((f1_pos + f1_neg) / 2)
    over_time = service.quality("fraud-api", 3600, bucket_seconds=3600)["over_time"]
    assert sum(bucket["count"] for bucket in over_time) == 60


def test_scheduled_checks_run_when_due_and_keep_history(registry: Registry, tmp_path: Path) -> None:
    _register(registry, tmp_path)
    registry.deployments.apply(parse_manifest(MANIFEST % ", schedule: 10m"))
    features, _ = fixtures.training_data(rows=200, seed=3)
    features[:, 0] += 3.0  # f0 moves far from the reference sample
    _log(registry, "fraud-api", [(f"r{i}", features[i : i + 1], np.array([1])) for i in range(200)])
    service = MonitoringService(registry)
    scheduler = DriftScheduler(service.drift)
    now = time.time()
    first = scheduler.tick(now)
    assert [(r.deployment, r.version, r.trigger) for r in first] == [("fraud-api", 1, "schedule")]
    drifted = {f["name"] for f in first[0].result["features"] if f["drifted"]}
    assert "f0" in drifted and first[0].current_rows == 200
    assert scheduler.tick(now + 60) == []  # not due again for 10 minutes
    assert len(scheduler.tick(now + 601)) == 1
    history = service.drift_history("fraud-api")
    assert [r.trigger for r in history] == ["schedule", "schedule"]
    page = service.drift_html(history[0].id)
    assert "<svg" in page and "f0" in page


class _Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    arrived: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()
        type(self).arrived.set()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[_Webhook]]]:
    handler = type("Hook", (_Webhook,), {"received": [], "arrived": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", handler
    server.shutdown()
    server.server_close()


def test_drift_report_from_the_cli_alerts_and_exports_metrics(
    tmp_path: Path, webhook: tuple[str, type[_Webhook]]
) -> None:
    url, hook = webhook
    home = tmp_path / "home"
    registry = Registry.open(fixtures_settings(home))
    _register(registry, tmp_path)
    registry.deployments.apply(parse_manifest(MANIFEST % f", share: 0.25, webhook: '{url}'"))
    registry.close()
    features, _ = fixtures.training_data(rows=120, seed=5)
    features[:, 1] += 4.0
    env = {"SHIPYARD_HOME": str(home), "SHIPYARD_PREDICTION_LOG_FLUSH_SECONDS": "0.1"}
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for start in range(0, 120, 2):
            rows = features[start : start + 2]
            body = {"inputs": [{"name": n, "datatype": "FP64", "shape": [2], "data": rows[:, j]
                                .tolist()} for j, n in enumerate(fixtures.FEATURES)]}  # fmt: skip
            assert http.post("/v2/models/fraud-api/infer", json=body).status_code == 200
        deadline = time.monotonic() + 30
        while len(http.get("/api/predictions", params={"limit": 100}).json()) < 60:
            assert time.monotonic() < deadline, "requests never reached the prediction log"

        report_path = tmp_path / "report.html"
        done = subprocess.run(
            [*shipyard_command(), "monitor", "drift", "fraud-api", "--window", "1h",
             "--html", str(report_path), "--json"],
            env={**os.environ, "SHIPYARD_URL": server.url},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 3, done.stderr  # documented: 3 when a version drifted
        (report,) = json.loads(done.stdout)["reports"]
        assert report["drifted"] and report["current_rows"] == 120
        assert {f["name"] for f in report["result"]["features"] if f["drifted"]} == {"f1"}
        assert report["result"]["output"] is not None  # predictions checked too
        page = report_path.read_text()
        assert page.count("<svg") == len(fixtures.FEATURES) + 1 and "f1" in page

        assert hook.arrived.wait(10), "no drift alert reached the webhook"
        (alert,) = hook.received
        assert alert["event"] == "drift_detected" and alert["drifted_features"] == ["f1"]
        assert (alert["deployment"], alert["version"]) == ("fraud-api", 1)

        exposition = http.get("/metrics").text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(exposition)
            for s in family.samples
        }
        labels = (("deployment", "fraud-api"), ("version", "1"))
        assert samples[("shipyard_drift_detected", labels)] == 1.0
        assert samples[("shipyard_drift_share", labels)] == 0.25
        assert samples[("shipyard_drift_alerts_total", ())] == 1.0


def fixtures_settings(home: Path) -> Any:
    from shipyard.config import Settings

    return Settings(home=home)


def test_input_drift_is_a_rollout_gate(registry: Registry, tmp_path: Path) -> None:
    from shipyard.routing.deployments import DeploymentRouter
    from shipyard.routing.rollouts import RolloutController, RolloutService
    from shipyard.serving.manager import ModelManager

    _register(registry, tmp_path)
    candidate = fixtures.write_sklearn_model(tmp_path / "v2", seed=1)
    example = fixtures.write_example_csv(tmp_path / "v2", rows=400)
    registry.register(candidate, RegistrationOptions(name="fraud"), example)
    registry.deployments.apply(parse_manifest(MANIFEST % ""))
    rollout = RolloutService(registry).start(
        "fraud-api", to=2, gates={"max_input_drift_share": 0.5}
    )
    controller = RolloutController(
        registry,
        DeploymentRouter(ModelManager(registry), registry),
        drift=MonitoringService(registry).drift,
    )
    steady, _ = fixtures.training_data(rows=150, seed=11)
    one = np.array([1])
    _log(registry, "fraud-api", [(f"s{i}", steady[i : i + 1], one) for i in range(150)], "2")
    assert controller._input_drift(rollout, 3600) is None  # drawn like the reference

    moved = steady + np.array([3.0, 3.0, 3.0, 0.0])
    _log(registry, "fraud-api", [(f"m{i}", moved[i : i + 1], one) for i in range(150)], "2")
    failure = controller._input_drift(rollout, 3600)
    assert failure is not None and "input drift" in failure and "allowed 50%" in failure
    assert [r.trigger for r in registry_drift(registry)] == ["rollout", "rollout"]


def registry_drift(registry: Registry) -> list[Any]:
    return MonitoringService(registry).drift_history("fraud-api")
