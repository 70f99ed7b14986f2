"""Model signatures: the named, typed, shaped tensors a model takes and gives.

Datatypes use the Open Inference Protocol (KServe V2) names so one vocabulary
serves the registry, the protocols and signature enforcement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]

_NUMPY_TO_DATATYPE: dict[str, Datatype] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}


# Keyed by Arrow's type names; avoids DataType.to_pandas_dtype, which needs pandas.
_ARROW_TO_DATATYPE: dict[str, Datatype] = {
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "halffloat": "FP16",
    "float": "FP32",
    "double": "FP64",
}


class TensorSpec(BaseModel):
    """One input or output: its name, V2 datatype and shape (-1 = any size)."""

    name: str
    datatype: Datatype
    shape: list[int] = Field(default_factory=lambda: [-1])


class Signature(BaseModel):
    """What a model version accepts and returns."""

    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)


def datatype_from_numpy(dtype: np.dtype[np.generic] | str | type) -> Datatype:
    """Map a numpy dtype to its V2 datatype; strings and objects are BYTES."""
    name = np.dtype(dtype).name
    if name in _NUMPY_TO_DATATYPE:
        return _NUMPY_TO_DATATYPE[name]
    return "BYTES"


def datatype_from_arrow(arrow_type: pa.DataType) -> Datatype:
    """Map an Arrow type (as read from CSV or Parquet) to its V2 datatype."""
    if pa.types.is_dictionary(arrow_type):
        return datatype_from_arrow(arrow_type.value_type)
    if pa.types.is_boolean(arrow_type):
        return "BOOL"
    return _ARROW_TO_DATATYPE.get(str(arrow_type), "BYTES")


def inputs_from_table(table: pa.Table) -> list[TensorSpec]:
    """One column-shaped input per column of an example table."""
    return [
        TensorSpec(name=field.name, datatype=datatype_from_arrow(field.type), shape=[-1])
        for field in table.schema
    ]


NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}
"""The numpy dtype each V2 datatype decodes to (BYTES: objects holding str or bytes)."""


def describe(spec: TensorSpec) -> str:
    """`FP64 [-1, 4]`: how error messages name what a model expects."""
    return f"{spec.datatype} {spec.shape}"


DEFAULT_INPUT = "input-0"
"""The name of a model's one matrix input when nothing names its features."""


def matrix_input(signature: Signature | None) -> str | None:
    """The input that takes all feature columns stacked, or None: each column is an input.

    A signature with one 2-D input names it; without a signature, or with one that
    lists no inputs, the model takes one matrix named DEFAULT_INPUT.
    """
    if signature is None or not signature.inputs:
        return DEFAULT_INPUT
    if len(signature.inputs) == 1 and len(signature.inputs[0].shape) == 2:
        return signature.inputs[0].name
    return None


def columns_to_inputs(
    columns: Mapping[str, np.ndarray], signature: Signature | None, rows: int | None = None
) -> dict[str, np.ndarray]:
    """A model's inputs from named 1-D columns (a table's, a reference sample's).

    One input per column when the signature names its inputs and every one is a
    column (extra columns are left out); otherwise all columns, in order, stacked
    into the single input (`matrix_input`, or the signature's only input). `rows`
    sizes the stack when there are no columns. KeyError names the first input no
    column feeds when the signature has several.
    """
    name = matrix_input(signature)
    if name is None:
        names = [spec.name for spec in signature.inputs] if signature is not None else []
        missing = [n for n in names if n not in columns]
        if not missing:
            return {n: columns[n] for n in names}
        if len(names) > 1:
            raise KeyError(missing[0])
        name = names[0]
    if not columns and rows is not None:
        return {name: np.empty((rows, 0))}
    return {name: np.column_stack(list(columns.values()))}
