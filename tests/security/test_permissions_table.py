"""Every REST route and gRPC method, for every role, against a hand-written table.

test_role_matrix.py checks the server against `security/policy.py`, so a wrong rule there
passes it. Here the expectations come from expected_permissions.py, written from the
documentation, and one real server is asked every question: a rule that opens a route
to the wrong role, or a role that gains a permission, fails this test. The route list
comes from the application, so a new route without a row fails too.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from starlette.routing import Route

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from shipyard.security.keys import KeyStore
from shipyard.server import build_api, build_services
from shipyard.transports.grpc_v2 import inference_pb2 as pb
from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc
from shipyard.transports.rest import INFERENCE
from tests import fixtures
from tests.polling import eventually
from tests.security import expected_permissions as expected
from tests.security.conftest import KeyedHome, make_keyed_home
from tests.server import RunningServer, running_server

# Path parameters for the role table: names nothing exists under, so an allowed call is
# answered by its handler (404, 422, ...) and changes nothing.
PARAMS = {
    "name": "nomodel", "version": "1", "key": "k", "alias": "a", "key_id": "nokey",
    "action": "pause", "deployment": "nodeploy", "report_id": "999999",
    "evaluation_id": "999999", "promotion_id": "999999", "job_id": "nojob", "file": "none",
}  # fmt: skip
OWN, OTHER = "alpha", "beta"
"""The models the scoped keys are made for, and one they are not."""
DEPLOYMENT_OF = {OWN: "alpha-api", OTHER: "beta-api"}
REFUSAL = {grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403}


@dataclass
class Served:
    server: RunningServer
    keyed: KeyedHome

    def headers(self, identity: str) -> dict[str, str]:
        token = self.keyed.tokens.get(identity)
        return {"authorization": f"Bearer {token}"} if token else {}

    def metadata(self, identity: str) -> list[tuple[str, str]]:
        return list(self.headers(identity).items())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("permissions")
    keyed = make_keyed_home(folder / "home")
    registry = Registry.open(Settings(home=keyed.home))
    try:
        for name in (OWN, OTHER):
            model = fixtures.write_sklearn_model(folder / name)
            example = fixtures.write_example_csv(folder / name)  # named inputs f0..f3
            registry.register(model, RegistrationOptions(name=name), example)
            manifest = f"name: {DEPLOYMENT_OF[name]}\nmodel: {name}\nroutes: [{{version: 1}}]\n"
            registry.deployments.apply(parse_manifest(manifest))
        keys = KeyStore(registry.sessions)
        for role in ("predictor", "deployer"):
            keyed.tokens[f"{role}@{OWN}"], _ = keys.create(
                role, "test", name=f"{role}@{OWN}", models=[OWN]
            )
    finally:
        registry.close()
    env = {
        **keyed.env,
        "SHIPYARD_PREDICTION_LOG_SAMPLE": "1.0",  # direct model calls are logged too
        "SHIPYARD_PREDICTION_LOG_FLUSH_SECONDS": "0.1",
    }
    with running_server(env) as server:
        yield Served(server, keyed)


def app_routes(home: Path) -> set[tuple[str, str]]:
    """Every (method, path template) the server answers, taken from the application."""
    api = build_api(build_services(Settings(home=home)))
    schema = api.openapi()
    routes = {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}
    # FastAPI's own pages and the console's routes are not in the schema; the console's
    # live in routers that FastAPI includes lazily.
    routes |= set(_unlisted(api.routes))
    # The front door answers inference before FastAPI sees it.
    routes |= {("POST", template) for template in INFERENCE}
    return routes


def _unlisted(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _unlisted(inner.routes, prefix + route.include_context.prefix)
        elif isinstance(route, Route):
            yield from ((m, prefix + route.path) for m in route.methods or () if m != "HEAD")


def test_the_table_names_every_route_and_method_and_nothing_else(tmp_path: Path) -> None:
    routes = app_routes(tmp_path / "home")
    assert sorted(routes - set(expected.REST)) == [], "routes missing from the table"
    assert sorted(set(expected.REST) - routes) == [], "rows for routes that do not exist"
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert {method.name for method in service.methods} == set(expected.GRPC)


def _refusal(response: httpx.Response, method: str, template: str) -> int | None:
    """401 or 403 when the server refused the caller; None when a handler answered."""
    if response.status_code in (401, 403):
        return response.status_code
    to_sign_in = response.status_code == 303 and response.headers.get("location") == "/ui/login"
    if to_sign_in and method == "GET" and template.startswith("/ui"):
        return 401  # the console sends a person without a session to its sign-in page
    return None


def _wanted(identity: str, allowed: frozenset[str]) -> int | None:
    if identity in allowed:
        return None
    return 401 if identity == expected.ANONYMOUS else 403


@pytest.mark.parametrize("identity", expected.IDENTITIES)
def test_rest_routes_answer_each_role_as_the_table_says(served: Served, identity: str) -> None:
    wrong = []
    with httpx.Client(base_url=served.server.url, timeout=30) as http:
        for (method, template), allowed in sorted(expected.REST.items()):
            body = {"value": "v", "version": 1} if method == "PUT" else {}
            response = http.request(
                method, template.format(**PARAMS), json=body if method != "GET" else None,
                headers=served.headers(identity),
            )  # fmt: skip
            refused = _refusal(response, method, template)
            if refused != _wanted(identity, allowed):
                wrong.append(f"{method} {template}: {response.status_code} {response.text[:80]}")
    assert wrong == []


@pytest.mark.parametrize("identity", expected.IDENTITIES)
def test_grpc_methods_answer_each_role_as_the_table_says(served: Served, identity: str) -> None:
    assert served.server.grpc_target is not None
    wrong = []
    with grpc.insecure_channel(served.server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        for method, allowed in sorted(expected.GRPC.items()):
            request = getattr(pb, f"{method}Request")()
            for field in ("name", "model_name"):
                if field in request.DESCRIPTOR.fields_by_name:
                    setattr(request, field, PARAMS["name"])
            code = _grpc_code(getattr(stub, method), request, served.metadata(identity))
            if REFUSAL.get(code) != _wanted(identity, allowed):
                wrong.append(f"{method}: {code}")
    assert wrong == []


def _grpc_code(call: Any, request: Any, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    try:
        call(request, metadata=metadata, timeout=30)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def _rows() -> Any:
    rows, _ = fixtures.training_data(rows=2, seed=4)
    return rows


def _body(method: str, path: str) -> dict[str, Any] | None:
    if method == "GET" or method == "DELETE":
        return None
    if path.endswith("/invocations"):
        return {"dataframe_split": {"columns": fixtures.FEATURES, "data": _rows().tolist()}}
    if path.endswith("/infer"):
        return {"inputs": [{"name": name, "datatype": "FP64", "shape": [2],
                            "data": _rows()[:, j].tolist()}
                           for j, name in enumerate(fixtures.FEATURES)]}  # fmt: skip
    if "/aliases/" in path:
        return {"version": 1}
    if "/tags/" in path:
        return {"value": "fraud-team"}
    return {}


def _answered(path: str) -> int:
    """The status of a call the key may make: its model exists and the request is valid."""
    if "/bundles/" in path:
        return 400  # the handler's answer: a scikit-learn model has no ONNX version to bundle
    return 200


def test_a_key_limited_to_a_model_reaches_it_and_no_other_over_rest(served: Served) -> None:
    wrong = []
    with httpx.Client(base_url=served.server.url, timeout=60) as http:
        for role, method, template in expected.SCOPED_REST:
            for model, allowed in ((OWN, True), (OTHER, False)):
                path = template.format(model=model, deployment=DEPLOYMENT_OF[model])
                response = http.request(
                    method, path, json=_body(method, path),
                    headers=served.headers(f"{role}@{OWN}"),
                )  # fmt: skip
                if response.status_code != (_answered(path) if allowed else 403):
                    wrong.append(f"{role} {method} {path}: {response.status_code} "
                                 f"{response.text[:80]}")  # fmt: skip
    assert wrong == []


def _infer_request(name: str) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name)
    for j, feature in enumerate(fixtures.FEATURES):
        tensor = request.inputs.add(name=feature, datatype="FP64", shape=[2])
        tensor.contents.fp64_contents.extend(_rows()[:, j].tolist())
    return request


def test_a_key_limited_to_a_model_reaches_it_and_no_other_over_grpc(served: Served) -> None:
    assert served.server.grpc_target is not None
    metadata = served.metadata(f"predictor@{OWN}")
    wrong = []
    with grpc.insecure_channel(served.server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        for method in expected.SCOPED_GRPC:
            # An allowed call is answered in full: the model exists, the request is valid.
            for model, wanted in ((OWN, grpc.StatusCode.OK),
                                  (OTHER, grpc.StatusCode.PERMISSION_DENIED)):  # fmt: skip
                for name in (model, DEPLOYMENT_OF[model]):
                    if method == "ModelInfer":
                        request = _infer_request(name)
                    else:
                        request = getattr(pb, f"{method}Request")(name=name)
                    code = _grpc_code(getattr(stub, method), request, metadata)
                    if code != wanted:
                        wrong.append(f"{method} {name}: {code}")
    assert wrong == []


def test_a_limited_key_labels_only_its_models_predictions(served: Served) -> None:
    request_ids = {}
    with httpx.Client(base_url=served.server.url, timeout=60) as http:
        for model in (OWN, OTHER):
            path = f"/v2/models/{model}/infer"
            answer = http.post(path, json=_body("POST", path), headers=served.headers("predictor"))
            assert answer.status_code == 200, answer.text
            request_ids[model] = answer.headers["x-request-id"]

        def logged() -> bool | None:
            records = http.get(
                "/api/predictions", params={"limit": 1000}, headers=served.headers("admin")
            ).json()
            return set(request_ids.values()) <= {r["request_id"] for r in records} or None

        eventually(logged, "both predictions in the log")
        for request_id, status in (
            (request_ids[OWN], 200),
            (request_ids[OTHER], 403),
            (secrets.token_hex(16), 403),  # an id nobody was given
        ):
            answer = http.post(
                "/api/feedback", json={"items": [{"request_id": request_id, "label": [0, 1]}]},
                headers=served.headers(f"predictor@{OWN}"),
            )  # fmt: skip
            assert answer.status_code == status, (request_id, answer.text)
