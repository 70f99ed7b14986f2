"""The equivalence gate: does a converted model answer as the original does, row by row?

Pure numpy over two sets of named outputs for the same input rows. Outputs of integer,
boolean or text type are labels, compared exactly; floating outputs are scores, compared
by absolute difference. A row agrees when its labels are equal; a model with no label
output (a regressor, a booster answering probabilities) agrees on a row when its scores'
decision is the same: the top class of a score row, or a value within the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput

Tensors = dict[str, np.ndarray]

FAILING_ROWS_SHOWN = 10
"""Failing rows a refusal names; the count says how many there were in all."""
EXACT_AGREEMENT = 1.0
EXACT_MAX_ABS_DIFF = 1e-5
"""Default for a float32 export: what float32 rounding of a float64 model leaves."""
QUANTISED_AGREEMENT = 0.99
_RELATIVE_TOLERANCE = 0.01
"""Without a max abs diff (quantised regressors), a value agrees within 1% of the
original values' spread."""


@dataclass(frozen=True)
class Thresholds:
    """What the exported model must keep to."""

    min_agreement: float
    """Least share of rows whose answers agree (1.0: every row)."""
    max_abs_diff: float | None
    """Largest absolute difference of any score; None: not checked."""


def thresholds_for(
    quantize: str | None, min_agreement: float | None, max_abs_diff: float | None
) -> Thresholds:
    """The defaults for the export (exact for float32, 99% agreement when quantised), with
    the caller's values in their place when given."""
    if min_agreement is not None and not 0.0 <= min_agreement <= 1.0:
        raise InvalidInput(f"min_agreement must lie between 0 and 1, not {min_agreement}")
    if max_abs_diff is not None and not max_abs_diff >= 0.0:
        raise InvalidInput(f"max_abs_diff must be 0 or more, not {max_abs_diff}")
    if quantize is None:
        default = Thresholds(EXACT_AGREEMENT, EXACT_MAX_ABS_DIFF)
    else:
        default = Thresholds(QUANTISED_AGREEMENT, None)
    return Thresholds(
        default.min_agreement if min_agreement is None else min_agreement,
        default.max_abs_diff if max_abs_diff is None else max_abs_diff,
    )


@dataclass(frozen=True)
class FailingRow:
    row: int
    inputs: dict[str, Any]
    original: dict[str, Any]
    exported: dict[str, Any]
    abs_diff: float


@dataclass
class GateResult:
    passed: bool
    rows: int
    agreement: float
    max_abs_diff: float
    thresholds: Thresholds
    failing_count: int = 0
    failing_rows: list[FailingRow] = field(default_factory=list)

    def document(self) -> dict[str, Any]:
        """As the version's lineage records it and the API answers it."""
        return {
            "passed": self.passed,
            "rows": self.rows,
            "agreement": self.agreement,
            "max_abs_diff": self.max_abs_diff,
            "min_agreement": self.thresholds.min_agreement,
            "allowed_max_abs_diff": self.thresholds.max_abs_diff,
            "failing_count": self.failing_count,
            "failing_rows": [vars(row) for row in self.failing_rows],
        }

    def refusal(self, what: str) -> str:
        """Why `what` was refused, naming the first failing rows."""
        limits = [f"agreement {self.agreement:.2%} (at least {self.thresholds.min_agreement:.2%})"]
        if self.thresholds.max_abs_diff is not None:
            limits.append(
                f"max abs diff {self.max_abs_diff:.3g} (at most {self.thresholds.max_abs_diff:g})"
            )
        rows = "; ".join(
            f"row {r.row} {_short(r.inputs)}: original {_short(r.original)}, "
            f"exported {_short(r.exported)}"
            for r in self.failing_rows
        )
        more = self.failing_count - len(self.failing_rows)
        tail = f"; and {more} more" if more > 0 else ""
        return (
            f"{what} answers differently on {self.failing_count} of {self.rows} rows: "
            f"{', '.join(limits)}. Failing rows: {rows}{tail}"
        )


