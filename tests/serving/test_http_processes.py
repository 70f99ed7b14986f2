"""`shipyard server --http-processes 2`: two HTTP processes on one port share one worker,
answer exactly what the model says, count every request once in /metrics, and survive
`kill -9` of a front (only its in-flight requests fail; it is started again)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import joblib
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.config import Settings
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests import fixtures
from tests.polling import eventually
from tests.server import RunningServer, running_server

ROWS, _ = fixtures.training_data(rows=40, seed=7)
_FRONT_STARTED = re.compile(r"front process 1 started \(pid (\d+)\)")


@dataclass
class TwoFronts:
    server: RunningServer
    model_file: Path


@pytest.fixture(scope="module")
def two_fronts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoFronts]:
    home = tmp_path_factory.mktemp("fronts")
    model_file = fixtures.write_sklearn_model(home / "model", seed=7)
    registry = Registry.open(Settings(home=home / "home"))
    try:
        registry.register(model_file, RegistrationOptions(name="iris"))
    finally:
        registry.close()
    env = {"SHIPYARD_HOME": str(home / "home"), "SHIPYARD_LOG_FORMAT": "json"}
    with running_server(env, "--http-processes", "2") as server:
        yield TwoFronts(server, model_file)


def _body(row: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row.tolist()}
        ],
        "outputs": [{"name": "predict_proba"}],
    }


def _predict_once(url: str, row: np.ndarray) -> list[float]:
    """One request on a connection of its own, so that either process may accept it."""
    with httpx.Client(base_url=url, timeout=30) as http:
        response = http.post("/v2/models/iris/infer", json=_body(row))
    assert response.status_code == 200, response.text
    return list(response.json()["outputs"][0]["data"])


def _access_pids(server: RunningServer) -> set[int]:
    pids = set()
    for line in list(server.log):
        if '"shipyard.access"' in line:
            pids.add(json.loads(line)["pid"])
    return pids


def _front_pids(server: RunningServer) -> list[int]:
    return [int(m.group(1)) for line in list(server.log) if (m := _FRONT_STARTED.search(line))]


def _metric(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_two_processes_answer_exactly_over_one_worker(two_fronts: TwoFronts) -> None:
    url = two_fronts.server.url
    expected = joblib.load(two_fronts.model_file).predict_proba(ROWS)  # the model's own words
    sent = 0

    def both_served() -> bool | None:
        nonlocal sent
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda row: _predict_once(url, row), ROWS))
        sent += len(ROWS)
        np.testing.assert_allclose(answers, expected, rtol=1e-9)
        return True if len(_access_pids(two_fronts.server)) >= 2 else None

    eventually(both_served, "requests answered by both HTTP processes", timeout=60)
    # One worker behind both (SHIPYARD_WORKERS_PER_MODEL=1 in tests/server.py).
    assert _metric(url, "shipyard_workers", model="iris", version="1", state="ready") == 1
    # Each request counted once, whichever process answered it (fronts report each second).
    eventually(
        lambda: (
            True
            if _metric(url, "shipyard_requests_total", model="iris", status="200") == sent
            else None
        ),
        f"/metrics to count all {sent} requests",
    )


def test_control_plane_through_either_process(two_fronts: TwoFronts) -> None:
    """Whichever process accepts it, a control-plane request is the primary's answer."""
    for _ in range(10):
        with httpx.Client(base_url=two_fronts.server.url, timeout=30) as http:
            response = http.get("/api/models/iris")
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "iris"
        with httpx.Client(base_url=two_fronts.server.url, timeout=30) as http:
            missing = http.get("/api/models/nope")
        assert missing.status_code == 404
        assert "nope" in missing.json()["error"]


def test_killed_front_fails_only_its_requests_and_comes_back(two_fronts: TwoFronts) -> None:
    server = two_fronts.server
    url = server.url
    expected = joblib.load(two_fronts.model_file).predict_proba(ROWS)
    (first,) = _front_pids(server)[-1:]
    failures: list[str] = []

    def one(index: int) -> None:
        try:
            answer = _predict_once(url, ROWS[index % len(ROWS)])
        except (httpx.TransportError, AssertionError) as exc:
            failures.append(type(exc).__name__)
            return
        np.testing.assert_allclose(answer, expected[index % len(ROWS)], rtol=1e-9)

    def restarted() -> int | None:
        pids = _front_pids(server)
        return pids[-1] if pids[-1] != first else None

    # Killed under load: the primary keeps serving while the front is down and back.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(one, i) for i in range(3 * len(ROWS))]
        concurrent.futures.wait(calls[:10])
        os.kill(first, signal.SIGKILL)
        for call in calls:
            call.result()
    second = eventually(restarted, "the killed front process to be started again")
    assert second != first
    # Only requests the dead process had accepted can fail: at most one per client
    # thread, each a dropped connection, never an HTTP error from the survivors.
    assert len(failures) <= 4, failures
    assert all(kind != "AssertionError" for kind in failures), failures

    def new_front_serves() -> bool | None:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(one, range(len(ROWS))))
        return True if second in _access_pids(server) else None

    eventually(new_front_serves, "the new front process to answer requests", timeout=60)
    assert len(failures) <= 4, failures
