"""Bad input against a real server: always a 4xx with a JSON error naming what and where,
never a 5xx, and never the model's words, pydantic's input values or the server's paths."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from shipyard.errors import PayloadTooLarge
from shipyard.transports.grpc_v2 import inference_pb2 as pb
from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc
from shipyard.transports.http import check_declared_length
from tests import fixtures
from tests.server import RunningServer, running_shipyard

INFER = "/v2/models/model/infer"
HUGE_BUT_EMPTY = [[0, 10**12], [0, 2**62], [0, 2**63 - 1]]

PICKY_MODEL = '''
class Picky:
    """Refuses negative values (ValueError), fails on 7 (RuntimeError), else doubles."""

    def load(self):
        pass

    def predict(self, inputs):
        (values,) = inputs.values()
        if (values < 0).any():
            raise ValueError("negative values are refused, see /srv/secret/rules.txt")
        if (values == 7).any():
            raise RuntimeError("lost the ledger at /srv/secret/ledger.db")
        return values * 2
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("bad-input")
    model = fixtures.write_sklearn_model(tmp)
    with running_shipyard({"SHIPYARD_HOME": str(tmp / "home")}, "serve", str(model)) as running:
        yield running


@pytest.fixture(scope="module")
def picky(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("picky")
    (tmp / "picky.py").write_text(PICKY_MODEL)
    env = {"SHIPYARD_HOME": str(tmp / "home")}
    with running_shipyard(env, "serve", str(tmp / "picky.py")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def binary_request(values: list[list[float]], shape: list[int]) -> tuple[bytes, dict[str, str]]:
    """A V2 request whose one FP64 tensor travels in the binary tensor extension."""
    raw = np.asarray(values, dtype="<f8").tobytes()
    tensor = {"name": "input-0", "shape": shape, "datatype": "FP64",
              "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
    head = json.dumps({"inputs": [tensor]}).encode()
    return head + raw, {"inference-header-content-length": str(len(head))}


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert isinstance(message, str)
    return message


def grpc_infer(server: RunningServer, request: pb.ModelInferRequest) -> grpc.RpcError:
    assert server.grpc_target is not None
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=10)
    return refused.value


def wait_for_log(server: RunningServer, *needles: str) -> str:
    """The server log line holding every needle, polled until a deadline."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(server.log):
            if all(needle in line for needle in needles):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line with {needles}")


# ---- NaN and infinities: valid V2 values; a model that refuses them is refusing input ----


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_infinity_in_a_binary_tensor_is_a_400_naming_the_input(
    client: httpx.Client, value: float
) -> None:
    body, headers = binary_request([[value, 0.0, 0.0, 0.0]], [1, 4])
    message = error_of(client.post(INFER, content=body, headers=headers), 400)
    assert message.startswith(
        "model model:1 refused the input (ValueError; input 'input-0' holds NaN or infinite values)"
    )
    assert "LogisticRegression" not in message  # scikit-learn's words stay in the log
    fine, headers = binary_request([[0.5, 0.0, 0.0, 0.0]], [1, 4])
    assert client.post(INFER, content=fine, headers=headers).status_code == 200


def test_csv_infinity_on_invocations_is_a_400(client: httpx.Client) -> None:
    response = client.post(
        "/invocations", content=b"f0,f1,f2,f3\ninf,0,0,0\n", headers={"content-type": "text/csv"}
    )
    message = error_of(response, 400)
    assert message.startswith("model model:1 refused the input (ValueError; input 'input-0'")


def test_nan_over_grpc_is_invalid_argument_naming_the_input(server: RunningServer) -> None:
    request = pb.ModelInferRequest(model_name="model")
    tensor = request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4])
    tensor.contents.fp64_contents.extend([float("nan"), 0.0, 0.0, 0.0])
    refused = grpc_infer(server, request)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'input-0' holds NaN or infinite values" in str(refused.details())


# ---- zero-sized tensors with huge dimensions ----------------------------------------------


@pytest.mark.parametrize("shape", HUGE_BUT_EMPTY)
def test_empty_tensor_with_a_huge_dimension_is_a_400_over_rest_binary(
    client: httpx.Client, shape: list[int]
) -> None:
    body, headers = binary_request([], shape)
    message = error_of(client.post(INFER, content=body, headers=headers), 400)
    assert message == (
        f"input 'input-0': shape {shape} has a dimension over 67108864, the most elements a "
        "tensor may have"
    )


