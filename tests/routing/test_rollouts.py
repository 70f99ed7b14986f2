"""Progressive rollouts driven by real requests: promotion, automatic rollbacks, resume."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions, RolloutGates
from shipyard.registry.service import Registry
from shipyard.routing.deployments import ArmWindow
from shipyard.routing.rollouts import evaluate
from tests.server import RunningServer, running_server

MODEL = """
import time

import numpy as np

DELAY, FAIL_ON_NEGATIVE, INVERT = {delay}, {fail}, {invert}


class Model:
    def load(self):
        pass

    def predict(self, inputs):
        x = inputs["x"]
        time.sleep(DELAY)
        if FAIL_ON_NEGATIVE and (x < 0).any():
            raise ValueError("negative input")
        return {{"y": ((x.sum(axis=1) > 0) ^ INVERT).astype(np.int64)}}
"""
VERSIONS = {  # version: (seconds per batch, fails on negative input, inverts its answers)
    1: (0.002, False, False),  # stable
    2: (0.0021, False, False),  # healthy candidate
    3: (0.002, True, False),  # errors on part of the input
    4: (0.02, False, False),  # ten times slower
    5: (0.002, False, True),  # as fast and as often 1 as stable, but wrong: disagrees
}
MANIFEST = "name: svc-api\nmodel: svc\nroutes: [{version: 1}]\n"
ROLLOUT = {"steps": [50, 100], "bake_seconds": 0.5, "min_requests": 20}


def test_gates_name_the_numbers() -> None:
    stable, failing = ArmWindow(), ArmWindow()
    for _ in range(50):
        stable.record(0.002, {"y": np.array([1])})
        failing.record(0.010, {"y": np.array([0])})
    failing.record(0.0, None)
    failing.errors += 10
    failing.requests += 10
    reason = evaluate(RolloutGates(), failing, stable)
    assert reason is not None
    assert "error rate 0.180 vs stable 0.000" in reason
    assert "p95 latency 5.00x" in reason
    assert "prediction drift KS 1.00" in reason
    assert evaluate(RolloutGates(), stable, stable) is None
    stable.agreement.sent, stable.agreement.failed, stable.agreement.agreed = 42, 2, 30
    assert evaluate(RolloutGates(), stable, stable) is None  # agreement gate off by default
    reason = evaluate(RolloutGates(min_agreement=0.9), stable, stable)
    assert reason == "agreement with stable 0.75 over 40 compared answers (needed 0.9)"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    registry = Registry.open(Settings(home=home))
    try:
        for version, (delay, fail, invert) in VERSIONS.items():
            path = tmp_path / f"v{version}" / "model.py"
            path.parent.mkdir()
            path.write_text(MODEL.format(delay=delay, fail=fail, invert=invert))
            assert registry.register(path, RegistrationOptions(name="svc")).version == version
        registry.deployments.apply(parse_manifest(MANIFEST))
    finally:
        registry.close()
    return home


def _drive(server: RunningServer, http: httpx.Client, deadline_s: float = 90) -> dict:
    """Send real traffic (half the rows negative) until the rollout ends; its final record."""
    rng = np.random.default_rng(0)
    deadline = time.monotonic() + deadline_s
    sent = 0
    while True:
        x = rng.normal(size=(1, 3))
        body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64",
                            "data": x.tolist()}]}  # fmt: skip
        http.post(f"{server.url}/v2/models/svc-api/infer", json=body)
        sent += 1
        if sent % 10 == 0:
            status = http.get(f"{server.url}/api/deployments/svc-api/rollout").json()
            if status["state"] not in ("running", "paused"):
                return status  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, "the rollout never finished"


def _live_routes(http: httpx.Client, server: RunningServer) -> list[dict]:
    return http.get(f"{server.url}/api/deployments/svc-api").json()["manifest"]["routes"]  # type: ignore[no-any-return]


def test_healthy_candidate_is_promoted_and_bad_ones_roll_back(home: Path) -> None:
    env = {"SHIPYARD_HOME": str(home), "SHIPYARD_ROLLOUT_TICK": "0.1"}
    with running_server(env) as server, httpx.Client(timeout=30) as http:
        start = f"{server.url}/api/deployments/svc-api/rollout"
        assert http.post(start, json={"to": 2, **ROLLOUT}).status_code == 201
        done = _drive(server, http)
        assert done["state"] == "promoted", done
        assert _live_routes(http, server) == [{"version": 2, "weight": 100.0}]

        for bad, why in ((3, "error rate"), (4, "p95 latency")):
            assert http.post(start, json={"to": bad, **ROLLOUT}).status_code == 201
            done = _drive(server, http)
            assert done["state"] == "rolled_back", done
            assert why in done["reason"]
            assert _live_routes(http, server) == [{"version": 2, "weight": 100.0}]
        disagreeing = {**ROLLOUT, "min_requests": 150, "gates": {"min_agreement": 0.9}}
        assert http.post(start, json={"to": 5, **disagreeing}).status_code == 201
        done = _drive(server, http)
        assert done["state"] == "rolled_back", done
        assert "agreement with stable 0.00" in done["reason"]
        assert "drift" not in done["reason"]  # same label mix: only agreement tells them apart
        audit = http.get(f"{server.url}/api/audit", params={"limit": 1000}).json()
        rollbacks = [e for e in audit if e["action"] == "rollout.rollback"]
        assert len(rollbacks) == 3
        assert "error rate" in rollbacks[0]["after"]["reason"]


def test_a_restarted_server_resumes_the_rollout_at_its_step(home: Path) -> None:
    env = {"SHIPYARD_HOME": str(home), "SHIPYARD_ROLLOUT_TICK": "0.1"}
    slow_bake = {**ROLLOUT, "bake_seconds": 3600}
    with running_server(env) as server, httpx.Client(timeout=30) as http:
        http.post(f"{server.url}/api/deployments/svc-api/rollout", json={"to": 2, **slow_bake})
        deadline = time.monotonic() + 60
        while (
            http.get(f"{server.url}/api/deployments/svc-api/rollout").json()["step_started_at"]
            is None
        ):
            assert time.monotonic() < deadline, "the first step never started"
            http.post(f"{server.url}/v2/models/svc-api/infer", json=_one())
        before = http.get(f"{server.url}/api/deployments/svc-api/rollout").json()
    with running_server(env) as server, httpx.Client(timeout=30) as http:
        after = http.get(f"{server.url}/api/deployments/svc-api/rollout").json()
        assert (after["state"], after["step_index"]) == ("running", before["step_index"])
        assert after["step_started_at"] == before["step_started_at"]
        answered = Counter(
            http.post(f"{server.url}/v2/models/svc-api/infer", json=_one()).headers[
                "x-shipyard-model-version"
            ]
            for _ in range(60)
        )
        assert set(answered) == {"svc:1", "svc:2"}  # still split 50/50 at step 1
        aborted = http.post(f"{server.url}/api/deployments/svc-api/rollout/abort")
        assert aborted.json()["state"] == "aborted"
        assert _live_routes(http, server) == [{"version": 1, "weight": 100.0}]


def _one() -> dict:
    return {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64",
                        "data": [[1.0, 2.0, 3.0]]}]}  # fmt: skip
