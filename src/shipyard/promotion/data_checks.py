"""Does the evaluation data look like the data the candidate was trained on?

The holdout's columns are checked against the candidate's reference sample, feature by
feature: is the column there, do nulls appear, do numeric values leave the reference
range, do unseen categories appear, and has the distribution drifted (the tests of
monitoring/drift.py). A failed check means the evaluation's metrics may not describe
the traffic the model was built for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from shipyard.monitoring.drift import (
    DEFAULT_THRESHOLDS,
    DriftThresholds,
    FeatureDrift,
    detect_drift,
    feature_kind,
)

NULL_SHARE_TOLERANCE = 0.05  # more nulls than the reference by this share fails
OUT_OF_RANGE_SHARE = 0.01  # more numeric values outside the reference range than this fails
SHOWN_CATEGORIES = 5  # unseen categories named in a detail


def data_checks(
    reference: dict[str, np.ndarray] | None,
    holdout: dict[str, np.ndarray],
    thresholds: DriftThresholds | None = None,
) -> dict[str, Any]:
    """{"passed": bool, "checks": [{"check", "feature", "passed", "detail"}]}.

    Every reference feature gets a "columns" check, then (when present) "nulls", one of
    "range" (numeric) or "unseen_categories" (categorical), and "drift". Holdout columns
    the reference lacks (a label, a slice column) are ignored.
    """
    if reference is None:
        return {"passed": True, "checks": [_check("reference", "", True, "no reference sample")]}
    checks: list[dict[str, Any]] = []
    testable: dict[str, str] = {}  # feature -> kind, for the drift tests
    for name, ref_values in reference.items():
        feature_checks, kind = _feature_checks(name, np.asarray(ref_values), holdout.get(name))
        checks.extend(feature_checks)
        if kind is not None:
            testable[name] = kind
    checks.extend(_drift_checks(reference, holdout, testable, thresholds or DEFAULT_THRESHOLDS))
    order = {name: i for i, name in enumerate(reference)}
    checks.sort(key=lambda check: order[check["feature"]])  # stable: keeps check order
    return {"passed": all(check["passed"] for check in checks), "checks": checks}


def _check(check: str, feature: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"check": check, "feature": feature, "passed": passed, "detail": detail}


def _feature_checks(
    name: str, reference: np.ndarray, holdout: np.ndarray | None
) -> tuple[list[dict[str, Any]], str | None]:
    """The checks of one feature, and its kind when it can be drift-tested."""
    if holdout is None:
        return [_check("columns", name, False, "missing from the holdout")], None
    values = _column(holdout)
    if values is None:
        shape = np.asarray(holdout).shape
        detail = f"expected one value per row, got shape {list(shape)}"
        return [_check("columns", name, False, detail)], None
    checks = [_check("columns", name, True, "present"), _nulls(name, reference, values)]
    ref, cur = reference[~_missing(reference)], values[~_missing(values)]
    try:
        kind = feature_kind(ref)
    except ValueError as exc:  # e.g. datetimes: no range or drift test applies
        checks.append(_check("drift", name, True, f"not tested: {exc}"))
        return checks, None
    if kind == "numeric":
        checks.append(_range(name, ref, cur))
    else:
        checks.append(_unseen(name, ref, cur))
    return checks, kind


def _column(values: np.ndarray) -> np.ndarray | None:
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        return array[:, 0]
    return array if array.ndim == 1 else None


def _missing(values: np.ndarray) -> np.ndarray:
    """True where a value is null: NaN in float columns, None or NaN in object columns."""
    if values.dtype.kind == "f":
        nan: np.ndarray = np.isnan(values)
        return nan
    if values.dtype.kind == "O":
        return np.array([_is_null(v) for v in values.tolist()], dtype=bool)
    return np.zeros(values.shape, dtype=bool)


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _nulls(name: str, reference: np.ndarray, holdout: np.ndarray) -> dict[str, Any]:
    ref_share = _share(int(_missing(reference).sum()), reference.size)
    cur_share = _share(int(_missing(holdout).sum()), holdout.size)
    # Nulls where training had none are a new failure mode, however few.
    new_nulls = cur_share > 0 and ref_share == 0
    passed = not new_nulls and cur_share <= ref_share + NULL_SHARE_TOLERANCE
    detail = f"{cur_share:.1%} null in the holdout, {ref_share:.1%} in the reference"
    return _check("nulls", name, passed, detail)


def _share(count: int, total: int) -> float:
    return count / total if total else 0.0


def _range(name: str, reference: np.ndarray, holdout: np.ndarray) -> dict[str, Any]:
    if reference.size == 0 or holdout.size == 0:
        return _check("range", name, True, "not tested: no values on one side")
    low, high = float(reference.min()), float(reference.max())
    try:
        cur = holdout.astype(np.float64)
    except (TypeError, ValueError):
        return _check("range", name, False, f"holdout values are not numeric ({holdout.dtype})")
    outside = int(np.count_nonzero((cur < low) | (cur > high)))
    share = outside / cur.size
    detail = f"{outside} of {cur.size} values ({share:.1%}) outside [{low:.4g}, {high:.4g}]"
    return _check("range", name, share <= OUT_OF_RANGE_SHARE, detail)


def _unseen(name: str, reference: np.ndarray, holdout: np.ndarray) -> dict[str, Any]:
    known = {_category(value) for value in reference.tolist()}
    counts: dict[str, int] = {}
    for value in holdout.tolist():
        label = _category(value)
        if label not in known:
            counts[label] = counts.get(label, 0) + 1
    if not counts:
        return _check("unseen_categories", name, True, "no unseen categories")
    rows = sum(counts.values())
    shown = sorted(counts, key=lambda label: -counts[label])[:SHOWN_CATEGORIES]
    more = f" and {len(counts) - len(shown)} more" if len(counts) > len(shown) else ""
    detail = (
        f"{len(counts)} unseen categories in {rows} of {holdout.size} rows: "
        f"{', '.join(repr(label) for label in shown)}{more}"
    )
    return _check("unseen_categories", name, False, detail)


def _category(value: object) -> str:
    """One label per category whatever the column's type: 3, 3.0 and "3" agree."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _drift_checks(
    reference: Mapping[str, np.ndarray],
    holdout: Mapping[str, np.ndarray],
    testable: Mapping[str, str],
    thresholds: DriftThresholds,
) -> list[dict[str, Any]]:
    ref = {name: reference[name] for name in testable}
    cur = {name: _column(holdout[name]) for name in testable}
    result = detect_drift(ref, {name: v for name, v in cur.items() if v is not None}, thresholds)
    checks = [_drift_check(feature, thresholds) for feature in result.features]
    if result.drifted:
        return checks
    # As the drift monitor judges a window: a set drifts when a share of its features do.
    # One feature below p 0.05 among several is what chance gives a same-source holdout.
    for check in checks:
        if not check["passed"] and check["check"] == "drift":
            check["passed"] = True
            check["detail"] += (f"; the holdout as a whole does not drift ({result.share:.0%} "
                                f"of features did, {thresholds.share:.0%} needed)")  # fmt: skip
    return checks


def _drift_check(feature: FeatureDrift, thresholds: DriftThresholds) -> dict[str, Any]:
    if not feature.enough_rows:
        rows = min(feature.reference_rows, feature.current_rows)
        detail = f"no verdict: {rows} non-null rows (need {thresholds.min_rows})"
        return _check("drift", feature.name, True, detail)
    test = "KS" if feature.test == "ks" else "chi-squared"
    detail = (
        f"{test} statistic {feature.statistic:.4g}, p-value {feature.p_value:.3g}, "
        f"PSI {feature.psi:.3f}"
    )
    return _check("drift", feature.name, not feature.drifted, detail)
