"""A registered model version made ready to score Arrow tables outside the server.

Batch jobs and stream consumers resolve a reference once (`resolve_model`), then
load the runtime in each process that predicts: a worker process, a Ray actor, a
stream consumer. `Scorer.score` turns a table into the runtime's inputs, predicts,
and answers output columns; rows the model cannot take are set aside with the
reason instead of failing the whole table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shipyard.errors import InvalidInput
from shipyard.runtimes.base import VersionSpec
from shipyard.signature import NUMPY_DTYPES, TensorSpec, columns_to_inputs, matrix_input

if TYPE_CHECKING:
    from shipyard.registry.service import Registry
    from shipyard.runtimes.base import Runtime, Tensors

ROW_NUMBER = "row_number"
"""The column that names an input row (0-based, across all input files) when no id column does."""
ERROR = "error"


def resolve_model(registry: Registry, ref_text: str) -> VersionSpec:
    """The version a reference names (a bare name: its production alias, else the latest)."""
    from shipyard.registry.refs import parse_ref

    record = registry.models.serving_version(parse_ref(ref_text))
    return VersionSpec.of(record, registry.artifacts.materialize(record.artifact.digest))


@dataclass
class Scored:
    """One table scored: output rows in input order, and the rows set aside."""

    output: pa.Table
    """Id columns (or `row_number`) then one column per output value, for accepted rows."""
    errors: pa.Table
    """The same id columns plus `error` (why), for rejected rows; empty when none."""

    @property
    def rejected(self) -> int:
        return int(self.errors.num_rows)


class Scorer:
    """A loaded model that scores tables. Create it in the process that predicts."""

    def __init__(self, spec: VersionSpec, outputs: Sequence[str] | None = None) -> None:
        from shipyard.runtimes import load

        self.spec = spec
        self.signature = spec.signature
        self.runtime: Runtime = load(spec)
        self.outputs = list(outputs) if outputs else None

    def score(self, table: pa.Table, id_columns: Sequence[str] = (), first_row: int = 0) -> Scored:
        """Predict every row of `table`; `first_row` numbers its rows when there is no id column."""
        ids = _id_table(table, id_columns, first_row)
        reasons: dict[int, str] = {}  # position -> why it cannot be scored; usually empty
        tensors = self._inputs(table, id_columns, reasons)
        positions = np.arange(table.num_rows, dtype=np.int64)
        if reasons:
            positions = np.setdiff1d(positions, np.fromiter(reasons, dtype=np.int64))
            tensors = {name: array[positions] for name, array in tensors.items()}
        pieces, rejected = self._predict(tensors, positions)
        reasons.update(rejected)
        if len(pieces) == 1 and len(pieces[0][0]) == table.num_rows:
            output = ids  # the usual case: every row scored, nothing to take
        else:
            accepted = (
                np.concatenate([p for p, _ in pieces]) if pieces else np.empty(0, dtype=np.int64)
            )
            output = ids.take(pa.array(accepted, type=pa.int64()))
        for name, column in _output_columns([outputs for _, outputs in pieces]).items():
            output = output.append_column(name, column)
        bad = sorted(reasons)
        errors = ids.take(pa.array(bad, type=pa.int64())).append_column(
            ERROR, pa.array([reasons[i] for i in bad], type=pa.string())
        )
        return Scored(output=output, errors=errors)

    def _inputs(
        self, table: pa.Table, id_columns: Sequence[str], reasons: dict[int, str]
    ) -> Tensors:
        """Arrays as the runtime takes them; rows that cannot be, with why, into `reasons`.

        Each column is cast to its input's datatype on its own, so a value that does
        not convert sets aside its row, not the table.
        """
        specs = self.signature.inputs if self.signature else []
        stacked = matrix_input(self.signature)
        if stacked is not None:
            features = [n for n in table.column_names if n not in id_columns]
            default = TensorSpec(name=stacked, datatype="FP64", shape=[-1, len(features)])
            spec = specs[0] if specs else default
            width = spec.shape[1]
            if width != -1 and width != len(features):
                raise InvalidInput(
                    f"the model takes {width} features ({spec.name}), the input has "
                    f"{len(features)} columns besides the id columns: {', '.join(features)}"
                )
            feeds = [(n, spec.datatype) for n in features]
        else:
            missing = [s.name for s in specs if s.name not in table.column_names]
            if missing:
                raise InvalidInput(
                    f"the input has no column {missing[0]!r}, which the model needs "
                    f"(it takes {', '.join(s.name for s in specs)})"
                )
            feeds = [(s.name, s.datatype) for s in specs]
        columns = {n: _column_array(table.column(n), n, datatype, reasons) for n, datatype in feeds}
        return columns_to_inputs(columns, self.signature, rows=table.num_rows)

    def _predict(
        self, tensors: Tensors, positions: np.ndarray
    ) -> tuple[list[tuple[np.ndarray, Tensors]], dict[int, str]]:
        """Predict; when the model refuses the batch, halve it until the refused rows are found.

        Costs one predict per batch when all rows are fine, and about 2·k·log(n) more
        for k refused rows among n, instead of n single-row predicts.
        """
        if len(positions) == 0:
            return [], {}
        try:
            return [(positions, self.runtime.predict(tensors, self.outputs))], {}
        except Exception as exc:
            if len(positions) == 1:
                return [], {int(positions[0]): _reason(exc)}
        half = len(positions) // 2
        left, left_rejected = self._predict(
            {n: a[:half] for n, a in tensors.items()}, positions[:half]
        )
        right, right_rejected = self._predict(
            {n: a[half:] for n, a in tensors.items()}, positions[half:]
        )
        return left + right, {**left_rejected, **right_rejected}


def _reason(exc: Exception) -> str:
    """The first line of the model's complaint: sklearn's run to a paragraph of advice."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:500]


