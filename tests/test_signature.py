"""Datatype mapping from the example files' Arrow types and from numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from shipyard.signature import datatype_from_arrow, datatype_from_numpy


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
