"""Data checks of a holdout against a reference sample, on hand-made arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from shipyard.monitoring.drift import DriftThresholds
from shipyard.promotion.data_checks import data_checks

N = 500


def normal(mean: float, seed: int, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, 1.0, n)


def check(result: dict[str, Any], kind: str, feature: str) -> dict[str, Any]:
    found = [c for c in result["checks"] if c["check"] == kind and c["feature"] == feature]
    assert len(found) == 1, (kind, feature, result["checks"])
    return found[0]


def test_no_reference_sample_passes_with_one_note() -> None:
    result = data_checks(None, {"x": np.arange(5.0)})
    assert result == {
        "passed": True,
        "checks": [
            {"check": "reference", "feature": "", "passed": True, "detail": "no reference sample"}
        ],
    }


def test_same_distribution_passes_every_check() -> None:
    colors = np.array(["red", "green", "blue", "red"] * (N // 4), dtype=object)
    reference = {"x": normal(0, seed=1), "color": colors}
    holdout = {"x": normal(0, seed=1), "color": colors.copy(), "label": np.zeros(N)}
    result = data_checks(reference, holdout)
    assert result["passed"] is True
    kinds = [(c["feature"], c["check"]) for c in result["checks"]]
    assert kinds == [
        ("x", "columns"),
        ("x", "nulls"),
        ("x", "range"),
        ("x", "drift"),
        ("color", "columns"),
        ("color", "nulls"),
        ("color", "unseen_categories"),
        ("color", "drift"),
    ]  # the label column, absent from the reference, is not checked


def test_shifted_distribution_drifts() -> None:
    reference, holdout = normal(0, seed=1), normal(2, seed=2)
    result = data_checks({"x": reference}, {"x": holdout})
    drift = check(result, "drift", "x")
    assert drift["passed"] is False
    expected = stats.ks_2samp(reference, holdout)
    assert f"KS statistic {expected.statistic:.4g}" in drift["detail"]
    assert result["passed"] is False


def test_nulls_appearing_where_the_reference_had_none_fail() -> None:
    holdout = normal(0, seed=1)
    holdout[:3] = np.nan  # 0.6%: under the 5% tolerance, but the reference had none
    result = data_checks({"x": normal(0, seed=1)}, {"x": holdout})
    nulls = check(result, "nulls", "x")
    assert nulls["passed"] is False
    assert nulls["detail"] == "0.6% null in the holdout, 0.0% in the reference"


def test_nulls_within_tolerance_of_the_reference_pass_and_beyond_fail() -> None:
    reference = np.array([None, "a", "b", "a"] * 25, dtype=object)  # 25% null
    within = np.array([None] * 29 + ["a"] * 71, dtype=object)  # 29%
    beyond = np.array([None] * 31 + ["a"] * 69, dtype=object)  # 31%
    assert check(data_checks({"c": reference}, {"c": within}), "nulls", "c")["passed"] is True
    assert check(data_checks({"c": reference}, {"c": beyond}), "nulls", "c")["passed"] is False


def test_values_outside_the_reference_range_fail() -> None:
    reference = np.linspace(0.0, 10.0, 200)
    inside = np.linspace(0.0, 10.0, 200)
    inside[0] = 10.5  # 1 of 200 = 0.5%: tolerated
    outside = np.linspace(0.0, 10.0, 200)
    outside[:3] = [-1.0, 11.0, 12.0]  # 1.5%
    ok = check(data_checks({"x": reference}, {"x": inside}), "range", "x")
    bad = check(data_checks({"x": reference}, {"x": outside}), "range", "x")
    assert ok["passed"] is True
    assert bad["passed"] is False
    assert bad["detail"] == "3 of 200 values (1.5%) outside [0, 10]"


def test_unseen_category_strings_fail_and_are_named() -> None:
    reference = np.array(["cat", "dog"] * 50, dtype=object)
    holdout = np.array(["cat", "dog"] * 45 + ["emu"] * 6 + ["yak"] * 4, dtype=object)
    unseen = check(data_checks({"pet": reference}, {"pet": holdout}), "unseen_categories", "pet")
    assert unseen["passed"] is False
    assert unseen["detail"] == "2 unseen categories in 10 of 100 rows: 'emu', 'yak'"


def test_small_integer_codes_are_categories_and_float_reads_of_them_match() -> None:
    reference = np.array([0, 1, 2] * 40)
    holdout = np.array([0.0, 1.0, 2.0, np.nan] * 30)  # ints read back as floats with nulls
    result = data_checks({"code": reference}, {"code": holdout})
    assert check(result, "unseen_categories", "code")["passed"] is True
    assert check(result, "nulls", "code")["passed"] is False


def test_missing_column_fails() -> None:
    result = data_checks({"x": normal(0, 1), "y": normal(0, 2)}, {"x": normal(0, 1)})
    missing = check(result, "columns", "y")
    assert missing == {
        "check": "columns",
        "feature": "y",
        "passed": False,
        "detail": "missing from the holdout",
    }
    assert [c["check"] for c in result["checks"] if c["feature"] == "y"] == ["columns"]
    assert result["passed"] is False


def test_too_few_rows_give_no_drift_verdict() -> None:
    result = data_checks({"x": normal(0, 1)}, {"x": normal(3, 2, n=10)})
    drift = check(result, "drift", "x")
    assert drift["passed"] is True
    assert drift["detail"] == "no verdict: 10 non-null rows (need 30)"


def test_thresholds_are_passed_to_the_drift_tests() -> None:
    # A shift too small for the KS test at p < 0.05 (scipy says so below) but over a PSI of 0.01.
    reference, holdout = normal(0, seed=1), normal(0.1, seed=2)
    assert stats.ks_2samp(reference, holdout).pvalue > 0.05
    lax = data_checks({"x": reference}, {"x": holdout})
    strict = data_checks({"x": reference}, {"x": holdout}, DriftThresholds(psi=0.01))
    assert check(lax, "drift", "x")["passed"] is True
    assert check(strict, "drift", "x")["passed"] is False


def test_one_drifted_feature_of_four_is_reported_but_the_holdout_passes() -> None:
    # Default share 0.5 (config.DEFAULT_DRIFT_SHARE): the set drifts when 2 of 4 features do.
    reference = {name: normal(0, seed=10 + i) for i, name in enumerate("abcd")}
    one_moved = {name: normal(0, seed=20 + i) for i, name in enumerate("abcd")}
    narrow = np.random.default_rng(30).normal(0.0, 0.4, N)  # inside the range, yet moved
    one_moved["a"] = narrow
    two_moved = {**one_moved, "b": np.random.default_rng(31).normal(0.0, 0.4, N)}

    calm = data_checks(reference, one_moved)
    moved = data_checks(reference, two_moved)

    assert calm["passed"] is True
    assert "does not drift (25% of features did, 50% needed)" in check(calm, "drift", "a")["detail"]
    assert moved["passed"] is False
    assert check(moved, "drift", "a")["passed"] is False
    assert check(moved, "drift", "b")["passed"] is False
    assert check(moved, "drift", "c")["passed"] is True
