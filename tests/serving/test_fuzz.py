"""Property-based fuzzing of the infer endpoints of a real server (JSON, the binary tensor
extension and gRPC): whatever arrives, the answer is never a 5xx and never a hang, and the
server stays healthy."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from shipyard.signature import NUMPY_DTYPES
from shipyard.transports.grpc_v2 import inference_pb2 as pb
from shipyard.transports.grpc_v2 import inference_pb2_grpc as pb_grpc
from tests import fixtures
from tests.server import RunningServer, running_shipyard


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()  # stdlib: it writes integers of any size


DATATYPES = ["BOOL", "INT8", "INT32", "INT64", "UINT8", "FP16", "FP32", "FP64", "BYTES", "FP9"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
shapes = st.lists(st.integers(min_value=-2, max_value=1 << 40), max_size=4)
tensors = st.fixed_dictionaries(
    {
        "name": st.one_of(st.just("input-0"), st.text(max_size=10)),
        "datatype": st.sampled_from(DATATYPES),
        "shape": st.one_of(shapes, st.just([2, 4]), st.just([0, 4]), json_values),
        "data": st.one_of(
            json_values,
            st.lists(st.floats(allow_nan=False, width=64), min_size=8, max_size=8),
            st.lists(st.lists(st.integers(-(1 << 70), 1 << 70), min_size=4, max_size=4)),
        ),
    },
    optional={"parameters": json_values},
)
bodies = st.one_of(
    st.fixed_dictionaries(
        {"inputs": st.lists(tensors, max_size=3)},
        optional={"outputs": json_values, "parameters": json_values, "id": json_values},
    ).map(dumps),
    json_values.map(dumps),
    st.binary(max_size=200),
    st.sampled_from([b'{"inputs": [{"data": NaN}]}', b"\xff\xfe", b"", b"{" * 10_000]),
)


# ---- the binary tensor extension: a JSON header, then raw tensor bytes -----------------------

HUGE_DIMS = [10**12, 2**62, 2**63 - 1, 2**64]
binary_shapes = st.one_of(
    st.just([1, 4]),
    st.just([2, 4]),
    st.lists(
        st.one_of(st.integers(0, 4), st.sampled_from([0, *HUGE_DIMS]), st.just(-1)), max_size=4
    ),
    st.lists(st.just(0), min_size=30, max_size=70),  # zero-sized, too many dimensions
)
NON_FINITE = [float("nan"), float("inf"), float("-inf")]


@st.composite
def tensor_bytes(draw: st.DrawFn, datatype: str, shape: list[int]) -> bytes:
    """Bytes that fit the shape (numeric arrays with NaN and infinities), or any bytes."""
    small = all(0 <= d <= 4 for d in shape) and len(shape) <= 4
    if draw(st.booleans()) and small and datatype in NUMPY_DTYPES and datatype != "BYTES":
        dtype = NUMPY_DTYPES[datatype]
        array = draw(hnp.arrays(dtype, tuple(shape)))
        if dtype.kind == "f" and array.size and draw(st.booleans()):
            array.flat[0] = draw(st.sampled_from(NON_FINITE))
        return bytes(array.tobytes())
    return draw(st.binary(max_size=64))


@st.composite
def binary_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A binary-extension body and its Inference-Header-Content-Length header."""
    tensors, chunks = [], []
    for _ in range(draw(st.integers(1, 3))):
        datatype = draw(st.sampled_from([*DATATYPES, "UINT64", "INT16", ""]))
        shape = draw(binary_shapes)
        chunk = draw(tensor_bytes(datatype, shape))
        size = draw(
            st.one_of(st.just(len(chunk)), st.integers(-2, 80), st.none(), st.text(max_size=2))
        )
        tensor = {
            "name": draw(st.sampled_from(["input-0", "x", ""])),
            "datatype": datatype,
            "shape": shape,
            "parameters": {} if size is None else {"binary_data_size": size},
        }
        tensors.append(tensor)
        chunks.append(chunk)
    document: dict[str, object] = {"inputs": tensors}
    if draw(st.booleans()):
        output = draw(st.sampled_from(["predict", "predict_proba", "?"]))
        document["outputs"] = [{"name": output, "parameters": {"binary_data": draw(st.booleans())}}]
    if draw(st.booleans()):
        document["parameters"] = {"binary_data_output": draw(st.booleans())}
    head = dumps(document)
    body = head + b"".join(chunks)
    header = draw(
        st.one_of(
            st.just(str(len(head)).encode()),
            st.integers(-5, len(body) + 5).map(lambda n: str(n).encode()),
            st.sampled_from([b"\xb2", b"9" * 5000, b"", b"0x10", "\u0661\u0662".encode(), b"1e3"]),
        )
    )
    return body, header


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("fuzz")
    model = fixtures.write_sklearn_model(tmp)
    with running_shipyard({"SHIPYARD_HOME": str(tmp / "home")}, "serve", str(model)) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, binary_header=st.one_of(st.none(), st.integers(-5, 300).map(str)))
def test_infer_never_5xx(client: httpx.Client, body: bytes, binary_header: str | None) -> None:
    headers = {"Inference-Header-Content-Length": binary_header} if binary_header else {}
    for path in ("/v2/models/model/infer", "/v2/models/model/versions/1/infer"):
        response = client.post(path, content=body, headers=headers)
        assert response.status_code < 500, (response.status_code, response.text)
        if response.status_code >= 400:
            assert "error" in response.json()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies)
