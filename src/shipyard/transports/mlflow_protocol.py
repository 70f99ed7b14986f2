"""The MLflow scoring protocol (`POST /invocations`), so MLflow clients work unchanged.

Accepts `dataframe_split`, `dataframe_records`, `instances`, `inputs` and text/csv;
answers `{"predictions": ...}` the way `mlflow models serve` does.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv

from shipyard.errors import InvalidInput
from shipyard.runtimes.base import Tensors
from shipyard.serving.types import InferRequest, RequestedOutput, Tensor
from shipyard.serving.validation import out_of_range
from shipyard.signature import (
    DEFAULT_INPUT,
    NUMPY_DTYPES,
    Signature,
    datatype_from_numpy,
    matrix_input,
)

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_ROW_ECHO = re.compile(r"(Expected \d+ columns?, got \d+): .*", re.DOTALL)
"""pyarrow quotes the offending CSV row after this; the caller has the row already."""


def _array(values: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{where} is not a regular array") from None
    if array.dtype.kind == "U":
        array = array.astype(object)
    return array


def _columns_to_tensors(
    columns: list[str], rows: list[Any], signature: Signature | None
) -> Tensors:
    if not rows:
        raise InvalidInput("no rows to score")
    if any(not isinstance(row, list) or len(row) != len(columns) for row in rows):
        raise InvalidInput(f"every row of 'data' must be a list of {len(columns)} values")
    # The layout signature.columns_to_inputs gives, but the matrix is built from the rows
    # as sent: a row of mixed values or of nested lists keeps its dtype and shape. One
    # difference, kept as it was: a signature listing no inputs gets one input per column.
    stacked = matrix_input(signature) if signature is None or signature.inputs else None
    if stacked is not None:
        return {stacked: _array(rows, "'data'")}
    return {c: _array([row[i] for row in rows], f"column {c!r}") for i, c in enumerate(columns)}


def _records_to_tensors(records: Any, signature: Signature | None) -> Tensors:
    if (
        not isinstance(records, list)
        or not records
        or not all(isinstance(r, dict) for r in records)
    ):
        raise InvalidInput("records must be a non-empty list of objects")
    columns = list(records[0])
    rows = []
    for index, record in enumerate(records):
        if set(record) != set(columns):
            raise InvalidInput(f"record {index} has different fields from record 0")
        rows.append([record[c] for c in columns])
    return _columns_to_tensors(columns, rows, signature)


def _instances_to_tensors(value: Any, signature: Signature | None) -> Tensors:
    if isinstance(value, dict):
        return {str(k): _array(v, f"input {k!r}") for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return _records_to_tensors(value, signature)
    if isinstance(value, list) and value:
        if signature is not None and len(signature.inputs) > 1:
            names = [s.name for s in signature.inputs]
            return _columns_to_tensors(names, value, signature)
        name = signature.inputs[0].name if signature and signature.inputs else DEFAULT_INPUT
        return {name: _array(value, "'instances'")}
    raise InvalidInput("'instances'/'inputs' must be a non-empty list or an object")


def parse_json(body: bytes, signature: Signature | None) -> Tensors:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {str(exc)[:120]}") from None
    present = [key for key in FORMATS if isinstance(document, dict) and key in document]
    if len(present) != 1:
        raise InvalidInput(f"the JSON body needs exactly one of: {', '.join(FORMATS)}")
    value = document[present[0]]
    if present[0] == "dataframe_split":
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            raise InvalidInput("'dataframe_split' needs 'data' (and usually 'columns')")
        data = value["data"]
        given = value.get("columns")
        if given is not None and not isinstance(given, list):
            raise InvalidInput("'dataframe_split.columns' must be a list of column names")
        columns = given or (
            [s.name for s in signature.inputs]
            if signature and len(signature.inputs) > 1
            else [str(i) for i in range(len(data[0]) if data and isinstance(data[0], list) else 0)]
        )
        return _columns_to_tensors([str(c) for c in columns], data, signature)
    if present[0] == "dataframe_records":
        return _records_to_tensors(value, signature)
    return _instances_to_tensors(value, signature)


def parse_csv(body: bytes, signature: Signature | None) -> Tensors:
    try:
        table = pa_csv.read_csv(io.BytesIO(body))
    except pa.ArrowException as exc:
        problem = _ROW_ECHO.sub(r"\1", str(exc).splitlines()[0] if str(exc) else "")
        raise InvalidInput(f"CSV body cannot be read: {problem[:120]}") from None
    rows = [list(row.values()) for row in table.to_pylist()]
    return _columns_to_tensors(table.column_names, rows, signature)


def to_request(tensors: Tensors, signature: Signature | None) -> InferRequest:
    """Typed tensors for the data plane; JSON numbers take the signature's dtype where lossless
    in kind (a float column feeds an FP32 input; a float never feeds an integer one)."""
    specs = {s.name: s for s in signature.inputs} if signature else {}
    inputs = []
    for name, array in tensors.items():
        spec = specs.get(name)
        if spec is not None and spec.datatype != "BYTES" and array.dtype.kind in "biuf":
            target = NUMPY_DTYPES[spec.datatype]
            # Only where every value survives: else the data plane refuses it, naming
            # the value (300 would otherwise arrive as INT8 44, 1e40 as FP32 inf).
            fits = out_of_range(array, target) is None
            if np.can_cast(array.dtype, target, casting="same_kind") and fits:
                array = array.astype(target)
        inputs.append(Tensor(name, datatype_from_numpy(array.dtype), array))
    outputs = None
    if signature is not None and any(s.name == "predict" for s in signature.outputs):
        outputs = [RequestedOutput("predict")]
    return InferRequest(inputs=inputs, outputs=outputs)


def encode_predictions(outputs: list[Tensor]) -> bytes:
    def plain(value: Any) -> Any:
        array = np.asarray(value)
        if array.ndim == 0:
            item = array.item()
            return item.decode() if isinstance(item, bytes) else item
        if array.dtype.kind in "OSU":
            return [x.decode() if isinstance(x, bytes) else x for x in array.tolist()]
        return array.tolist()

    chosen = next((t for t in outputs if t.name == "predict"), None)
    if chosen is None and len(outputs) == 1:
        chosen = outputs[0]
    if chosen is not None:
        predictions: Any = plain(chosen.data)
    else:
        rows = len(outputs[0].data) if outputs else 0
        predictions = [{t.name: plain(t.data[i]) for t in outputs} for i in range(rows)]
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)