def test_a_tensor_with_too_many_dimensions_is_a_400(client: httpx.Client) -> None:
    body, headers = binary_request([], [0] * 65)  # numpy's own limit is 64
    message = error_of(client.post(INFER, content=body, headers=headers), 400)
    assert message == "input 'input-0': shape has 65 dimensions; at most 32"


@pytest.mark.parametrize("shape", HUGE_BUT_EMPTY)
@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_empty_tensor_with_a_huge_dimension_is_invalid_argument_over_grpc(
    server: RunningServer, shape: list[int], raw: bool
) -> None:
    request = pb.ModelInferRequest(model_name="model")
    request.inputs.add(name="input-0", datatype="FP64", shape=shape)
    if raw:
        request.raw_input_contents.append(b"")
    refused = grpc_infer(server, request)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.details() == (
        f"input 'input-0': shape {shape} has a dimension over 67108864, the most elements a "
        "tensor may have"
    )


# ---- numbers in headers and URLs: ASCII digits only ----------------------------------------


@pytest.mark.parametrize("value", [b"\xb2", b"9" * 5000], ids=["superscript-two", "5000-digits"])
def test_header_length_that_is_no_byte_count_is_a_400(client: httpx.Client, value: bytes) -> None:
    body, _ = binary_request([[0.5, 0.0, 0.0, 0.0]], [1, 4])
    response = client.post(INFER, content=body, headers={b"inference-header-content-length": value})
    assert error_of(response, 400) == (
        "Inference-Header-Content-Length must be a byte count: 1 to 18 ASCII digits"
    )


def test_content_length_that_is_no_byte_count_never_reaches_a_500(
    server: RunningServer,
) -> None:
    # uvicorn's parser refuses these before the app sees them; check_declared_length is
    # the app's own guard should it ever be given one.
    host, port = server.url.split("//")[1].split(":")
    for declared in (b"\xb2", b"9" * 5000):
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(b"POST /v2/models/model/infer HTTP/1.1\r\nhost: x\r\n"
                        b"content-length: " + declared + b"\r\n\r\n{}")  # fmt: skip
            assert raw.recv(64).startswith(b"HTTP/1.1 400 ")
    check_declared_length("\N{SUPERSCRIPT TWO}", 100)  # not a count: the reader counts
    with pytest.raises(PayloadTooLarge, match="a 5000-digit number of bytes; the limit is 100"):
        check_declared_length("9" * 5000, 100)


@pytest.mark.parametrize("version", ["%C2%B2", "9" * 5000], ids=["superscript-two", "5000-digits"])
def test_version_that_is_no_number_is_a_400(client: httpx.Client, version: str) -> None:
    response = client.post(f"/v2/models/model/versions/{version}/infer", json={"inputs": []})
    message = error_of(response, 400)
    assert message.startswith("invalid ")


def test_version_that_is_no_number_is_invalid_argument_over_grpc(server: RunningServer) -> None:
    request = pb.ModelInferRequest(model_name="model", model_version="\N{SUPERSCRIPT TWO}")
    request.inputs.add(name="input-0", datatype="FP64", shape=[1, 4]).contents.fp64_contents.extend(
        [0.0] * 4
    )
    assert grpc_infer(server, request).code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- what a model says stays in the server log ----------------------------------------------


def picky_infer(picky: RunningServer, value: float) -> httpx.Response:
    body = {"inputs": [{"name": "v", "shape": [1], "datatype": "FP64", "data": [value]}]}
    return httpx.post(f"{picky.url}/v2/models/picky/infer", json=body, timeout=30)


def test_model_refusing_its_input_is_a_400_and_its_words_go_to_the_log(
    picky: RunningServer,
) -> None:
    response = picky_infer(picky, -1)
    assert response.headers["x-shipyard-model-version"] == "picky:1"
    assert error_of(response, 400) == (
        "model picky:1 refused the input (ValueError); the server log has the model's "
        "message under this request's x-request-id"
    )
    assert "/srv/secret" not in response.text
    request_id = response.headers["x-request-id"]
    wait_for_log(picky, request_id, "negative values are refused, see /srv/secret/rules.txt")
    assert picky_infer(picky, 1).json()["outputs"][0]["data"] == [2.0]


