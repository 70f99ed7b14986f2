"""Deployments: manifests, revisions, weighted and sticky routing, shadow, live switches."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from shipyard.config import Settings
from shipyard.errors import InvalidInput, NotFound
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from shipyard.security.keys import KeyStore
from tests import fixtures
from tests.server import RunningServer, running_server

MANIFEST = """
name: fraud-api
model: fraud
routes:
  - version: 1
    weight: 70
  - version: 2
    weight: 30
"""


def test_manifest_errors_say_where() -> None:
    with pytest.raises(InvalidInput, match="not valid YAML"):
        parse_manifest("name: [unclosed")
    with pytest.raises(InvalidInput, match=r"routes.0: .*either a version or an alias"):
        parse_manifest("name: a\nmodel: m\nroutes: [{version: 1, alias: x}]")
    with pytest.raises(InvalidInput, match="weights must add up"):
        parse_manifest("name: a\nmodel: m\nroutes: [{version: 1, weight: 0}]")
    with pytest.raises(InvalidInput, match="replicas: Extra inputs"):
        parse_manifest("name: a\nmodel: m\nroutes: [{version: 1}]\nreplicas: 3")


def test_revisions_diff_rollback_and_audit(registry: Registry) -> None:
    first = registry.deployments.apply(parse_manifest(MANIFEST))
    assert (first.changed, first.revision) == (True, 1)
    assert registry.deployments.apply(parse_manifest(MANIFEST)).changed is False
    changed = MANIFEST.replace("weight: 70", "weight: 50").replace("weight: 30", "weight: 50")
    dry = registry.deployments.apply(parse_manifest(changed), dry_run=True)
    assert dry.changed and dry.revision == 1
    assert "-  weight: 70.0" in dry.diff and "+  weight: 50.0" in dry.diff
    assert registry.deployments.get("fraud-api").revision == 1  # dry run changed nothing
    assert registry.deployments.apply(parse_manifest(changed)).revision == 2
    back = registry.deployments.rollback("fraud-api", 1)
    assert (
        back.revision == 3
        and back.manifest == registry.deployments.revision("fraud-api", 1).manifest
    )
    assert [r.reason for r in registry.deployments.history("fraud-api")] == [
        "apply", "apply", "rollback to 1",
    ]  # fmt: skip
    actions = [e.action for e in registry.audit.events()]
    assert actions == ["deployment.apply", "deployment.apply", "deployment.rollback"]
    with pytest.raises(NotFound):
        registry.deployments.rollback("fraud-api", 9)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> RunningServer:  # type: ignore[misc]
    folder = tmp_path_factory.mktemp("deployed")
    home = folder / "home"
    registry = Registry.open(Settings(home=home))
    try:
        for seed in (0, 1):
            path = fixtures.write_sklearn_model(folder, name=f"m{seed}.joblib", seed=seed)
            registry.register(path, RegistrationOptions(name="fraud"))
        registry.deployments.apply(parse_manifest(MANIFEST))
    finally:
        registry.close()
    with running_server({"SHIPYARD_HOME": str(home)}) as server:
        yield server


def _body(rows: int = 1) -> dict[str, object]:
    data, _ = fixtures.training_data(rows=rows)
    return {"inputs": [{"name": "input-0", "shape": [rows, 4], "datatype": "FP64",
                        "data": data.tolist()}]}  # fmt: skip


def test_deployment_answers_by_weight_and_sticky_header(deployed: RunningServer) -> None:
    url = f"{deployed.url}/v2/models/fraud-api/infer"
    with httpx.Client(timeout=30) as http:
        versions = Counter(
            http.post(url, json=_body()).headers["x-shipyard-model-version"] for _ in range(600)
        )
        assert set(versions) == {"fraud:1", "fraud:2"}
        share = versions["fraud:2"] / 600
        assert abs(share - 0.3) < 5 * (0.3 * 0.7 / 600) ** 0.5
        answer = http.post(url, json=_body())
        assert answer.json()["model_version"] in ("1", "2")
        pinned = http.post(url, json=_body(), headers={"x-shipyard-version": "2"})
        assert pinned.headers["x-shipyard-model-version"] == "fraud:2"
        mlflow = http.post(
            f"{deployed.url}/deployments/fraud-api/invocations",
            json={"inputs": _body()["inputs"][0]["data"]},
        )  # type: ignore[index]
        assert mlflow.status_code == 200, mlflow.text
        assert "predictions" in mlflow.json()
        missing = http.post(f"{deployed.url}/v2/models/no-such-thing/infer", json=_body())
        assert missing.status_code == 404


def test_sticky_key_keeps_a_user_on_one_arm(tmp_path: Path, deployed: RunningServer) -> None:
    sticky = MANIFEST.replace("name: fraud-api", "name: fraud-ab") + "sticky: {header: x-user}\n"
    with httpx.Client(base_url=deployed.url, timeout=30) as http:
        applied = http.post("/api/deployments", content=sticky,
                            headers={"content-type": "application/yaml"})  # fmt: skip
        assert applied.status_code == 200, applied.text
        seen: dict[str, set[str]] = {}
        for user in range(40):
            for _ in range(4):
                answer = http.post("/v2/models/fraud-ab/infer", json=_body(),
                                   headers={"x-user": f"u{user}"})  # fmt: skip
                seen.setdefault(f"u{user}", set()).add(answer.headers["x-shipyard-model-version"])
    assert all(len(arms) == 1 for arms in seen.values())
    assert {v for arms in seen.values() for v in arms} == {"fraud:1", "fraud:2"}


def _metric(server: RunningServer, line_start: str) -> float:
    for line in httpx.get(f"{server.url}/metrics", timeout=30).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_shadow_copies_never_change_the_live_answer(deployed: RunningServer) -> None:
    shadowed = """
