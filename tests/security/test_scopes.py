"""A key limited to some models holds on every route that names a model; request ids are
not guessable; loads, drift checks and exports are audited; control-plane requests are
in the access log."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from shipyard.security.keys import KeyStore
from shipyard.transports.grpc_v2 import inference_pb2 as pb
from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc
from tests import fixtures
from tests.security.conftest import KeyedHome, make_keyed_home
from tests.server import RunningServer, running_server

FRAUD_API = """
name: fraud-api
model: fraud
routes: [{version: 1}]
monitoring: {sample: 1.0}
"""
# A deployment whose name is not its model's: a key limited to the name "trap" must not
# reach model `other` through it.
TRAP = """
name: trap
model: other
routes: [{version: 1}]
monitoring: {sample: 1.0}
"""
SCOPED = {  # identity -> (role, models)
    "predictor@fraud": ("predictor", ["fraud"]),
    "deployer@fraud": ("deployer", ["fraud"]),
    "predictor@trap": ("predictor", ["trap"]),
}


@dataclass
class Served:
    server: RunningServer
    keyed: KeyedHome
    request_ids: dict[str, str]
    """name called (model or deployment) -> the request id of one logged prediction."""

    def headers(self, identity: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.keyed.tokens[identity]}"}

    def key_id(self, identity: str) -> str:
        return self.keyed.tokens[identity].split("_")[1]


def _body() -> dict[str, Any]:
    rows, _ = fixtures.training_data(rows=2, seed=4)
    return {"inputs": [{"name": name, "datatype": "FP64", "shape": [2], "data": rows[:, j]
                        .tolist()} for j, name in enumerate(fixtures.FEATURES)]}  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("scopes")
    keyed = make_keyed_home(folder / "home")
    registry = Registry.open(Settings(home=keyed.home))
    try:
        for name in ("fraud", "other"):
            model = fixtures.write_sklearn_model(folder / name)
            example = fixtures.write_example_csv(folder / name, rows=200)
            registry.register(model, RegistrationOptions(name=name), example)
        registry.deployments.apply(parse_manifest(FRAUD_API))
        registry.deployments.apply(parse_manifest(TRAP))
        keys = KeyStore(registry.sessions)
        for identity, (role, models) in SCOPED.items():
            keyed.tokens[identity], _ = keys.create(role, "test", name=identity, models=models)
    finally:
        registry.close()
    env = {
        **keyed.env,
        "SHIPYARD_PREDICTION_LOG_SAMPLE": "1.0",  # direct model calls are logged too
        "SHIPYARD_PREDICTION_LOG_FLUSH_SECONDS": "0.1",
    }
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        predictor = {"authorization": f"Bearer {keyed.tokens['predictor']}"}
        request_ids = {}
        for name in ("fraud", "other", "fraud-api"):
            answer = http.post(f"/v2/models/{name}/infer", json=_body(), headers=predictor)
            assert answer.status_code == 200, answer.text
            request_ids[name] = answer.headers["x-request-id"]
        admin = {"authorization": f"Bearer {keyed.tokens['admin']}"}
        deadline = time.monotonic() + 30
        while True:
            logged = http.get("/api/predictions", params={"limit": 1000}, headers=admin).json()
            if set(request_ids.values()) <= {record["request_id"] for record in logged}:
                break
            assert time.monotonic() < deadline, "predictions never reached the log"
        yield Served(server, keyed, request_ids)


def test_model_metadata_and_readiness_hold_the_keys_models(served: Served) -> None:
    with httpx.Client(base_url=served.server.url, timeout=30) as http:

        def status(identity: str, path: str) -> int:
            return http.get(path, headers=served.headers(identity)).status_code

        for path in ("/v2/models/{}", "/v2/models/{}/ready", "/v2/models/{}/versions/1"):
            assert status("predictor@fraud", path.format("fraud")) == 200, path
            assert status("predictor@fraud", path.format("other")) == 403, path
        # A deployment is checked on the model it routes to, not on its name.
        assert status("predictor@fraud", "/v2/models/fraud-api") == 200
        assert status("predictor@fraud", "/v2/models/fraud-api/ready") == 200
        refused = http.get("/v2/models/trap", headers=served.headers("predictor@trap"))
        assert refused.status_code == 403
        assert refused.json() == {"error": "this key may not call model 'other'"}
        assert status("predictor@trap", "/v2/models/trap/ready") == 403
    assert served.server.grpc_target is not None
    metadata = (("authorization", f"Bearer {served.keyed.tokens['predictor@trap']}"),)
    with grpc.insecure_channel(served.server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        own = (("authorization", f"Bearer {served.keyed.tokens['predictor@fraud']}"),)
        answer = stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud"), metadata=own)
        assert answer.name == "fraud"
        for call, request in (
            (stub.ModelMetadata, pb.ModelMetadataRequest(name="trap")),
            (stub.ModelReady, pb.ModelReadyRequest(name="trap")),
        ):
            with pytest.raises(grpc.RpcError) as refused_rpc:
                call(request, metadata=metadata, timeout=30)
            assert refused_rpc.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_limited_deployer_moves_aliases_and_loads_only_its_models(served: Served) -> None:
    headers = served.headers("deployer@fraud")
    with httpx.Client(base_url=served.server.url, timeout=60) as http:
        for name, expected in (("other", 403), ("fraud", 200)):
            moved = http.put(
                f"/api/models/{name}/aliases/production", json={"version": 1}, headers=headers
            )
            assert moved.status_code == expected, moved.text
            loaded = http.post(f"/v2/repository/models/{name}/load", headers=headers)
            assert loaded.status_code == expected, loaded.text
        removed = http.delete("/api/models/other/aliases/production", headers=headers)
        assert removed.status_code == 403
        refused = http.post("/v2/repository/models/other/unload", headers=headers)
        assert refused.json() == {"error": "this key may not call model 'other'"}
        # The unscoped deployer sees the alias on `fraud` only.
        deployer = served.headers("deployer")
        assert http.get("/api/models/other", headers=deployer).json()["aliases"] == {}
        assert http.get("/api/models/fraud", headers=deployer).json()["aliases"] == {
            "production": 1
        }


def test_a_limited_deployer_changes_only_deployments_of_its_models(served: Served) -> None:
    headers = served.headers("deployer@fraud")
    yaml = {"content-type": "application/yaml"}
    with httpx.Client(base_url=served.server.url, timeout=60) as http:
        # Its own model: a new revision of fraud-api (a dry run changes nothing).
        own = http.post("/api/deployments", params={"dry_run": "true"},
                        content=FRAUD_API.replace("sample: 1.0", "sample: 0.5"),
                        headers={**headers, **yaml})  # fmt: skip
        assert own.status_code == 200, own.text
        # Another model: neither a new deployment of it, nor retargeting one to it.
        for manifest in (TRAP.replace("name: trap", "name: mine"),
                         FRAUD_API.replace("model: fraud", "model: other")):  # fmt: skip
            refused = http.post("/api/deployments", content=manifest, headers={**headers, **yaml})
            assert refused.status_code == 403, refused.text
            assert refused.json() == {"error": "this key may not deploy model 'other'"}
        for path, body in (("/api/deployments/trap/rollback", {"revision": 1}),
                           ("/api/deployments/trap/rollout", {"to": 1}),
                           ("/api/deployments/trap/rollout/pause", None)):  # fmt: skip
            answer = http.post(path, json=body, headers=headers)
            assert answer.status_code == 403, (path, answer.text)
        assert http.get("/api/deployments/mine", headers=served.headers("admin")).status_code == 404
        # Monitoring of a deployment follows the model it routes to.
        for method, path in (("GET", "quality"), ("GET", "drift"), ("POST", "drift")):
            if method == "GET":  # (a drift check on fraud-api would be audited: see below)
                mine = http.request(method, f"/api/deployments/fraud-api/{path}", headers=headers)
                assert mine.status_code == 200, (method, path, mine.text)
            theirs = http.request(method, f"/api/deployments/trap/{path}", headers=headers)
            assert theirs.status_code == 403, (method, path, theirs.text)
            assert theirs.json() == {"error": "this key may not use model 'other'"}


def test_a_limited_key_reads_and_exports_only_its_models_predictions(served: Served) -> None:
    headers = served.headers("deployer@fraud")
    with httpx.Client(base_url=served.server.url, timeout=60) as http:
        refused = http.get("/api/predictions", params={"model": "other"}, headers=headers)
        assert refused.status_code == 403
        assert refused.json() == {"error": "this key may not read predictions of model 'other'"}
        # Through a deployment of another model, too.
        trap = http.get("/api/predictions", params={"deployment": "trap"}, headers=headers)
        assert trap.status_code == 403
        everything = http.get("/api/predictions", params={"limit": 1000}, headers=headers)
        assert everything.status_code == 200
        ids = {record["request_id"] for record in everything.json()}
        assert {record["model"] for record in everything.json()} == {"fraud"}
        assert served.request_ids["fraud"] in ids and served.request_ids["fraud-api"] in ids
        assert served.request_ids["other"] not in ids
        deployed = http.get("/api/predictions", params={"deployment": "fraud-api"}, headers=headers)
        assert [r["request_id"] for r in deployed.json()] == [served.request_ids["fraud-api"]]
        export = "/api/predictions/export"
        assert http.get(export, params={"model": "other"}, headers=headers).status_code == 403
        own = http.get(export, params={"model": "fraud"}, headers=headers)
        assert own.status_code == 200 and own.content.startswith(b"PAR1")


def test_feedback_only_for_predictions_the_caller_could_have_made(served: Served) -> None:
    with httpx.Client(base_url=served.server.url, timeout=30) as http:

        def label(identity: str, *request_ids: str) -> httpx.Response:
            items = [{"request_id": request_id, "label": 1} for request_id in request_ids]
            return http.post(
                "/api/feedback", json={"items": items}, headers=served.headers(identity)
            )

        someone_elses = served.request_ids["other"]
        refused = label("predictor@fraud", someone_elses)
        assert refused.status_code == 403
        assert refused.json() == {
            "error": f"request {someone_elses!r} is not a logged prediction of a model "
            "this key may call"
        }
        assert (
            label("predictor@fraud", served.request_ids["fraud"], someone_elses).status_code == 403
        )
        assert label("predictor@fraud", "never-made").status_code == 403
        own = label("predictor@fraud", served.request_ids["fraud"], served.request_ids["fraud-api"])
        assert own.status_code == 200
        assert own.json() == {"accepted": 2, "matched": 2}
        # A key for every model may label any prediction, as before.
        assert label("predictor", someone_elses).json() == {"accepted": 1, "matched": 1}


def test_request_ids_are_random(served: Served) -> None:
    with httpx.Client(base_url=served.server.url, timeout=30) as http:
        ids = [
            http.post("/v2/models/fraud/infer", json=_body(), headers=served.headers("predictor"))
            .headers["x-request-id"]
            for _ in range(1000)
        ]  # fmt: skip
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)  # 128 bits
    # 1,000 random ids share no first digit by chance (16**-999); two in a row share
    # nine leading digits with odds of 16**-9 per pair.
    assert _shared_prefix(ids) == 0
    assert all(_shared_prefix([a, b]) < 9 for a, b in itertools.pairwise(ids))
    steps = {int(b, 16) - int(a, 16) for a, b in itertools.pairwise(ids)}
    assert all(abs(step) > 2**64 for step in steps)  # not a counter


def _shared_prefix(texts: list[str]) -> int:
    """How many leading characters all the texts share."""
    shared = 0
    for characters in zip(*texts, strict=False):
        if len(set(characters)) > 1:
            break
        shared += 1
    return shared


def _audit(served: Served, http: httpx.Client, action: str) -> list[dict[str, Any]]:
    events = http.get("/api/audit", params={"limit": 1000}, headers=served.headers("admin"))
    assert events.status_code == 200, events.text
    return [e for e in events.json() if e["action"] == action]


def test_drift_checks_and_exports_are_audited(served: Served) -> None:
    deployer = served.headers("deployer")
    actor = f"key:{served.key_id('deployer')} (deployer)"
    with httpx.Client(base_url=served.server.url, timeout=120) as http:
        assert _audit(served, http, "drift.check") == []
        checked = http.post("/api/deployments/fraud-api/drift", headers=deployer)
        assert checked.status_code == 200, checked.text
        (event,) = _audit(served, http, "drift.check")
        assert (event["actor"], event["target"]) == (actor, "fraud-api")
        assert event["after"]["reports"] == [checked.json()[0]["id"]]

        exported = http.get(
            "/api/predictions/export", params={"deployment": "fraud-api"}, headers=deployer
        )
        assert exported.status_code == 200
        (event,) = [e for e in _audit(served, http, "predictions.export")
                    if e["target"] == "fraud-api"]  # fmt: skip
        assert event["actor"] == actor
        assert event["after"] == {"deployment": "fraud-api", "rows": 2}


def _access_lines(server: RunningServer) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in list(server.log) if line.startswith("{")]
    return [line for line in lines if line.get("logger") == "shipyard.access"]


def test_control_plane_requests_leave_an_access_line(served: Served) -> None:
    deployer = served.headers("deployer")
    with httpx.Client(base_url=served.server.url, timeout=30) as http:
        moved = http.put("/api/models/fraud/tags/team", json={"value": "risk"}, headers=deployer)
        assert moved.status_code == 200
        assert http.get("/api/models/fraud/versions").status_code == 401
    wanted = {
        ("/api/models/{name}/tags/{key}", f"key:{served.key_id('deployer')} (deployer)", 200),
        ("/api/models/{name}/versions", None, 401),
    }
    deadline = time.monotonic() + 10
    while True:  # the line is written once the answer is sent: wait for the log to show it
        lines = [line for line in _access_lines(served.server) if line.get("plane") == "control"]
        seen = {(line["route"], line["who"], line["status"]) for line in lines}
        if wanted <= seen:
            break
        assert time.monotonic() < deadline, f"access lines missing: {wanted - seen}"
    line = next(line for line in lines if line["route"] == "/api/models/{name}/tags/{key}")
    assert line["method"] == "PUT" and line["role"] == "deployer"
    assert line["latency_ms"] >= 0 and line["source"].startswith("127.0.0.1:")
    assert "risk" not in json.dumps(line)  # never the body
