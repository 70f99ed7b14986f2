"""Input-keyed sticky routing (`sticky: {input: NAME}`): the first value of that input
picks the arm, the same arm for the same value over REST and gRPC, on a live server."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests.fixtures import SCALE_MODEL
from tests.server import RunningServer, running_server

MANIFEST = """
name: shop-ab
model: shop
routes: [{version: 1, weight: 50}, {version: 2, weight: 50}]
sticky: {input: user}
"""
# Hand-chosen keys: 40 distinct users, as text and as numbers (one request row each).
TEXT_USERS = [f"user-{n}" for n in range(40)]
NUMBER_USERS = [1000 + 7 * n for n in range(40)]
REPEATS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("sticky-input")
    home = folder / "home"
    registry = Registry.open(Settings(home=home))
    try:
        for version in (1, 2):
            path = folder / f"v{version}" / "scale.py"
            path.parent.mkdir()
            path.write_text(SCALE_MODEL % version)
            assert registry.register(path, RegistrationOptions(name="shop")).version == version
        registry.deployments.apply(parse_manifest(MANIFEST))
    finally:
        registry.close()
    with running_server({"SHIPYARD_HOME": str(home)}) as running:
        yield running


def _rest(http: httpx.Client, user: str | int, x: float) -> str:
    """The version that answered one REST request for `user` (checked against its answer)."""
    datatype = "BYTES" if isinstance(user, str) else "INT64"
    body = {"inputs": [{"name": "user", "shape": [1], "datatype": datatype, "data": [user]},
                       {"name": "x", "shape": [1], "datatype": "FP64", "data": [x]}]}  # fmt: skip
    answer = http.post("/v2/models/shop-ab/infer", json=body)
    assert answer.status_code == 200, answer.text
    version = answer.json()["model_version"]
    assert answer.headers["x-shipyard-model-version"] == f"shop:{version}"
    (output,) = answer.json()["outputs"]
    assert output["data"] == [x * int(version)]  # v1 answers x, v2 answers 2x
    return str(version)


def _grpc(target: str, user: str | int, x: float) -> str:
    """The version that answered one gRPC ModelInfer for `user`."""
    import grpc

    from shipyard.transports.grpc_v2 import inference_pb2 as pb
    from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc

    request = pb.ModelInferRequest(model_name="shop-ab")
    if isinstance(user, str):
        key = request.inputs.add(name="user", datatype="BYTES", shape=[1])
        key.contents.bytes_contents.append(user.encode())
    else:
        key = request.inputs.add(name="user", datatype="INT64", shape=[1])
        key.contents.int64_contents.append(user)
    values = request.inputs.add(name="x", datatype="FP64", shape=[1])
    values.contents.fp64_contents.append(x)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        answer = stub.ModelInfer(request, timeout=30)
    (output,) = answer.outputs
    data = (
        np.frombuffer(answer.raw_output_contents[0], dtype=np.float64).tolist()
        if answer.raw_output_contents
        else list(output.contents.fp64_contents)
    )
    assert data == [x * int(answer.model_version)]
    return str(answer.model_version)


@pytest.mark.parametrize("users", [TEXT_USERS, NUMBER_USERS], ids=["text", "number"])
def test_one_value_one_arm_over_rest_and_grpc(
    server: RunningServer, users: list[str] | list[int]
) -> None:
    assert server.grpc_target is not None
    seen: dict[str | int, set[str]] = {user: set() for user in users}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for attempt in range(REPEATS):
            for user in users:
                # Other inputs vary: only the sticky input's value may decide the arm.
                x = float(attempt + 1)
                seen[user].add(_rest(http, user, x))
                seen[user].add(_grpc(server.grpc_target, user, x))
    split = {user: arms for user, arms in seen.items() if len(arms) > 1}
    assert not split, f"users answered by both versions: {split}"
    arms = [next(iter(arms)) for arms in seen.values()]
    # Different values spread over both arms: with a 50/50 split and a fixed hash, 40 keys
    # landing on one arm would be a 2**-39 accident, and the hash makes it reproducible.
    assert set(arms) == {"1", "2"}