name: fraud-shadow
model: fraud
routes: [{version: 1}]
shadow: {version: 2, fraction: 1.0}
"""
    with httpx.Client(base_url=deployed.url, timeout=30) as http:
        http.post("/api/deployments", content=shadowed).raise_for_status()
        bodies = [_body(rows=3) for _ in range(30)]
        live = [http.post("/v2/models/fraud-shadow/infer", json=b) for b in bodies]
        direct = [http.post("/v2/models/fraud/versions/1/infer", json=b) for b in bodies]
    assert all(a.headers["x-shipyard-model-version"] == "fraud:1" for a in live)
    assert [a.json()["outputs"] for a in live] == [d.json()["outputs"] for d in direct]
    labels = 'deployment="fraud-shadow",revision="1"'
    deadline = time.monotonic() + 30
    while _metric(deployed, f"shipyard_shadow_requests_total{{{labels}}}") < 30:
        assert time.monotonic() < deadline, "shadow copies were not all recorded"
        time.sleep(0.05)  # polling an eventually-updated counter, bounded by the deadline
    agreed = _metric(deployed, f"shipyard_shadow_agreements_total{{{labels}}}")
    failed = _metric(deployed, f"shipyard_shadow_failures_total{{{labels}}}")
    assert 0 <= agreed <= 30 and failed == 0


def test_switching_revisions_under_load_fails_no_request(deployed: RunningServer) -> None:
    manifest = "name: fraud-switch\nmodel: fraud\nroutes: [{version: 1}]\n"
    with httpx.Client(base_url=deployed.url, timeout=30) as http:
        http.post("/api/deployments", content=manifest).raise_for_status()
        stop, warm = threading.Event(), threading.Event()

        def hammer() -> Counter[str]:
            seen: Counter[str] = Counter()
            with httpx.Client(base_url=deployed.url, timeout=30) as client:
                while not stop.is_set():
                    answer = client.post("/v2/models/fraud-switch/infer", json=_body())
                    version = answer.headers.get("x-shipyard-model-version", "")
                    seen[f"{answer.status_code} {version}"] += 1
                    if sum(seen.values()) >= 20:
                        warm.set()
            return seen

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            loads = [pool.submit(hammer) for _ in range(4)]
            assert warm.wait(60), "no load reached the server"  # traffic flows before the switch
            http.post(
                "/api/deployments", content=manifest.replace("version: 1", "version: 2")
            ).raise_for_status()
            deadline = time.monotonic() + 60
            while (
                http.post("/v2/models/fraud-switch/infer", json=_body()).headers[
                    "x-shipyard-model-version"
                ]
                != "fraud:2"
            ):
                assert time.monotonic() < deadline, "the new revision never went live"
            stop.set()
            seen = sum((f.result() for f in loads), Counter())
    assert set(seen) <= {"200 fraud:1", "200 fraud:2"}, seen
    assert seen["200 fraud:1"] > 0


def test_cli_apply_dry_run_history_and_rollback(tmp_path: Path) -> None:
    from tests.cli.test_cli import run_cli

    env = {"SHIPYARD_HOME": str(tmp_path / "home")}
    manifest = tmp_path / "fraud.yaml"
    manifest.write_text(MANIFEST)
    applied = run_cli(env, "apply", "-f", str(manifest))
    assert applied.returncode == 0, applied.stderr
    assert "revision 1 applied" in applied.stderr
    manifest.write_text(MANIFEST.replace("weight: 30", "weight: 40"))
    dry = run_cli(env, "apply", "-f", str(manifest), "--dry-run")
    assert "+  weight: 40.0" in dry.stdout and "would change" in dry.stderr
    assert run_cli(env, "apply", "-f", str(manifest)).returncode == 0
    rolled = run_cli(env, "deployments", "rollback", "fraud-api", "--to", "1")
    assert "revision 3 now live" in rolled.stdout
    history = run_cli(env, "deployments", "history", "fraud-api", "--json")
    assert [r["reason"] for r in __import__("json").loads(history.stdout)] == [
        "apply", "apply", "rollback to 1",
    ]  # fmt: skip


def test_pinning_a_version_needs_a_deployer(tmp_path: Path) -> None:
    from tests.security.conftest import make_keyed_home

    keyed = make_keyed_home(tmp_path / "home")
    registry = Registry.open(Settings(home=keyed.home))
    try:
        for seed in (0, 1):
            path = fixtures.write_sklearn_model(tmp_path, name=f"m{seed}.joblib", seed=seed)
            registry.register(path, RegistrationOptions(name="fraud"))
        registry.deployments.apply(parse_manifest(MANIFEST))
        keys = KeyStore(registry.sessions)
        for scope in ("fraud", "other"):
            token, _ = keys.create("predictor", "test", name=scope, models=[scope])
            keyed.tokens[f"predictor@{scope}"] = token
    finally:
        registry.close()
    url = "/v2/models/fraud-api/infer"
    with running_server(keyed.env) as server, httpx.Client(base_url=server.url) as http:

        def call(role: str, pin: str | None) -> httpx.Response:
            headers = {"authorization": f"Bearer {keyed.tokens[role]}"}
            if pin:
                headers["x-shipyard-version"] = pin
            return http.post(url, json=_body(), headers=headers, timeout=30)

        assert call("predictor", None).status_code == 200
        assert call("predictor", "2").status_code == 403
        # A key scoped to a model may call the deployments that route to it, no others.
        assert call("predictor@fraud", None).status_code == 200
        refused = call("predictor@other", None)
        assert refused.status_code == 403
        assert refused.json() == {"error": "this key may not call model 'fraud'"}
        pinned = call("deployer", "2")
        assert pinned.status_code == 200
        assert pinned.headers["x-shipyard-model-version"] == "fraud:2"
        # The same rule over gRPC, with the pin as metadata.
        import grpc

        assert server.grpc_target is not None

        def grpc_call(role: str, pin: str | None) -> str:
            metadata = [("authorization", f"Bearer {keyed.tokens[role]}")]
            if pin:
                metadata.append(("x-shipyard-version", pin))
            return _grpc_infer(server.grpc_target or "", "fraud-api", tuple(metadata))

        assert grpc_call("predictor", None) in ("1", "2")
        assert grpc_call("predictor@fraud", None) in ("1", "2")
        with pytest.raises(grpc.RpcError) as out_of_scope:
            grpc_call("predictor@other", None)
        assert out_of_scope.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as refused:
            grpc_call("predictor", "2")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert {grpc_call("deployer", "2") for _ in range(5)} == {"2"}


def test_a_deployment_is_addressed_by_name_like_a_model(deployed: RunningServer) -> None:
    import grpc

    from shipyard.transports.grpc_v2 import inference_pb2 as pb
    from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc

    with httpx.Client(base_url=deployed.url, timeout=30) as http:
        metadata = http.get("/v2/models/fraud-api")
        assert metadata.status_code == 200 and metadata.json()["name"] == "fraud"
        assert http.get("/v2/models/fraud-api/ready").json()["ready"] is True
    assert deployed.grpc_target is not None
    data, _ = fixtures.training_data(rows=1)
    request = pb.ModelInferRequest(model_name="fraud-api")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(data.reshape(-1).tolist())
    with grpc.insecure_channel(deployed.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        assert stub.ModelReady(pb.ModelReadyRequest(name="fraud-api"), timeout=30).ready
        answer = stub.ModelInfer(request, timeout=30)
    assert answer.model_name == "fraud" and answer.model_version in ("1", "2")


def _grpc_infer(target: str, name: str, metadata: tuple[tuple[str, str], ...]) -> str:
    """The version that answered one gRPC ModelInfer with the given metadata."""
    import grpc

    from shipyard.transports.grpc_v2 import inference_pb2 as pb
    from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc

    data, _ = fixtures.training_data(rows=1)
    request = pb.ModelInferRequest(model_name=name)
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend(data.reshape(-1).tolist())
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        answer = stub.ModelInfer(request, metadata=metadata, timeout=30)
    return str(answer.model_version)


def test_grpc_requests_are_sticky_and_pinnable_like_rest(deployed: RunningServer) -> None:
    sticky = MANIFEST.replace("name: fraud-api", "name: fraud-grpc") + "sticky: {header: x-user}\n"
    with httpx.Client(base_url=deployed.url, timeout=30) as http:
        applied = http.post("/api/deployments", content=sticky)
        assert applied.status_code == 200, applied.text
        rest = {
            f"u{user}": http.post("/v2/models/fraud-grpc/infer", json=_body(),
                                  headers={"x-user": f"u{user}"}).json()["model_version"]
            for user in range(40)
        }  # fmt: skip
    assert deployed.grpc_target is not None
    seen: dict[str, set[str]] = {}
    for user in range(40):
        for _ in range(3):
            version = _grpc_infer(deployed.grpc_target, "fraud-grpc", (("x-user", f"u{user}"),))
            seen.setdefault(f"u{user}", set()).add(version)
    # One arm per user over gRPC, and the same arm REST gives that user.
    assert {user: arms.pop() for user, arms in seen.items() if len(arms) == 1} == rest
    assert set(rest.values()) == {"1", "2"}
    pins = {_grpc_infer(deployed.grpc_target, "fraud-grpc", (("x-shipyard-version", "2"),))
            for _ in range(10)}  # fmt: skip
    assert pins == {"2"}


def test_rest_and_grpc_describe_the_server_the_same_way(deployed: RunningServer) -> None:
    import grpc

    from shipyard.transports.grpc_v2 import inference_pb2 as pb
    from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc

    assert deployed.grpc_target is not None
    with httpx.Client(base_url=deployed.url, timeout=30) as http:
        http.post("/v2/models/fraud-api/infer", json=_body()).raise_for_status()  # loaded
        server = http.get("/v2").json()
        index = http.post("/v2/repository/index").json()
        metadata = http.get("/v2/models/fraud-api").json()
    with grpc.insecure_channel(deployed.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        grpc_server = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
        grpc_index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
        grpc_metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="fraud-api"), timeout=30)
    # The protocol's extensions this server implements, written out by hand.
    assert server["extensions"] == ["binary_tensor_data", "model_repository"]
    assert list(grpc_server.extensions) == server["extensions"]
    assert (grpc_server.name, grpc_server.version) == (server["name"], server["version"])
    rest_entries = {(m["name"], m["version"], m["state"]) for m in index}
    assert {("fraud", "1", "READY"), ("fraud", "2", "READY")} <= rest_entries
    assert {(m.name, m.version, m.state) for m in grpc_index.models} == rest_entries
    # A deployment is described by its main arm: version 1 carries 70% of its traffic.
    assert (metadata["name"], metadata["versions"]) == ("fraud", ["1"])
    assert (grpc_metadata.name, list(grpc_metadata.versions)) == ("fraud", ["1"])
