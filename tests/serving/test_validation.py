"""Signature enforcement before a request reaches a model."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.errors import InvalidInput
from shipyard.serving.types import Tensor
from shipyard.serving.validation import conform
from shipyard.signature import Signature, TensorSpec

MATRIX = Signature(inputs=[TensorSpec(name="input-0", datatype="FP64", shape=[-1, 4])])
COLUMNS = Signature(
    inputs=[
        TensorSpec(name="age", datatype="INT64", shape=[-1]),
        TensorSpec(name="income", datatype="FP64", shape=[-1]),
    ]
)


def tensor(name: str, datatype: str, data: list, dtype: str) -> Tensor:
    return Tensor(name, datatype, np.array(data, dtype=dtype))


def test_safe_cast_is_applied() -> None:
    result = conform([tensor("input-0", "INT32", [[1, 2, 3, 4]], "int32")], MATRIX)
    assert result["input-0"].dtype == np.float64


def test_lossy_cast_is_refused() -> None:
    signature = Signature(inputs=[TensorSpec(name="x", datatype="INT8", shape=[-1])])
    with pytest.raises(InvalidInput, match="input 'x': expected INT8, got FP64"):
        conform([tensor("x", "FP64", [1.0], "float64")], signature)


def test_wrong_shape_names_expected_and_given() -> None:
    with pytest.raises(InvalidInput, match=r"expected shape \[-1, 4\], got \[1, 3\]"):
        conform([tensor("input-0", "FP64", [[1, 2, 3]], "float64")], MATRIX)


def test_missing_and_extra_inputs() -> None:
    with pytest.raises(InvalidInput, match=r"missing input 'income' \(expected FP64 \[-1\]\)"):
        conform([tensor("age", "INT64", [1], "int64")], COLUMNS)
    with pytest.raises(InvalidInput, match="unexpected input 'zip'"):
        conform(
            [
                tensor("age", "INT64", [1], "int64"),
                tensor("income", "FP64", [1.0], "float64"),
                tensor("zip", "INT64", [1], "int64"),
            ],
            COLUMNS,
        )


def test_columns_must_agree_on_rows() -> None:
    with pytest.raises(InvalidInput, match="disagree on the number of rows"):
        conform(
            [tensor("age", "INT64", [1, 2], "int64"), tensor("income", "FP64", [1.0], "float64")],
            COLUMNS,
        )


def test_one_column_as_n_by_1_is_accepted() -> None:
    result = conform(
        [
            tensor("age", "INT64", [[1], [2]], "int64"),
            tensor("income", "FP64", [1.0, 2], "float64"),
        ],
        COLUMNS,
    )
    assert result["age"].shape == (2,)


def test_no_signature_passes_through() -> None:
    given = [tensor("anything", "FP32", [1.0], "float32")]
    assert list(conform(given, None)) == ["anything"]


def test_empty_tensors_never_reach_the_model() -> None:
    with pytest.raises(InvalidInput, match="input 'input-0' is empty"):
        conform([Tensor("input-0", "FP64", np.zeros((0, 4)))], MATRIX)
