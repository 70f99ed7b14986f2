"""Cost per 1,000 predictions, from the workers' CPU time and the rows they predicted."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.config import Settings
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests import fixtures
from tests.server import running_server

PRICE = 0.5


def test_cost_per_1k_predictions_follows_cpu_time_and_rows(tmp_path: Path) -> None:
    home = tmp_path / "home"
    registry = Registry.open(Settings(home=home))
    model = fixtures.write_sklearn_model(tmp_path)
    registry.register(
        model, RegistrationOptions(name="model"), fixtures.write_example_csv(tmp_path)
    )
    registry.close()
    env = {"SHIPYARD_HOME": str(home), "SHIPYARD_PRICE_PER_REPLICA_HOUR": str(PRICE)}
    features, _ = fixtures.training_data(rows=4)
    body = {"inputs": [{"name": n, "datatype": "FP64", "shape": [4], "data": features[:, j]
                        .tolist()} for j, n in enumerate(fixtures.FEATURES)]}  # fmt: skip
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for _ in range(50):
            assert http.post("/v2/models/model/infer", json=body).status_code == 200
        (usage,) = http.get("/api/monitoring/cost").json()
        assert (usage["model"], usage["version"], usage["rows"]) == ("model", "1", 200)
        assert usage["replicas"] == 1 and usage["cpu_seconds"] > 0
        expected = PRICE * usage["cpu_seconds"] / 3600 / 200 * 1000
        assert usage["cost_per_1k"] == pytest.approx(expected)
        # A worker's lifetime is at least the CPU time it used (it runs one thread).
        assert usage["provisioned_cost_per_1k"] >= usage["cost_per_1k"]

        exposition = http.get("/metrics").text
        values = {
            (s.name, s.labels.get("model")): s.value
            for family in text_string_to_metric_families(exposition)
            for s in family.samples
        }
        cpu = values[("shipyard_worker_cpu_seconds_total", "model")]
        assert cpu >= usage["cpu_seconds"]  # read later, never less
        per_1k = values[("shipyard_cost_per_1k_predictions", "model")]
        assert per_1k == pytest.approx(PRICE * cpu / 3600 / 200 * 1000)


def test_cost_needs_a_price(tmp_path: Path) -> None:
    with (
        running_server({"SHIPYARD_HOME": str(tmp_path / "home")}) as server,
        httpx.Client(base_url=server.url, timeout=30) as http,
    ):
        answer = http.get("/api/monitoring/cost")
        assert answer.status_code == 409
        assert "SHIPYARD_PRICE_PER_REPLICA_HOUR" in answer.json()["error"]