def compare(
    original: Tensors, exported: Tensors, inputs: Tensors, thresholds: Thresholds
) -> GateResult:
    """The gate over the rows of `inputs`: each original output against the exported one
    of the same name."""
    missing = [name for name in original if name not in exported]
    if missing:
        raise InvalidInput(f"the exported model gives no output {missing[0]!r}")
    rows = _row_count(original)
    labels = {n: a for n, a in original.items() if not _is_score(a)}
    scores = {n: a for n, a in original.items() if _is_score(a)}
    label_equal = np.ones(rows, dtype=bool)
    for name, values in labels.items():
        label_equal &= _equal_rows(values, exported[name])
    row_diff = np.zeros(rows)
    for name, values in scores.items():
        row_diff = np.maximum(row_diff, _abs_diff_rows(values, exported[name]))
    if labels:
        agrees = label_equal
    else:
        agrees = np.ones(rows, dtype=bool)
        for name, values in scores.items():
            agrees &= _same_decision(values, exported[name], thresholds.max_abs_diff)
    failing = ~agrees
    if thresholds.max_abs_diff is not None:
        failing |= row_diff > thresholds.max_abs_diff
    agreement = float(agrees.mean()) if rows else 1.0
    largest = float(row_diff.max()) if rows else 0.0
    passed = agreement >= thresholds.min_agreement and (
        thresholds.max_abs_diff is None or largest <= thresholds.max_abs_diff
    )
    positions = np.flatnonzero(failing)
    shown = [
        FailingRow(
            row=int(row),
            inputs=_row_of(inputs, row),
            original=_row_of(original, row),
            exported=_row_of({n: exported[n] for n in original}, row),
            abs_diff=float(row_diff[row]),
        )
        for row in positions[:FAILING_ROWS_SHOWN]
    ]
    return GateResult(
        passed=passed,
        rows=rows,
        agreement=agreement,
        max_abs_diff=largest,
        thresholds=thresholds,
        failing_count=int(positions.size),
        failing_rows=shown,
    )


def _row_count(outputs: Tensors) -> int:
    counts = {len(a) for a in outputs.values()}
    if len(counts) != 1:
        raise InvalidInput(f"the outputs have different row counts: {sorted(counts)}")
    return counts.pop()


def _is_score(values: np.ndarray) -> bool:
    return values.dtype.kind in "fc"


def _rows_2d(values: np.ndarray) -> np.ndarray:
    return values.reshape(len(values), -1)


def _equal_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    left, right = _rows_2d(np.asarray(a)), _rows_2d(np.asarray(b))
    if left.shape != right.shape:
        return np.zeros(len(left), dtype=bool)
    if left.dtype.kind in "OUS" or right.dtype.kind in "OUS":
        left, right = left.astype(str), right.astype(str)
    return np.asarray((left == right).all(axis=1))


def _abs_diff_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    left = _rows_2d(np.asarray(a, dtype=np.float64))
    right = _rows_2d(np.asarray(b, dtype=np.float64))
    if left.shape != right.shape:
        return np.full(len(left), np.inf)
    diff = np.abs(left - right)
    diff[np.isnan(left) & np.isnan(right)] = 0.0  # both missing: the same answer
    diff[np.isnan(diff)] = np.inf
    return np.asarray(diff.max(axis=1)) if diff.shape[1] else np.zeros(len(left))


def _same_decision(a: np.ndarray, b: np.ndarray, max_abs_diff: float | None) -> np.ndarray:
    """Top class of each score row; otherwise a value within the tolerance."""
    left = _rows_2d(np.asarray(a, dtype=np.float64))
    right = _rows_2d(np.asarray(b, dtype=np.float64))
    if left.shape != right.shape:
        return np.zeros(len(left), dtype=bool)
    if left.shape[1] > 1:
        return np.asarray(left.argmax(axis=1) == right.argmax(axis=1))
    tolerance = max_abs_diff
    if tolerance is None:
        tolerance = _RELATIVE_TOLERANCE * float(np.nanstd(left)) if left.size else 0.0
    return _abs_diff_rows(left, right) <= tolerance


def _row_of(tensors: Tensors, row: int) -> dict[str, Any]:
    return {name: np.asarray(array[row]).tolist() for name, array in tensors.items()}


def _short(values: dict[str, Any]) -> str:
    """`x=[1.000000001]`: ten significant digits, enough to tell apart the values float32
    rounding merges (1e9 + 30 from 1e9, 1 + 1e-9 from 1); shortened."""
    text = ", ".join(f"{name}={_number_text(value)}" for name, value in values.items())
    return text if len(text) <= 200 else text[:197] + "..."


def _number_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, list):
        return "[" + ", ".join(_number_text(v) for v in value) + "]"
    return str(value)