def test_model_failing_is_a_500_without_its_words(picky: RunningServer) -> None:
    response = picky_infer(picky, 7)
    assert error_of(response, 500) == (
        "model picky:1 failed (RuntimeError); the server log has the model's message under "
        "this request's x-request-id"
    )
    # Which version failed, as on a 200: what tells a canary's 500s from the stable's.
    assert response.headers["x-shipyard-model-version"] == "picky:1"
    wait_for_log(picky, response.headers["x-request-id"], "lost the ledger at /srv/secret")


# ---- registration: no pydantic input values, no server paths --------------------------------


def register(client: httpx.Client, name: str, content: bytes, **form: str) -> httpx.Response:
    return client.post(
        f"/api/models/{name}/versions", files={"artifact": (name, content)}, data=form
    )


def test_invalid_registration_options_name_where_not_the_values(client: httpx.Client) -> None:
    key = "secret-" + "k" * 500
    options = json.dumps({"tags": {key: 4242424242}})  # a tag's value must be a string
    message = error_of(register(client, "m.joblib", b"x", options=options), 400)
    assert message == f"invalid options: tags.{key[:40]}: Input should be a valid string"
    assert "4242424242" not in message and "input_value" not in message
    assert key not in message  # the caller's own key, cut short
    assert error_of(register(client, "m.joblib", b"x", options="[1]"), 400) == (
        "invalid options: a JSON object is needed"
    )


def test_unsupported_upload_does_not_name_the_servers_scratch_folder(
    client: httpx.Client,
) -> None:
    message = error_of(register(client, "notes.txt", b"meeting notes\n"), 400)
    assert message.startswith("notes.txt is not a model Shipyard can register")
    assert "shipyard-upload-" not in message


def test_an_uploaded_folder_is_named_as_the_users_folder(client: httpx.Client) -> None:
    """A folder travels as NAME.tar; what is said about it names NAME (issue 22: the
    server said "model is not a model", its own scratch name)."""
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        broken = tarfile.TarInfo("./MLmodel")
        broken.size = 9
        tar.addfile(broken, io.BytesIO(b"flavors: ["))
    message = error_of(register(client, "churn-model.tar", archive.getvalue(), folder="true"), 400)
    assert message.startswith("churn-model is not a model Shipyard can register"), message
    assert "tried mlflow: MLmodel" in message
    assert "shipyard-upload-" not in message and "/tmp" not in message


def test_refused_tar_member_does_not_name_the_servers_scratch_folder(
    client: httpx.Client,
) -> None:
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        escaping = tarfile.TarInfo("../escape.txt")
        escaping.size = 2
        tar.addfile(escaping, io.BytesIO(b"hi"))
    message = error_of(register(client, "model.tar", archive.getvalue(), folder="true"), 400)
    assert message == "artifact member '../escape.txt' is refused (OutsideDestinationError)"


def test_the_server_is_healthy_after_all_that(client: httpx.Client, server: RunningServer) -> None:
    rows, _ = fixtures.training_data(rows=2)
    body, headers = binary_request(rows.tolist(), [2, 4])
    assert client.post(INFER, content=body, headers=headers).status_code == 200
    assert "Traceback" not in "".join(server.log)


BROKEN_MODEL = """
class Broken:
    def load(self):
        raise ValueError("cannot open /srv/secret/weights.bin")

    def predict(self, inputs):
        return inputs
"""


def test_a_model_that_fails_to_load_says_so_without_its_words(tmp_path: Path) -> None:
    from shipyard.config import Settings
    from shipyard.registry.records import RegistrationOptions
    from shipyard.registry.service import Registry
    from tests.server import running_server

    (tmp_path / "broken.py").write_text(BROKEN_MODEL)
    home = tmp_path / "home"
    registry = Registry.open(Settings(home=home))
    try:
        registry.register(tmp_path / "broken.py", RegistrationOptions(name="broken"))
    finally:
        registry.close()
    with running_server({"SHIPYARD_HOME": str(home)}) as running:
        with httpx.Client(base_url=running.url, timeout=60) as http:
            answer = http.post("/v2/models/broken/infer", json={"inputs": [
                {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]})  # fmt: skip
            index = http.post("/v2/repository/index").json()
        assert answer.status_code == 503
        assert answer.json()["error"] == (
            "broken:1 is not available: broken:1 failed to load (ValueError; see the server log)"
        )
        assert [entry["reason"] for entry in index] == [
            "broken:1 failed to load (ValueError; see the server log)"
        ]
        assert "/srv/secret/weights.bin" in "".join(running.log)  # the operator still sees it
