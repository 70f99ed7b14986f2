"""V2 REST codec: JSON and binary tensors in, JSON and binary tensors out."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest

from shipyard.errors import InvalidInput, PayloadTooLarge
from shipyard.serving.types import InferResponse, RequestedOutput, Tensor
from shipyard.transports.codec import decode_request, encode_response


def body(*inputs: dict, **extra: object) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


@pytest.mark.parametrize(
    ("datatype", "data", "dtype"),
    [
        ("BOOL", [True, False], np.bool_),
        ("INT8", [-3, 4], np.int8),
        ("UINT64", [1, 2], np.uint64),
        ("INT32", [7, 8], np.int32),
        ("FP16", [0.5, 1.5], np.float16),
        ("FP32", [0.5, 1], np.float32),
        ("FP64", [0.25, 2], np.float64),
        ("BYTES", ["a", "ü"], np.object_),
    ],
)
def test_every_datatype_decodes(datatype: str, data: list, dtype: type) -> None:
    request = decode_request(body({"name": "x", "shape": [2], "datatype": datatype, "data": data}))
    array = request.inputs[0].data
    assert array.dtype == np.dtype(dtype)
    assert array.tolist() == data


def test_nested_data_and_request_fields() -> None:
    request = decode_request(
        body(
            {"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [[1, 2], [3, 4]]},
            id="r-1",
            parameters={"timeout": 2},
            outputs=[{"name": "predict", "parameters": {"binary_data": True}}],
        )
    )
    assert request.id == "r-1"
    assert request.parameters == {"timeout": 2}
    assert request.outputs == [RequestedOutput("predict", True)]
    np.testing.assert_array_equal(request.inputs[0].data, [[1, 2], [3, 4]])


def test_binary_inputs_are_views_of_the_body() -> None:
    matrix = np.arange(6, dtype=np.float32).reshape(2, 3)
    words = [b"hi", b"there"]
    packed = b"".join(struct.pack("<I", len(w)) + w for w in words)
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "m", "shape": [2, 3], "datatype": "FP32",
                 "parameters": {"binary_data_size": matrix.nbytes}},
                {"name": "w", "shape": [2], "datatype": "BYTES",
                 "parameters": {"binary_data_size": len(packed)}},
            ]
        }
    )  # fmt: skip
    request = decode_request(head + matrix.tobytes() + packed, len(head))
    np.testing.assert_array_equal(request.inputs[0].data, matrix)
    assert request.inputs[1].data.tolist() == words


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"inputs": []}', "non-empty list"),
        (body({"name": "x", "shape": [3], "datatype": "FP64", "data": [1, 2]}), "needs 3"),
        (body({"name": "x", "shape": [2], "datatype": "FP9", "data": [1, 2]}), "unknown datatype"),
        (body({"name": "x", "shape": [-1], "datatype": "FP64", "data": [1]}), "non-negative"),
        (body({"name": "x", "shape": [2], "datatype": "INT64", "data": [1.5, 2]}),
         "holds decimal numbers where INT64 needs whole numbers"),
        (body({"name": "x", "shape": [2], "datatype": "FP64", "data": ["a", "b"]}),
         "input 'x': 'data' holds text where FP64 needs decimal numbers"),
        (body({"name": "x", "shape": [2], "data": [1, 2]}), "input 'x' has no datatype"),
        (b'{"dataframe_split": {"columns": ["a"], "data": [[1]]}}',
         "'dataframe_split' is MLflow's format: send it to /invocations"),
        (b'{"inputs": {"a": [1, 2]}}', "'inputs' is MLflow's format: send it to /invocations"),
        (b'{"inputs": [[1, 2], [3, 4]]}', "MLflow's 'inputs' format: send them to /invocations"),
        (body({"name": "x", "shape": [1], "datatype": "UINT8", "data": [300]}), "do not fit"),
        (body({"name": "x", "shape": [2], "datatype": "BOOL", "data": [1, 0]}),
         "holds whole numbers where BOOL needs true/false values"),
        (body({"name": "x", "shape": [2], "datatype": "FP64", "data": [[1], [2, 3]]}), "regular"),
        (body({"name": "x", "shape": [1], "datatype": "FP64"}), "needs 'data'"),
        (body({"name": "", "shape": [1], "datatype": "FP64", "data": [1]}), "'name'"),
    ],
)  # fmt: skip
def test_bad_requests_say_what_and_where(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_request(raw)


def test_huge_dims_are_refused_before_allocating() -> None:
    raw = body({"name": "x", "shape": [1 << 30, 1 << 30], "datatype": "FP64", "data": [1]})
    with pytest.raises(PayloadTooLarge, match="more than"):
        decode_request(raw)


def test_errors_do_not_echo_the_payload() -> None:
    secret = "s3cr3t-" * 50
    raw = body({"name": "x", "shape": [1], "datatype": "FP64", "data": [secret]})
    with pytest.raises(InvalidInput) as refused:
        decode_request(raw)
    assert "s3cr3t" not in str(refused.value)


def test_binary_size_mismatch_is_refused() -> None:
    head = orjson.dumps(
        {"inputs": [{"name": "m", "shape": [2], "datatype": "FP64",
                     "parameters": {"binary_data_size": 8}}]}
    )  # fmt: skip
    with pytest.raises(InvalidInput, match="needs 16"):
        decode_request(head + b"\x00" * 8, len(head))


def test_encode_json_and_binary_outputs() -> None:
    proba = np.array([[0.25, 0.75]])
    response = InferResponse(
        "m", "3",
        [Tensor("predict", "INT64", np.array([1])), Tensor("proba", "FP64", proba)],
        id="r",
    )  # fmt: skip
    plain, header = encode_response(response, decode_request(body(
        {"name": "x", "shape": [1], "datatype": "FP64", "data": [1]})))  # fmt: skip
    assert header is None
    assert orjson.loads(plain) == {
        "model_name": "m",
        "model_version": "3",
        "id": "r",
        "outputs": [
            {"name": "predict", "datatype": "INT64", "shape": [1], "data": [1]},
            {"name": "proba", "datatype": "FP64", "shape": [1, 2], "data": [0.25, 0.75]},
        ],
    }
    request = decode_request(
        body(
            {"name": "x", "shape": [1], "datatype": "FP64", "data": [1]},
            outputs=[{"name": "proba", "parameters": {"binary_data": True}}, {"name": "predict"}],
        )
    )
    mixed, header = encode_response(response, request)
    assert header is not None
    head = orjson.loads(mixed[:header])
    assert head["outputs"][1]["parameters"] == {"binary_data_size": 16}
    np.testing.assert_array_equal(np.frombuffer(mixed[header:], dtype=np.float64), [0.25, 0.75])


def test_float_overflow_is_refused() -> None:
    raw = body({"name": "x", "shape": [1], "datatype": "FP16", "data": [1e10]})
    with pytest.raises(InvalidInput, match="do not fit FP16"):
        decode_request(raw)
