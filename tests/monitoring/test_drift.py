"""Drift statistics: true drift is flagged, same-distribution data mostly is not."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from shipyard.monitoring.drift import (
    DriftResult,
    DriftThresholds,
    detect_drift,
    feature_drift,
    feature_kind,
)
from shipyard.monitoring.drift_report import render_html

THRESHOLDS = DriftThresholds(p_value=0.05, share=0.5, min_rows=30)


def _mixed(rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
    """Two numeric, one string and one small-integer feature, all from fixed distributions."""
    return {
        "age": rng.normal(40.0, 12.0, rows),
        "income": rng.lognormal(10.0, 0.5, rows),
        "plan": rng.choice(np.array(["basic", "plus", "pro"]), rows, p=[0.7, 0.2, 0.1]),
        "children": rng.choice(np.arange(4), rows, p=[0.4, 0.3, 0.2, 0.1]),
    }


def test_feature_kind_follows_dtype_and_distinct_values() -> None:
    assert feature_kind(np.array(["a", "b"])) == "categorical"
    assert feature_kind(np.array([b"a", b"b"])) == "categorical"
    assert feature_kind(np.array([True, False])) == "categorical"
    assert feature_kind(np.array(["a", None], dtype=object)) == "categorical"
    assert feature_kind(np.arange(10) % 3) == "categorical"
    assert feature_kind(np.arange(11)) == "numeric"
    assert feature_kind(np.array([0.5, 1.0])) == "numeric"


def test_mean_shift_in_one_of_two_features_is_dataset_drift() -> None:
    rng = np.random.default_rng(1)
    reference = {"a": rng.normal(0, 1, 1000), "b": rng.normal(0, 1, 1000)}
    current = {"a": rng.normal(0.5, 1, 300), "b": rng.normal(0, 1, 300)}

    result = detect_drift(reference, current, THRESHOLDS)

    a, b = result.features
    assert (a.name, a.kind, a.test, a.drifted) == ("a", "numeric", "ks", True)
    assert a.p_value < 1e-6
    assert not b.drifted
    assert result.share == 0.5
    assert result.drifted and result.enough_rows


def test_category_mix_change_is_flagged_by_chi2() -> None:
    rng = np.random.default_rng(2)
    labels = np.array(["red", "green", "blue"])
    reference = rng.choice(labels, 1000, p=[0.7, 0.2, 0.1])
    current = rng.choice(labels, 300, p=[0.3, 0.3, 0.4])

    drift = feature_drift("colour", reference, current, THRESHOLDS)

    assert (drift.kind, drift.test, drift.drifted) == ("categorical", "chi2", True)
    assert drift.p_value < 1e-6
    assert sorted(drift.histogram.labels) == ["blue", "green", "red"]
    assert math.isclose(sum(drift.histogram.reference), 1.0)
    assert math.isclose(sum(drift.histogram.current), 1.0)


def test_categories_new_in_current_and_a_single_category() -> None:
    reference = np.array(["a"] * 100)
    assert feature_drift("x", reference, np.array(["a"] * 50), THRESHOLDS).p_value == 1.0
    unseen = feature_drift("x", reference, np.array(["a"] * 25 + ["b"] * 25), THRESHOLDS)
    assert unseen.drifted
    assert unseen.histogram.labels == ["a", "b"]


def test_data_from_the_reference_distribution_is_rarely_flagged() -> None:
    flagged = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        result = detect_drift(_mixed(rng, 2000), _mixed(rng, 500), THRESHOLDS)
        assert [f.kind for f in result.features] == [
            "numeric",
            "numeric",
            "categorical",
            "categorical",
        ]
        flagged += result.drifted
    assert flagged <= 5


def test_psi_is_near_zero_for_the_same_data_and_large_for_a_big_shift() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(0, 1, 5000)
    same = feature_drift("x", reference, reference.copy(), THRESHOLDS)
    assert same.psi == pytest.approx(0.0, abs=1e-9)
    assert same.statistic == 0.0 and not same.drifted
    assert len(same.histogram.labels) == 10

    shifted = feature_drift("x", reference, rng.normal(1.5, 1, 1000), THRESHOLDS)
    assert shifted.psi > 0.2

    labels = np.array(["a", "b", "c"])
    categories = rng.choice(labels, 2000, p=[0.7, 0.2, 0.1])
    assert feature_drift("c", categories, categories, THRESHOLDS).psi == pytest.approx(0.0)
    moved = feature_drift("c", categories, rng.choice(labels, 500, p=[0.1, 0.2, 0.7]), THRESHOLDS)
    assert moved.psi > 0.2


def test_psi_threshold_flags_a_shift_that_the_test_alone_would_not() -> None:
    # Current values fill every other decile: the CDFs stay close (KS p ~ 0.75) but
    # half of the PSI bins empty out.
    reference = np.linspace(0, 1, 1000)
    current = np.concatenate(
        [np.linspace(b / 10 + 0.005, b / 10 + 0.095, 8) for b in (0, 2, 4, 6, 8)]
    )
    without = feature_drift("x", reference, current, DriftThresholds(min_rows=30))
    with_psi = feature_drift("x", reference, current, DriftThresholds(psi=0.2, min_rows=30))
    assert without.p_value >= 0.05 and not without.drifted
    assert with_psi.psi >= 0.2 and with_psi.drifted


def test_missing_values_are_dropped_and_counted() -> None:
    rng = np.random.default_rng(4)
    reference = rng.normal(0, 1, 500)
    reference[:50] = np.nan
    current = rng.normal(0, 1, 200)
    current[:10] = np.nan

    drift = feature_drift("x", reference, current, THRESHOLDS)
    assert (drift.reference_rows, drift.reference_missing) == (450, 50)
    assert (drift.current_rows, drift.current_missing) == (190, 10)
    assert math.isfinite(drift.p_value) and math.isfinite(drift.psi)

    objects = np.array(["a", None, "b", float("nan")] * 20, dtype=object)
    categorical = feature_drift("o", objects, objects, THRESHOLDS)
    assert (categorical.current_rows, categorical.current_missing) == (40, 40)
    assert categorical.histogram.labels == ["a", "b"]


def test_too_few_rows_gives_no_verdict() -> None:
    rng = np.random.default_rng(5)
    reference = {"a": rng.normal(0, 1, 1000)}
    current = {"a": rng.normal(3, 1, 20)}  # obviously shifted, but only 20 rows

    result = detect_drift(reference, current, THRESHOLDS)

    (a,) = result.features
    assert a.p_value < 0.05  # still reported...
    assert not a.enough_rows and not a.drifted  # ...but not a verdict
    assert not result.enough_rows and not result.drifted
    assert result.share == 0.0


def test_output_drift_is_reported_but_not_counted_in_share() -> None:
    rng = np.random.default_rng(6)
    reference = {"a": rng.normal(0, 1, 1000), "b": rng.normal(0, 1, 1000)}
    current = reference  # the inputs did not move, only the predictions
    scores_ref = rng.dirichlet([8, 1, 1], 1000)  # class 0 dominates
    scores_cur = rng.dirichlet([1, 1, 8], 300)  # class 2 dominates

    result = detect_drift(reference, current, THRESHOLDS, scores_ref, scores_cur)

    assert result.output is not None
    assert (result.output.kind, result.output.test) == ("categorical", "chi2")
    assert result.output.drifted
    assert result.share == 0.0 and not result.drifted

    regression = detect_drift(
        reference, current, THRESHOLDS, rng.normal(0, 1, 1000), rng.normal(2, 1, 300)
    )
    assert regression.output is not None and regression.output.test == "ks"
    assert regression.output.drifted and not regression.drifted


def test_features_missing_from_current_are_skipped() -> None:
    rng = np.random.default_rng(7)
    reference = {"a": rng.normal(0, 1, 100), "gone": rng.normal(0, 1, 100)}
    current = {"a": rng.normal(0, 1, 100), "new": rng.normal(0, 1, 100)}
    assert [f.name for f in detect_drift(reference, current, THRESHOLDS).features] == ["a"]


def test_feature_arrays_must_be_one_dimensional() -> None:
    with pytest.raises(ValueError, match="1-D"):
        feature_drift("x", np.zeros((40, 2)), np.zeros(40), THRESHOLDS)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"p_value": 0.0},
        {"p_value": 1.0},
        {"psi": 0.0},
        {"share": 0.0},
        {"share": 1.5},
        {"min_rows": 0},
    ],
)
def test_thresholds_reject_out_of_range_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DriftThresholds(**kwargs)  # type: ignore[arg-type]


def test_result_round_trips_through_json_and_renders_escaped_html() -> None:
    rng = np.random.default_rng(8)
    reference = _mixed(rng, 500)
    current = _mixed(rng, 100)
    reference["<script>alert(1)</script>"] = rng.normal(0, 1, 500)
    current["<script>alert(1)</script>"] = np.full(100, np.nan)  # no values: NaN statistics
    result = detect_drift(
        reference, current, DriftThresholds(psi=0.25), rng.normal(0, 1, 500), rng.normal(0, 1, 100)
    )

    stored = json.dumps(result.to_dict(), allow_nan=False)
    restored = DriftResult.from_dict(json.loads(stored))

    assert restored.to_dict() == result.to_dict()
    assert restored.thresholds == result.thresholds
    assert math.isnan(restored.features[-1].p_value)

    page = render_html(restored, "Drift: fraud-model v3", subtitle="last 24 hours")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == len(result.features) + 1
    for name in ("age", "income", "plan", "children", "last 24 hours"):
        assert name in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
