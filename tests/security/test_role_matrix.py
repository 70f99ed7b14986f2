"""Every REST route and gRPC method, for every identity: allowed or denied as policy.py says.

The route list comes from the application itself, so a new route without an
access rule fails here before it can ship open.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from starlette.routing import Route

from shipyard.config import Settings
from shipyard.security.policy import GRPC_RULES, REST_RULES, Permission, allows
from shipyard.server import build_api, build_services
from shipyard.transports.grpc_v2 import inference_pb2 as pb
from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc
from tests.security.conftest import KeyedHome
from tests.server import RunningServer, running_server

IDENTITIES = ["anonymous", "viewer", "predictor", "deployer", "admin", "revoked", "expired"]
PARAMS = {
    "name": "nomodel", "version": "1", "key": "k", "alias": "a", "key_id": "nokey",
    "action": "pause", "deployment": "nodeploy", "report_id": "999999",
    "evaluation_id": "999999", "promotion_id": "999999", "job_id": "nojob", "file": "none",
}  # fmt: skip


def app_routes(home: Path) -> set[tuple[str, str]]:
    api = build_api(build_services(Settings(home=home)))
    schema = api.openapi()
    routes = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    # Routes outside the schema: FastAPI's own docs routes, and the console's (ui/), which
    # FastAPI keeps inside included routers.
    routes |= set(_unlisted(api.routes))
    return routes


def _unlisted(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _unlisted(inner.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Route):
            yield from ((m, prefix + route.path) for m in route.methods or () if m != "HEAD")


def test_every_route_has_exactly_one_rule(tmp_path: Path) -> None:
    routes = app_routes(tmp_path / "home")
    assert routes - set(REST_RULES) == set(), "routes without an access rule"
    assert set(REST_RULES) - routes == set(), "rules for routes that do not exist"
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert {m.name for m in service.methods} == set(GRPC_RULES)


def expected_denial(identity: str, permission: Permission) -> int | None:
    if permission is Permission.PUBLIC:
        return None
    if identity in ("anonymous", "revoked", "expired"):
        return 401
    return None if allows(identity, permission) else 403


@pytest.fixture(scope="module")
def server(keyed_home: KeyedHome) -> RunningServer:  # type: ignore[misc]
    with running_server(keyed_home.env) as running:
        yield running


def _headers(keyed_home: KeyedHome, identity: str) -> dict[str, str]:
    token = keyed_home.tokens.get(identity)
    return {"authorization": f"Bearer {token}"} if token else {}


@pytest.mark.parametrize("identity", IDENTITIES)
def test_rest_role_matrix(server: RunningServer, keyed_home: KeyedHome, identity: str) -> None:
    wrong = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for (method, template), permission in sorted(REST_RULES.items()):
            path = template.format(**PARAMS)
            body = {"value": "v", "version": 1} if method == "PUT" else {}
            response = client.request(
                method, path, json=body if method != "GET" else None,
                headers=_headers(keyed_home, identity),
            )  # fmt: skip
            denied = response.status_code if response.status_code in (401, 403) else None
            to_sign_in = response.status_code == 303 and response.headers["location"] == "/ui/login"
            if to_sign_in and method == "GET" and template.startswith("/ui"):
                denied = 401  # the console sends a person to its sign-in page instead
            elif denied:
                assert "error" in response.json()
            if denied != expected_denial(identity, permission):
                wrong.append(f"{method} {template}: {response.status_code} {response.text[:80]}")
    assert wrong == []


@pytest.mark.parametrize("identity", IDENTITIES)
def test_grpc_role_matrix(server: RunningServer, keyed_home: KeyedHome, identity: str) -> None:
    assert server.grpc_target is not None
    token = keyed_home.tokens.get(identity)
    metadata = [("authorization", f"Bearer {token}")] if token else []
    wrong = []
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        for method, permission in sorted(GRPC_RULES.items()):
            request = getattr(pb, f"{method}Request")()
            for field in ("name", "model_name"):
                if field in request.DESCRIPTOR.fields_by_name:
                    setattr(request, field, "nomodel")
            try:
                getattr(stub, method)(request, metadata=metadata, timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            denied = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403}
            if denied.get(code) != expected_denial(identity, permission):
                wrong.append(f"{method}: {code}")
    assert wrong == []


def test_logs_hold_no_key_material(server: RunningServer, keyed_home: KeyedHome) -> None:
    log = "".join(server.log)
    assert "refused a key" in log  # the revoked and expired keys were refused and logged
    for token in keyed_home.tokens.values():
        secret = token.split("_", 2)[2]
        assert secret not in log
        assert token not in log
