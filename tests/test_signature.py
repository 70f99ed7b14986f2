"""Datatype mapping from the example files' Arrow types and from numpy; columns as inputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shipyard.signature import (
    DEFAULT_INPUT,
    Signature,
    TensorSpec,
    columns_to_inputs,
    datatype_from_arrow,
    datatype_from_numpy,
)


@pytest.mark.parametrize(
    ("arrow_type", "expected"),
    [
        (pa.bool_(), "BOOL"),
        (pa.int8(), "INT8"),
        (pa.int64(), "INT64"),
        (pa.uint32(), "UINT32"),
        (pa.float16(), "FP16"),
        (pa.float32(), "FP32"),
        (pa.float64(), "FP64"),
        (pa.string(), "BYTES"),
        (pa.timestamp("s"), "BYTES"),
        (pa.dictionary(pa.int32(), pa.string()), "BYTES"),
    ],
)
def test_arrow_types(arrow_type: pa.DataType, expected: str) -> None:
    assert datatype_from_arrow(arrow_type) == expected


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(np.float32, "FP32"), (np.int64, "INT64"), (np.bool_, "BOOL"), (np.str_, "BYTES")],
)
def test_numpy_types(dtype: type, expected: str) -> None:
    assert datatype_from_numpy(dtype) == expected


COLUMNS = {"a": np.array([1.0, 2.0]), "b": np.array([3.0, 4.0]), "c": np.array([5.0, 6.0])}
STACKED = np.array([[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]])


def _inputs(*specs: tuple[str, list[int]]) -> Signature:
    return Signature(inputs=[TensorSpec(name=n, datatype="FP64", shape=s) for n, s in specs])


@pytest.mark.parametrize(
    ("signature", "expected"),
    [
        (None, {DEFAULT_INPUT: STACKED}),
        (Signature(), {DEFAULT_INPUT: STACKED}),
        (_inputs(("x", [-1, 3])), {"x": STACKED}),
        (_inputs(("a", [-1, 3])), {"a": STACKED}),  # a matrix input takes every column
        (_inputs(("c", [-1]), ("a", [-1])), {"c": np.array([5.0, 6.0]), "a": np.array([1.0, 2.0])}),
        (_inputs(("b", [-1])), {"b": np.array([3.0, 4.0])}),
        (_inputs(("x", [-1])), {"x": STACKED}),  # one input no column names
    ],
)
def test_columns_to_inputs(signature: Signature | None, expected: dict[str, np.ndarray]) -> None:
    inputs = columns_to_inputs(COLUMNS, signature)
    assert list(inputs) == list(expected)
    for name, array in expected.items():
        np.testing.assert_array_equal(inputs[name], array)
        assert inputs[name].shape == array.shape


def test_columns_to_inputs_without_columns_or_with_one_missing() -> None:
    empty = columns_to_inputs({}, None, rows=3)[DEFAULT_INPUT]
    assert empty.shape == (3, 0)
    with pytest.raises(KeyError, match="z"):
        columns_to_inputs(COLUMNS, _inputs(("a", [-1]), ("z", [-1])))