def test_invocations_never_5xx(client: httpx.Client, body: bytes) -> None:
    response = client.post(
        "/invocations", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code < 500, (response.status_code, response.text)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=binary_bodies())
def test_binary_extension_never_5xx(client: httpx.Client, request: tuple[bytes, bytes]) -> None:
    body, header = request
    response = client.post(
        "/v2/models/model/infer",
        content=body,
        headers={b"inference-header-content-length": header},
    )
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert "error" in response.json()


# ---- gRPC ModelInfer: typed contents or raw_input_contents ------------------------------------

CONTENTS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32),  # NaN and infinities included
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=8),
}
grpc_shapes = st.one_of(
    st.just([1, 4]),
    st.just([2, 4]),
    st.lists(
        st.one_of(st.integers(-2, 4), st.sampled_from([*HUGE_DIMS[:3], -(2**63)])), max_size=4
    ),
    st.lists(st.just(0), min_size=30, max_size=70),
)
# What a 4xx becomes over gRPC (servicer.STATUS_CODES); a 5xx would be INTERNAL,
# UNAVAILABLE, DEADLINE_EXCEEDED, UNIMPLEMENTED or UNKNOWN.
GRPC_4XX = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
}


@st.composite
def grpc_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=draw(st.sampled_from(["model", "ghost"])),
        model_version=draw(st.sampled_from(["", "1", "7", "\u00b2", "9" * 30, "latest", "-1"])),
        id=draw(st.text(max_size=5)),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        datatype = draw(st.sampled_from([*DATATYPES, "UINT64", "INT16", ""]))
        shape = draw(grpc_shapes)
        name = draw(st.sampled_from(["input-0", "x", ""]))
        tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
        if raw:
            request.raw_input_contents.append(draw(tensor_bytes(datatype, shape)))
            continue
        field = draw(st.sampled_from(sorted(CONTENTS)))
        count = math.prod(shape) if 0 <= math.prod(shape) <= 16 and draw(st.booleans()) else None
        values = draw(st.lists(CONTENTS[field], min_size=count or 0, max_size=count or 16))
        getattr(tensor.contents, field).extend(values)
    if raw and draw(st.booleans()):
        request.raw_input_contents.append(draw(st.binary(max_size=16)))  # one too many
    if draw(st.booleans()):
        output = request.outputs.add(name=draw(st.sampled_from(["predict", "predict_proba", "?"])))
        output.parameters["binary_data"].bool_param = draw(st.booleans())
    return request


@pytest.fixture(scope="module")
def grpc_stub(server: RunningServer) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    assert server.grpc_target is not None
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=grpc_requests())
def test_grpc_model_infer_never_5xx(
    grpc_stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest
) -> None:
    try:
        grpc_stub.ModelInfer(request, timeout=10)
    except grpc.RpcError as refused:
        assert refused.code() in GRPC_4XX, (refused.code(), refused.details())


# ---- MLflow /invocations: its four JSON layouts and CSV ------------------------------------

columns = st.sampled_from(["f0", "f1", "f2", "f3", "a", ""])
mlflow_json = st.one_of(
    st.fixed_dictionaries(
        {
            "dataframe_split": st.fixed_dictionaries(
                {"data": json_values}, optional={"columns": json_values}
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "dataframe_split": st.fixed_dictionaries(
                {
                    "columns": st.just(fixtures.FEATURES),
                    "data": st.lists(st.lists(json_values, min_size=4, max_size=4), max_size=3),
                }
            )
        }
    ),
    st.fixed_dictionaries({"dataframe_records": json_values}),
    st.fixed_dictionaries({"dataframe_records": st.lists(st.dictionaries(columns, json_values))}),
    st.fixed_dictionaries({"instances": json_values}),
    st.fixed_dictionaries(
        {"inputs": st.one_of(json_values, st.dictionaries(columns, json_values))}
    ),
)
csv_cells = st.one_of(
    st.sampled_from(
        ["inf", "-inf", "nan", "", "1e400", "true", "2024-01-01", "a", '"x"', "\u00b2"]
    ),
    st.floats().map(str),
)
csv_bodies = st.builds(
    lambda header, rows: "\n".join([",".join(header), *(",".join(r) for r in rows), ""]).encode(),
    st.lists(columns, max_size=6),
    st.lists(st.lists(csv_cells, max_size=6), max_size=4),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sent=st.one_of(
        mlflow_json.map(lambda document: (dumps(document), "application/json")),
        csv_bodies.map(lambda body: (body, "text/csv")),
    )
)
def test_mlflow_layouts_never_5xx(client: httpx.Client, sent: tuple[bytes, str]) -> None:
    body, content_type = sent
    response = client.post("/invocations", content=body, headers={"content-type": content_type})
    assert response.status_code < 500, (response.status_code, response.text)


def test_server_is_healthy_after_fuzzing(client: httpx.Client, tmp_path: Path) -> None:
    rows, _ = fixtures.training_data(rows=2)
    tensor = {"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": rows.tolist()}
    body = {"inputs": [tensor], "outputs": [{"name": "predict_proba"}]}
    response = client.post("/v2/models/model/infer", json=body)
    assert response.status_code == 200
    assert all(math.isfinite(x) for x in response.json()["outputs"][0]["data"])
