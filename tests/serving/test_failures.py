"""A misbehaving model: errors, crashes, deadlines and bad input never take the server down."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.server import RunningServer, running_shipyard

TROUBLE_MODEL = '''
import os
import time


class Trouble:
    """Behaves by its input: 1 raises, 2 kills its process, 3 sleeps, else echoes."""

    def load(self):
        pass

    def predict(self, inputs):
        (values,) = inputs.values()
        code = int(values[0])
        if code == 1:
            raise ValueError("negative balance")
        if code == 2:
            os._exit(3)
        if code == 3:
            time.sleep(5)
        return values
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("trouble")
    (tmp / "trouble.py").write_text(TROUBLE_MODEL)
    env = {"SHIPYARD_HOME": str(tmp / "home"), "SHIPYARD_MAX_BODY_BYTES": "100000"}
    with running_shipyard(env, "serve", str(tmp / "trouble.py"), "--workers", "2") as running:
        yield running


def infer(server: RunningServer, code: float, **extra: object) -> httpx.Response:
    body = {"inputs": [{"name": "v", "shape": [1], "datatype": "FP64", "data": [code]}], **extra}
    return httpx.post(f"{server.url}/v2/models/trouble/infer", json=body, timeout=30)


def test_model_refusing_input_is_a_400_with_type_not_message(server: RunningServer) -> None:
    response = infer(server, 1)  # ValueError: the caller's input; its words go to the log
    assert response.status_code == 400
    assert response.json() == {
        "error": "model trouble:1 refused the input (ValueError); the server log has the "
        "model's message under this request's x-request-id"
    }
    assert "negative balance" not in response.text
    assert infer(server, 0).status_code == 200


def test_deadline_ends_in_504(server: RunningServer) -> None:
    response = infer(server, 3, parameters={"timeout": 0.3})
    assert response.status_code == 504
    assert "did not answer within 0.3 s" in response.json()["error"]
    assert infer(server, 0).status_code == 200  # the other worker is free


def test_crash_fails_only_its_request_and_service_recovers(server: RunningServer) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        crash = pool.submit(infer, server, 2)
        crashed = crash.result()
    assert crashed.status_code == 503
    assert "crashed" in crashed.json()["error"]
    assert crashed.headers["retry-after"] == "1"
    # The surviving worker answers at once; the replacement joins within seconds.
    started = time.monotonic()
    while True:
        response = infer(server, 0)
        if response.status_code == 200:
            break
        assert time.monotonic() - started < 2, response.text
    assert time.monotonic() - started < 2


def test_bad_input_is_a_400_and_the_server_stays_healthy(server: RunningServer) -> None:
    bad = httpx.post(
        f"{server.url}/v2/models/trouble/infer", content=b'{"inputs": [{"name": 3}]}', timeout=10
    )
    assert bad.status_code == 400
    assert "error" in bad.json()
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


def test_oversized_body_is_a_413_naming_the_limit(server: RunningServer) -> None:
    data = [0.0] * 50_000
    response = infer(server, 0, padding=data)
    assert response.status_code == 413
    assert "100000" in response.json()["error"]


def test_unknown_model_and_version_are_404(server: RunningServer) -> None:
    assert infer(server, 0).status_code == 200
    ghost = httpx.post(f"{server.url}/v2/models/ghost/infer", json={"inputs": []}, timeout=10)
    assert ghost.status_code == 404
    missing = httpx.post(
        f"{server.url}/v2/models/trouble/versions/9/infer", json={"inputs": []}, timeout=10
    )
    assert missing.status_code == 404


def test_grpc_message_over_the_limit_is_resource_exhausted(server: RunningServer) -> None:
    import grpc

    from shipyard.transports.grpc_v2 import inference_pb2 as pb
    from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc

    assert server.grpc_target is not None
    request = pb.ModelInferRequest(model_name="trouble")
    request.inputs.add(name="v", datatype="FP64", shape=[20_000])
    request.raw_input_contents.append(b"\x00" * 160_000)
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "100000" in str(refused.value.details())
        small = pb.ModelInferRequest(model_name="trouble")
        small.inputs.add(name="v", datatype="FP64", shape=[1]).contents.fp64_contents.append(0)
        assert stub.ModelInfer(small, timeout=10).outputs[0].contents.fp64_contents == [0]


def test_grpc_reflection_lists_the_service(server: RunningServer) -> None:
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    assert server.grpc_target is not None
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (answer,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in answer.list_services_response.service}
        assert "inference.GRPCInferenceService" in names


def test_data_plane_is_in_the_openapi_document(server: RunningServer) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for path in ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer",
                 "/invocations", "/v2/health/ready", "/api/models"):  # fmt: skip
        assert path in paths