def _id_table(table: pa.Table, id_columns: Sequence[str], first_row: int) -> pa.Table:
    if id_columns:
        missing = [n for n in id_columns if n not in table.column_names]
        if missing:
            raise InvalidInput(
                f"the input has no id column {missing[0]!r} (columns: "
                f"{', '.join(table.column_names)})"
            )
        return table.select(list(id_columns))
    numbers = pa.array(np.arange(first_row, first_row + table.num_rows, dtype=np.int64))
    return pa.table({ROW_NUMBER: numbers})


def _column_array(
    column: pa.ChunkedArray, name: str, datatype: str, reasons: dict[int, str]
) -> np.ndarray:
    """One column as the model's dtype; rows that cannot convert get a reason.

    Missing values become NaN for float inputs (whether that is acceptable is the
    model's call: its refusal is recorded per row); for other types they are refused here.
    """
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        values = column.cast(pa.string()) if not pa.types.is_string(column.type) else column
        _refuse_nulls(values, name, reasons)
        return np.asarray(values.to_numpy(zero_copy_only=False), dtype=object)
    target = pa.from_numpy_dtype(dtype)
    try:
        converted = pc.cast(column, target) if column.type != target else column
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        converted = _cast_row_by_row(column, name, target, reasons)
    if converted.null_count and not pa.types.is_floating(target):
        _refuse_nulls(converted, name, reasons)
        converted = pc.fill_null(converted, pa.scalar(0, type=target))
    return np.asarray(converted.to_numpy(), dtype=dtype)


def _refuse_nulls(column: pa.ChunkedArray, name: str, reasons: dict[int, str]) -> None:
    if not column.null_count:
        return
    for position in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)):
        reasons.setdefault(int(position), f"{name}: missing value")


def _cast_row_by_row(
    column: pa.ChunkedArray, name: str, target: pa.DataType, reasons: dict[int, str]
) -> pa.ChunkedArray:
    """The slow path, taken only for a table with a value that does not convert."""
    values: list[Any] = []
    for position, value in enumerate(column.to_pylist()):
        try:
            values.append(pa.scalar(value).cast(target).as_py() if value is not None else None)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, TypeError):
            reasons.setdefault(position, f"{name}: cannot read {value!r} as {target}")
            values.append(None)
    return pa.chunked_array([pa.array(values, type=target)])


def _output_columns(pieces: list[Tensors]) -> dict[str, pa.Array]:
    """Output tensors as columns: a 1-D output is one column, a 2-D one is NAME_0 … NAME_k."""
    if not pieces:
        return {}
    columns: dict[str, pa.Array] = {}
    for name in pieces[0]:
        array = np.concatenate([np.asarray(piece[name]) for piece in pieces])
        if array.ndim == 1:
            columns[name] = _arrow(array)
        else:
            flat = array.reshape(len(array), -1)
            for i in range(flat.shape[1]):
                columns[f"{name}_{i}"] = _arrow(flat[:, i])
    return columns


def _arrow(array: np.ndarray) -> pa.Array:
    if array.dtype == object:
        return pa.array(
            [v.decode() if isinstance(v, bytes) else v for v in array.tolist()], type=pa.string()
        )
    return pa.array(array)
