"""Every body `mlflow models serve` accepts becomes the same tensors."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from shipyard.errors import InvalidInput
from shipyard.serving.types import Tensor
from shipyard.signature import Signature, TensorSpec
from shipyard.transports.mlflow_protocol import (
    encode_predictions,
    parse_csv,
    parse_json,
    to_request,
)

COLUMNS = Signature(
    inputs=[
        TensorSpec(name="a", datatype="FP32", shape=[-1]),
        TensorSpec(name="b", datatype="INT64", shape=[-1]),
    ]
)
MATRIX = Signature(inputs=[TensorSpec(name="x", datatype="FP64", shape=[-1, 2])])
ROWS = [[1.5, 2], [3.5, 4]]


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_split": {"columns": ["a", "b"], "data": ROWS}},
        {"dataframe_records": [{"a": 1.5, "b": 2}, {"a": 3.5, "b": 4}]},
        {"instances": [{"a": 1.5, "b": 2}, {"a": 3.5, "b": 4}]},
        {"inputs": {"a": [1.5, 3.5], "b": [2, 4]}},
        {"instances": ROWS},
    ],
)
def test_json_formats_agree_for_column_models(body: dict) -> None:
    tensors = parse_json(orjson.dumps(body), COLUMNS)
    np.testing.assert_array_equal(tensors["a"], [1.5, 3.5])
    np.testing.assert_array_equal(tensors["b"], [2, 4])
    request = to_request(tensors, COLUMNS)
    assert [(t.name, t.datatype) for t in request.inputs] == [("a", "FP32"), ("b", "INT64")]


def test_csv_body() -> None:
    tensors = parse_csv(b"a,b\n1.5,2\n3.5,4\n", COLUMNS)
    np.testing.assert_array_equal(tensors["b"], [2, 4])


def test_matrix_models_take_rows() -> None:
    for body in ({"instances": ROWS}, {"dataframe_split": {"columns": ["p", "q"], "data": ROWS}}):
        tensors = parse_json(orjson.dumps(body), MATRIX)
        np.testing.assert_array_equal(tensors["x"], ROWS)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{}", "exactly one of"),
        (b'{"instances": [], "inputs": []}', "exactly one of"),
        (b'{"dataframe_split": {"columns": ["a"]}}', "needs 'data'"),
        (b'{"dataframe_split": {"columns": ["a", "b"], "data": [[1]]}}', "list of 2 values"),
        (b'{"dataframe_records": [{"a": 1}, {"b": 2}]}', "different fields"),
        (b"[1, 2", "not valid JSON"),
    ],
)
def test_bad_bodies(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_json(raw, COLUMNS)


def test_predictions_are_shaped_like_mlflow() -> None:
    single = [Tensor("predict", "INT64", np.array([1, 0])), Tensor("p", "FP64", np.ones((2, 2)))]
    assert orjson.loads(encode_predictions(single)) == {"predictions": [1, 0]}
    several = [Tensor("a", "FP64", np.array([0.5])), Tensor("b", "BYTES", np.array(["x"], object))]
    assert orjson.loads(encode_predictions(several)) == {"predictions": [{"a": 0.5, "b": "x"}]}
