"""Scaling a version through a real server: the API, its metrics, who may, and the CLI.

One server for the module, with API keys on: model `doubler` (versions 1 and 2) and a
deployment routing to version 1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from shipyard.security.keys import KeyStore
from tests import fixtures
from tests.cli.test_cli import run_cli
from tests.polling import eventually
from tests.security.conftest import make_keyed_home
from tests.server import RunningServer, running_server

T = TypeVar("T")
DEPLOYMENT = "name: doubler-api\nmodel: doubler\nroutes: [{version: 1}]\n"
SCALE = "/api/models/doubler/versions/1/scaling"


@dataclass
class Served:
    server: RunningServer
    tokens: dict[str, str]

    def headers(self, identity: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[identity]}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("scaling")
    keyed = make_keyed_home(folder / "home")
    registry = Registry.open(Settings(home=keyed.home))
    try:
        model = fixtures.write_python_model(folder / "doubler")
        for _ in range(2):
            registry.register(model, RegistrationOptions(name="doubler"))
        registry.deployments.apply(parse_manifest(DEPLOYMENT))
        keyed.tokens["deployer@other"], _ = KeyStore(registry.sessions).create(
            "deployer", created_by="test", models=["other"]
        )
    finally:
        registry.close()
    env = {**keyed.env, "SHIPYARD_SCALING_TICK": "0.2", "SHIPYARD_SPARE_WORKERS": "0"}
    with running_server(env) as server:
        yield Served(server, keyed.tokens)


def _workers(http: httpx.Client, headers: dict[str, str]) -> dict[str, float]:
    """shipyard_workers of doubler:1 by state, from one scrape."""
    text = http.get("/metrics", headers=headers).text
    return {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "shipyard_workers"
        and (sample.labels["model"], sample.labels["version"]) == ("doubler", "1")
    }


def test_scaling_a_version_moves_its_workers(served: Served) -> None:
    deployer = served.headers("deployer")
    with httpx.Client(base_url=served.server.url, timeout=60) as http:
        scaled = http.post(SCALE, json={"min_workers": 2, "max_workers": 2}, headers=deployer)
        assert scaled.status_code == 200, scaled.text
        document = scaled.json()
        assert set(document) == {
            "model", "version", "state", "min_workers", "max_workers", "workers",
            "memory_bytes", "cold_starts", "recent_decisions",
        }  # fmt: skip
        # doubler-api's version loaded with the server, before it said it was ready.
        assert [document[k] for k in ("model", "version", "state")] == ["doubler", 1, "ready"]
        assert (document["min_workers"], document["max_workers"]) == (2, 2)
        assert set(document["workers"]) == {"desired", "ready", "starting", "draining"}

        viewer = served.headers("viewer")
        wanted = {"desired": 2.0, "ready": 2.0, "starting": 0.0, "draining": 0.0}

        def scaled_up() -> dict[str, float] | None:
            workers = _workers(http, viewer)
            return workers if workers == wanted else None

        eventually(scaled_up, "two ready workers of doubler:1")

        shown = http.get("/api/deployments/doubler-api", headers=viewer)
        assert shown.status_code == 200, shown.text
        status = shown.json()
        assert (status["deployment"], status["revision"]) == ("doubler-api", 1)
        assert status["manifest"]["model"] == "doubler"
        (serving,) = [d for d in status["serving"] if d["version"] == 1]
        assert serving["workers"] == {"desired": 2, "ready": 2, "starting": 0, "draining": 0}
        assert serving["memory_bytes"] > 0
        # Loaded at start with one worker, the new bounds moved it at once: a decision by hand.
        moves = [
            (d["from"], d["to"], d["direction"], d["reason"]) for d in serving["recent_decisions"]
        ]
        assert moves == [(1, 2, "up", "manual")]

        events = http.get("/api/audit", headers=served.headers("admin")).json()
        scale_events = [e for e in events if e["action"] == "version.scale"]
        assert scale_events[0]["target"] == "doubler:1"
        assert scale_events[0]["role"] == "deployer"
        assert scale_events[0]["after"] == {"min_workers": 2, "max_workers": 2}

        # Loaded already, new bounds move the pool at once: a decision by hand.
        lowered = http.post(SCALE, json={"min_workers": 1, "max_workers": 1}, headers=deployer)
        assert lowered.status_code == 200, lowered.text
        assert lowered.json()["workers"]["desired"] == 1
        last = lowered.json()["recent_decisions"][-1]
        assert (last["from"], last["to"], last["direction"], last["reason"]) == (
            2, 1, "down", "manual",
        )  # fmt: skip


def test_only_deployers_of_the_model_may_scale(served: Served) -> None:
    with httpx.Client(base_url=served.server.url, timeout=30) as http:
        body = {"max_workers": 2}
        assert http.post(SCALE, json=body).status_code == 401
        for identity in ("viewer", "predictor", "deployer@other"):
            refused = http.post(SCALE, json=body, headers=served.headers(identity))
            assert refused.status_code == 403, (identity, refused.text)
            assert refused.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        (SCALE, {"min_workers": 3, "max_workers": 2}, 422, "above max_workers"),
        (SCALE, {"min_workers": -1}, 422, "min_workers"),
        (SCALE, {"workers": 2}, 422, "workers"),
        ("/api/models/ghost/versions/1/scaling", {"max_workers": 2}, 404, "ghost"),
        ("/api/models/doubler/versions/9/scaling", {"max_workers": 2}, 404, "9"),
    ],
)
def test_bad_requests_get_a_json_error(
    served: Served, path: str, body: dict[str, Any], status: int, words: str
) -> None:
    answer = httpx.post(
        f"{served.server.url}{path}", json=body, headers=served.headers("deployer"), timeout=30
    )
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]


def test_cli_models_scale(served: Served, tmp_path: Path) -> None:
    env = {"SHIPYARD_URL": served.server.url, "SHIPYARD_API_KEY": served.tokens["deployer"]}
    # A bare name scales the version it serves: no production alias, so the latest (2).
    scaled = run_cli(env, "models", "scale", "doubler", "--min", "1", "--max", "1", "--json")
    assert scaled.returncode == 0, scaled.stderr
    document = json.loads(scaled.stdout)
    assert (document["version"], document["state"]) == (2, "ready")
    assert (document["min_workers"], document["max_workers"]) == (1, 1)

    table = run_cli(env, "deployments", "show", "doubler-api")
    assert table.returncode == 0, table.stderr
    assert "routes:" in table.stdout and "doubler:2" in table.stdout

    elsewhere = {"SHIPYARD_URL": "", "SHIPYARD_HOME": str(tmp_path / "home")}
    local = run_cli(elsewhere, "models", "scale", "doubler:1", "--min", "1")
    assert local.returncode == 1
    assert local.stderr.startswith("error: scaling changes a running server: set SHIPYARD_URL")
    assert not (tmp_path / "home").exists()
