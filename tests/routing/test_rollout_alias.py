"""A rollout on a deployment that routes by an alias: promotion moves the alias, and the
deployment routes by it again either way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions, RolloutState
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from shipyard.routing.rollouts import RolloutService
from tests.polling import eventually
from tests.server import running_server

MODEL = """
class Model:
    def load(self):
        pass

    def predict(self, inputs):
        return {"y": inputs["x"] * %d}
"""
BY_ALIAS = "name: svc-api\nmodel: svc\nroutes: [{alias: production}]\n"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry.open(Settings(home=tmp_path / "home"))
    for version in (1, 2):
        path = tmp_path / f"v{version}" / "model.py"
        path.parent.mkdir()
        path.write_text(MODEL % version)
        aliases = ["production"] if version == 1 else []
        registered = registry.register(path, RegistrationOptions(name="svc", aliases=aliases))
        assert registered.version == version
    registry.deployments.apply(parse_manifest(BY_ALIAS))
    yield registry
    registry.close()


def _production(registry: Registry) -> int:
    return registry.models.get_version(ModelRef("svc", alias="production")).version


def _routes(registry: Registry) -> list[dict[str, object]]:
    manifest = registry.deployments.get("svc-api").manifest
    return [route.model_dump(exclude_none=True) for route in manifest.routes]


def test_a_promoted_rollout_moves_the_alias_its_deployment_routes_by(registry: Registry) -> None:
    service = RolloutService(registry)
    rollout = service.start("svc-api", 2, steps=[50, 100])
    assert (rollout.alias, rollout.stable_version) == ("production", 1)
    service.route(rollout, 50, "step 1")  # what the controller does at the first step
    assert _routes(registry) == [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]

    done = service.act("svc-api", "promote")
    assert done.state is RolloutState.PROMOTED
    assert _production(registry) == 2
    assert _routes(registry) == [{"alias": "production", "weight": 100}]
    (move,) = [e for e in registry.audit.events(limit=100) if e.action == "alias.set"][:1]
    assert (move.target, move.after) == ("svc@production", {"version": 2})


def test_an_aborted_rollout_routes_by_the_alias_again_and_leaves_it(registry: Registry) -> None:
    service = RolloutService(registry)
    rollout = service.start("svc-api", 2, steps=[50, 100])
    service.route(rollout, 50, "step 1")
    assert service.act("svc-api", "abort").state is RolloutState.ABORTED
    assert _production(registry) == 1
    assert _routes(registry) == [{"alias": "production", "weight": 100}]


def test_a_rollout_on_a_version_route_stays_as_it_was(registry: Registry) -> None:
    registry.deployments.apply(
        parse_manifest("name: svc-api\nmodel: svc\nroutes: [{version: 1}]\n")
    )
    service = RolloutService(registry)
    rollout = service.start("svc-api", 2, steps=[100])
    assert rollout.alias is None
    service.act("svc-api", "promote")
    assert _production(registry) == 1  # no alias named: none moves
    assert _routes(registry) == [{"version": 2, "weight": 100}]


def test_a_deployment_routing_by_an_alias_follows_it(registry: Registry, tmp_path: Path) -> None:
    """Moving the alias (a promotion, a guardrail) changes what the deployment serves,
    with no new revision, and answers keep coming while it switches."""
    home = tmp_path / "home"
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    with running_server({"SHIPYARD_HOME": str(home)}) as server, httpx.Client(timeout=30) as http:
        infer = f"{server.url}/v2/models/svc-api/infer"

        def answered() -> str:
            reply = http.post(infer, json=body)
            assert reply.status_code == 200, reply.text
            return reply.headers["x-shipyard-model-version"]

        assert answered() == "svc:1"
        moved = http.put(f"{server.url}/api/models/svc/aliases/production", json={"version": 2})
        assert moved.status_code == 200, moved.text
        eventually(lambda: answered() == "svc:2" or None, "the deployment to follow the alias")
        revisions = http.get(f"{server.url}/api/deployments/svc-api/history").json()
        assert len(revisions) == 1  # the manifest never changed
