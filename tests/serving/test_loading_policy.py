"""Loading is a deploy action: a request loads only what someone chose to serve, and the
server's readiness neither flaps on such loads nor names a model to strangers."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from shipyard.config import Settings
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from shipyard.transports.grpc_v2 import inference_pb2 as pb
from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc
from tests import fixtures
from tests.security.conftest import make_keyed_home
from tests.server import running_server

ROWS, _ = fixtures.training_data(rows=1, seed=9)
BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROWS.tolist()}]}
PIN = "x-shipyard-version"


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_a_request_loads_only_deployed_versions(tmp_path: Path) -> None:
    keyed = make_keyed_home(tmp_path / "home")
    registry = Registry.open(Settings(home=keyed.home))
    try:
        for seed in (0, 1, 2):
            model = fixtures.write_sklearn_model(tmp_path / f"v{seed}", seed=seed)
            registry.register(model, RegistrationOptions(name="fraud"))
        registry.models.archive_version(ModelRef("fraud", version=1))
        registry.models.set_alias("fraud", "production", 2)  # 3 is the newest, not served
    finally:
        registry.close()
    predictor, deployer = _bearer(keyed.tokens["predictor"]), _bearer(keyed.tokens["deployer"])
    deployer_id = keyed.tokens["deployer"].split("_")[1]
    with running_server(keyed.env) as server, httpx.Client(base_url=server.url, timeout=60) as http:

        def infer(version: str) -> httpx.Response:
            return http.post(f"/v2/models/fraud/versions/{version}/infer", json=BODY,
                             headers=predictor)  # fmt: skip

        def index() -> dict[str, str]:
            listed = http.post("/v2/repository/index", headers=deployer).json()
            return {entry["version"]: entry["state"] for entry in listed}

        refused = infer("3")
        assert refused.status_code == 409
        assert refused.json() == {
            "error": "version 3 of fraud is not deployed: load it with a deployer key or "
            "route a deployment to it"
        }
        archived = infer("1")
        assert archived.status_code == 409
        assert archived.json() == {
            "error": "version 1 of fraud is archived: it is never loaded to answer requests"
        }
        assert server.grpc_target is not None
        channel = grpc.insecure_channel(server.grpc_target)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.ModelInferRequest(model_name="fraud", model_version="3")
        tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
        tensor.contents.fp64_contents.extend(ROWS.reshape(-1).tolist())
        grpc_predictor = (("authorization", predictor["authorization"]),)
        with pytest.raises(grpc.RpcError) as refused_rpc:
            stub.ModelInfer(request, metadata=grpc_predictor, timeout=30)
        assert refused_rpc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert index() == {}  # nothing was loaded for them

        # What the name serves (its production alias) loads on demand, as before.
        served = http.post("/v2/models/fraud/infer", json=BODY, headers=predictor)
        assert served.headers["x-shipyard-model-version"] == "fraud:2"
        assert index() == {"2": "READY"}

        # A deployer loads version 3 (here over gRPC, the version in the metadata), and
        # then predictors may call it; an archived version is not loaded even for them.
        grpc_deployer = (("authorization", deployer["authorization"]), (PIN, "3"))
        stub.RepositoryModelLoad(
            pb.RepositoryModelLoadRequest(model_name="fraud"), metadata=grpc_deployer, timeout=60
        )
        assert infer("3").headers["x-shipyard-model-version"] == "fraud:3"
        no_archived = http.post("/v2/repository/models/fraud/load", headers={**deployer, PIN: "1"})
        assert no_archived.status_code == 409
        assert index() == {"2": "READY", "3": "READY"}

        # Unloaded, it stays out: a request does not bring it back.
        unloaded = http.post("/v2/repository/models/fraud/unload", headers={**deployer, PIN: "3"})
        assert unloaded.json() == {"name": "fraud", "version": "3", "state": "UNLOADED"}
        assert infer("3").status_code == 409
        assert index() == {"2": "READY", "3": "UNLOADED"}
        loaded = http.post("/v2/repository/models/fraud/load", headers={**deployer, PIN: "3"})
        assert loaded.json() == {"name": "fraud", "version": "3", "state": "READY"}
        assert infer("3").status_code == 200
        channel.close()

        admin = _bearer(keyed.tokens["admin"])
        events = http.get("/api/audit", params={"limit": 1000}, headers=admin).json()
        loads = [(e["action"], e["target"], e["actor"]) for e in events
                 if e["action"] in ("model.load", "model.unload")]  # fmt: skip
        actor = f"key:{deployer_id} (deployer)"
        assert loads == [
            ("model.load", "fraud:3", actor),
            ("model.unload", "fraud:3", actor),
            ("model.load", "fraud:3", actor),
        ]

        # Loading is a deployer's to do: its own request may load a version on demand,
        # where a predictor's may not; an archived version stays out even for it.
        http.post("/v2/repository/models/fraud/unload", headers={**deployer, PIN: "3"})
        assert infer("3").status_code == 409
        url = "/v2/models/fraud/versions/{}/infer"
        by_deployer = http.post(url.format(3), json=BODY, headers=deployer)
        assert by_deployer.headers["x-shipyard-model-version"] == "fraud:3"
        assert http.post(url.format(1), json=BODY, headers=deployer).status_code == 409


def test_a_version_an_alias_points_at_loads_on_demand(tmp_path: Path) -> None:
    keyed = make_keyed_home(tmp_path / "home")
    registry = Registry.open(Settings(home=keyed.home))
    try:
        for seed in (0, 1, 2):
            model = fixtures.write_sklearn_model(tmp_path / f"v{seed}", seed=seed)
            registry.register(model, RegistrationOptions(name="fraud"))
        registry.models.set_alias("fraud", "production", 2)
    finally:
        registry.close()
    predictor, deployer = _bearer(keyed.tokens["predictor"]), _bearer(keyed.tokens["deployer"])
    with running_server(keyed.env) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        url = "/v2/models/fraud/versions/1/infer"
        assert http.post(url, json=BODY, headers=predictor).status_code == 409
        moved = http.put(
            "/api/models/fraud/aliases/champion", json={"version": 1}, headers=deployer
        )
        assert moved.status_code == 200
        deadline = time.monotonic() + 10
        # Names resolve from a cache refreshed within a second or so: poll until it shows.
        while (answer := http.post(url, json=BODY, headers=predictor)).status_code == 409:
            assert time.monotonic() < deadline, "the alias never made version 1 callable"
        assert answer.headers["x-shipyard-model-version"] == "fraud:1"


SLOW_MODEL = '''
import time
from pathlib import Path


class Slow:
    """Loads only once the test creates its release file: a load the test can watch."""

    def load(self):
        release = Path({release!r})
        deadline = time.monotonic() + 120
        while not release.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("never released")
            time.sleep(0.01)

    def predict(self, inputs):
        return next(iter(inputs.values()))
'''


def test_readiness_holds_and_names_nothing_while_a_request_loads(tmp_path: Path) -> None:
    keyed = make_keyed_home(tmp_path / "home")
    release = tmp_path / "release"
    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "model.py").write_text(SLOW_MODEL.replace("{release!r}", repr(str(release))))
    registry = Registry.open(Settings(home=keyed.home))
    try:
        registry.register(folder, RegistrationOptions(name="slow"))
    finally:
        registry.close()
    predictor, viewer = _bearer(keyed.tokens["predictor"]), _bearer(keyed.tokens["viewer"])
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.5]}]}
    with (
        running_server(keyed.env) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        calling = pool.submit(
            http.post, "/v2/models/slow/infer", json=body, headers=predictor, timeout=60
        )

        def state() -> list[Any]:
            listed = http.post("/v2/repository/index", headers=viewer).json()
            return [(entry["name"], entry["state"]) for entry in listed]

        deadline = time.monotonic() + 30
        while state() != [("slow", "LOADING")]:
            assert time.monotonic() < deadline, "the demand load never started"
        ready = http.get("/v2/health/ready")  # anonymous, while slow:1 loads
        assert ready.status_code == 200
        assert ready.json() == {"ready": True}
        assert server.grpc_target is not None
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
        release.touch()
        answered = calling.result(timeout=60)
        assert answered.status_code == 200, answered.text
        assert state() == [("slow", "READY")]
        assert http.get("/v2/health/ready").json() == {"ready": True}
