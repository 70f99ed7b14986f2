"""A real server scales a CPU-bound model's workers with its load and back, without a
failed request, and scales an idle model to zero and back with one load per cold start."""

from __future__ import annotations

import concurrent.futures
import json
import threading
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

BUSY_SECONDS_PER_ROW = 0.02
SCALING = {
    # busy: one worker per request in flight, up after 0.5 s of wanting more, down after 2 s.
    "busy": {
        "scaling": {
            "min_workers": 1,
            "max_workers": 2,
            "target_ongoing_requests": 1,
            "upscale_delay": 0.5,
            "downscale_delay": 2,
        }
    },
    # small: unloads after 1 s without a request.
    "small": {"scaling": {"min_workers": 0, "max_workers": 1, "scale_to_zero_after": 1}},
}
ROWS, _ = fixtures.training_data(rows=3, seed=4)


@dataclass
class Elastic:
    server: RunningServer
    small_model: Path
    """The scikit-learn model file behind `small`, to compute expected answers from."""


@pytest.fixture(scope="module")
def elastic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Elastic]:
    home = tmp_path_factory.mktemp("elastic")
    registry = Registry.open(Settings(home=home / "home"))
    try:
        busy = fixtures.write_busy_model(home / "busy", BUSY_SECONDS_PER_ROW)
        registry.register(busy, RegistrationOptions(name="busy"))
        small = fixtures.write_sklearn_model(home / "small", seed=4)
        registry.register(small, RegistrationOptions(name="small"))
    finally:
        registry.close()
    env = {
        "SHIPYARD_HOME": str(home / "home"),
        "SHIPYARD_MODELS": json.dumps(SCALING),
        "SHIPYARD_SCALING_TICK": "0.1",
        "SHIPYARD_SPARE_WORKERS": "1",  # scale-ups and the cold start take spares
        "SHIPYARD_LOG_FORMAT": "json",
    }
    with running_server(env) as running:
        yield Elastic(running, small)


def metric(http: httpx.Client, name: str, **labels: str) -> float | None:
    """One sample of /metrics, or None when the series is absent."""
    text = http.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def ready_workers(http: httpx.Client, model: str) -> float | None:
    return metric(http, "shipyard_workers", model=model, version="1", state="ready")


class Load:
    """Client threads sending one-row requests back to back until stopped; every answer
    is checked and every status kept."""

    def __init__(self, url: str, model: str, clients: int) -> None:
        self.url, self.model = url, model
        self.statuses: list[int] = []
        self.wrong = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]

    def _run(self) -> None:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [21.0]}]}
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self._stop.is_set():
                answer = http.post(f"/v2/models/{self.model}/infer", json=body)
                self.statuses.append(answer.status_code)
                if answer.status_code == 200 and answer.json()["outputs"][0]["data"] != [42.0]:
                    self.wrong += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_a_load_ramp_scales_workers_up_and_back_down_without_a_failed_request(
    elastic: Elastic,
) -> None:
    server = elastic.server
    with httpx.Client(base_url=server.url, timeout=60) as http:
        first = http.post(
            "/v2/models/busy/infer",
            json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]},
        )
        assert first.status_code == 200
        assert ready_workers(http, "busy") == 1  # min_workers
        # Four clients keep about four requests ongoing: 4 / target 1 wants the max, 2.
        with Load(server.url, "busy", clients=4) as heavy:
            eventually(lambda: ready_workers(http, "busy") == 2 or None, "a second worker", 60)
        # One client keeps at most one ongoing: wants 1, after the 2 s downscale delay.
        with Load(server.url, "busy", clients=1) as light:
            eventually(lambda: ready_workers(http, "busy") == 1 or None, "the scale-down", 60)
            served_before = len(light.statuses)
            eventually(
                lambda: (len(light.statuses) > served_before) or None,
                "requests after scale-down",
                60,
            )
        up = metric(
            http,
            "shipyard_scaling_decisions_total",
            model="busy",
            version="1",
            direction="up",
            reason="load",
        )
        down = metric(
            http,
            "shipyard_scaling_decisions_total",
            model="busy",
            version="1",
            direction="down",
            reason="load",
        )
    statuses = heavy.statuses + light.statuses
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert heavy.wrong == light.wrong == 0
    assert up == 1 and down == 1


def test_an_idle_model_scales_to_zero_and_its_cold_start_loads_once(elastic: Elastic) -> None:
    server = elastic.server
    model = joblib.load(elastic.small_model)
    expected = model.predict(ROWS).tolist()  # the model's own answer, outside Shipyard
    body = {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64",
                        "data": ROWS.ravel().tolist()}]}  # fmt: skip

    def cold_starts(http: httpx.Client) -> float:
        count = metric(http, "shipyard_cold_start_seconds_count", model="small", version="1")
        return count or 0.0

    def state(http: httpx.Client) -> str | None:
        listed = http.post("/v2/repository/index").json()
        return next((e["state"] for e in listed if e["name"] == "small"), None)

    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert http.post("/v2/models/small/infer", json=body).status_code == 200
        loads_before = cold_starts(http)
        eventually(lambda: state(http) == "IDLE" or None, "scale to zero after 1 s idle", 60)
        assert metric(http, "shipyard_workers", model="small", version="1", state="ready") == 0

        def infer(_: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=60) as own:
                return own.post("/v2/models/small/infer", json=body)

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(infer, range(4)))
        assert [a.status_code for a in answers] == [200] * 4
        for answer in answers:
            (output,) = [o for o in answer.json()["outputs"] if o["name"] == "predict"]
            assert np.asarray(output["data"]).tolist() == expected
        assert cold_starts(http) == loads_before + 1  # four waiting requests, one load

    def small_lines() -> list[dict[str, object]] | None:
        entries = [json.loads(line) for line in server.log if line.startswith("{")]
        lines = [
            e for e in entries if e["logger"] == "shipyard.access" and e.get("model") == "small"
        ]
        return lines if len(lines) == 5 else None

    waited = eventually(small_lines, "the five access lines (written in batches)")
    # The access log says which requests waited for a load: the first, and of the four
    # those that arrived before the load was done (with a spare it takes tens of ms).
    cold = [e.get("cold_start_ms", 0) > 0 for e in waited]
    assert len(cold) == 5 and cold[0] and any(cold[1:])
