"""`shipyard server` serves every registered model; aliases switch without a restart."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.client import Client, LocalClient
from shipyard.config import Settings
from shipyard.registry.records import RegistrationOptions
from tests import fixtures
from tests.server import RunningServer, running_server

ROWS, _ = fixtures.training_data(rows=3, seed=21)
BODY = {"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": ROWS.tolist()}]}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    home = tmp_path / "home"
    with LocalClient.open(Settings(home=home)) as local:
        for seed in (0, 1):
            model = fixtures.write_sklearn_model(tmp_path / f"v{seed}", seed=seed)
            local.register(model, RegistrationOptions(name="fraud"))
        local.set_alias("fraud", "production", 1)
    with running_server({"SHIPYARD_HOME": str(home)}) as running:
        yield running


def served_version(server: RunningServer, path: str) -> str:
    response = httpx.post(f"{server.url}{path}", json=BODY, timeout=60)
    assert response.status_code == 200, response.text
    assert response.headers["x-shipyard-model-version"].startswith("fraud:")
    version: str = response.json()["model_version"]
    return version


def test_every_version_is_addressable(server: RunningServer) -> None:
    assert served_version(server, "/v2/models/fraud/infer") == "1"  # production
    assert served_version(server, "/v2/models/fraud/versions/2/infer") == "2"
    assert served_version(server, "/v2/models/fraud/versions/production/infer") == "1"
    assert served_version(server, "/v2/models/fraud/versions/latest/infer") == "2"
    index = httpx.post(f"{server.url}/v2/repository/index").json()
    assert sorted((m["version"], m["state"]) for m in index) == [("1", "READY"), ("2", "READY")]


def test_moving_the_alias_switches_what_the_name_serves(server: RunningServer) -> None:
    assert served_version(server, "/v2/models/fraud/infer") == "1"
    with Client(server.url) as client:
        client.set_alias("fraud", "production", 2)
    deadline = time.monotonic() + 10
    while served_version(server, "/v2/models/fraud/infer") != "2":
        assert time.monotonic() < deadline, "alias move never took effect"


def test_unload_and_load_through_the_repository_extension(server: RunningServer) -> None:
    assert served_version(server, "/v2/models/fraud/infer") == "1"
    unloaded = httpx.post(f"{server.url}/v2/repository/models/fraud/unload", timeout=30)
    assert unloaded.status_code == 200
    ready = httpx.get(f"{server.url}/v2/models/fraud/ready")
    assert ready.status_code == 503
    loaded = httpx.post(f"{server.url}/v2/repository/models/fraud/load", timeout=60)
    assert loaded.json()["state"] == "READY"
    assert httpx.get(f"{server.url}/v2/models/fraud/ready").status_code == 200


def test_invocations_without_a_default_model_says_what_to_do(server: RunningServer) -> None:
    response = httpx.post(f"{server.url}/invocations", json={"instances": [[1, 2, 3, 4]]})
    assert response.status_code == 404
    assert "shipyard serve" in response.json()["error"]


def test_predict_command_scores_a_file(server: RunningServer, tmp_path: Path) -> None:
    import json
    import subprocess

    import joblib
    import numpy as np

    from tests.server import shipyard_command

    example = fixtures.write_example_csv(tmp_path, rows=6)
    result = subprocess.run(
        [*shipyard_command(), "predict", "fraud:2", "--input", str(example),
         "--url", server.url, "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["model_version"] == "2"
    model = joblib.load(tmp_path / "v1" / "model.joblib")
    rows, _ = fixtures.training_data(rows=6)
    np.testing.assert_array_equal(answer["outputs"]["predict"], model.predict(rows))

    table = subprocess.run(
        [*shipyard_command(), "predict", "fraud", "--input", str(example), "--url", server.url],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "version 1" in table.stdout and "predict" in table.stdout
