"""The equivalence gate on hand-made answers: labels exact, scores by absolute difference."""

from __future__ import annotations

import numpy as np
import pytest

from shipyard.errors import InvalidInput
from shipyard.packaging.equivalence import Thresholds, compare, thresholds_for

EXACT = Thresholds(min_agreement=1.0, max_abs_diff=1e-5)
INPUTS = {"x": np.array([[0.0], [1.0], [2.0], [3.0]])}


def _classifier(labels: list[int], positive: list[float]) -> dict[str, np.ndarray]:
    scores = np.array(positive)
    return {"predict": np.array(labels), "predict_proba": np.column_stack([1 - scores, scores])}


def test_equal_answers_pass_with_their_largest_difference() -> None:
    original = _classifier([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3])
    exported = _classifier([0, 1, 1, 0], [0.1, 0.9 + 4e-6, 0.8, 0.3])
    result = compare(original, exported, INPUTS, EXACT)
    assert result.passed
    assert result.agreement == 1.0
    assert result.max_abs_diff == pytest.approx(4e-6)
    assert result.failing_rows == []


def test_a_changed_label_fails_naming_the_row_its_input_and_both_answers() -> None:
    original = _classifier([0, 1, 1, 0], [0.1, 0.9, 0.8, 0.3])
    exported = _classifier([0, 1, 0, 0], [0.1, 0.9, 0.4, 0.3])
    result = compare(original, exported, INPUTS, EXACT)
    assert not result.passed
    assert result.agreement == 0.75
    assert result.failing_count == 1
    (row,) = result.failing_rows
    assert row.row == 2
    assert row.inputs == {"x": [2.0]}
    assert row.original["predict"] == 1
    assert row.exported["predict"] == 0
    assert row.abs_diff == pytest.approx(0.4)
    message = result.refusal("the export")
    assert "1 of 4 rows" in message
    assert "row 2 x=[2]: original predict=1" in message
    assert "exported predict=0" in message


def test_scores_beyond_the_limit_fail_even_when_labels_agree() -> None:
    original = {"predict": np.array([1.0, 2.0, 3.0, 4.0])}
    exported = {"predict": np.array([1.0, 2.0, 3.01, 4.0])}
    result = compare(original, exported, INPUTS, EXACT)
    assert not result.passed
    assert [r.row for r in result.failing_rows] == [2]
    relaxed = compare(original, exported, INPUTS, Thresholds(1.0, 0.02))
    assert relaxed.passed


def test_quantised_defaults_allow_one_flipped_row_in_a_hundred_not_two() -> None:
    thresholds = thresholds_for("dynamic-int8", None, None)
    assert thresholds == Thresholds(min_agreement=0.99, max_abs_diff=None)
    labels = np.zeros(100, dtype=np.int64)
    inputs = {"x": np.arange(100.0).reshape(-1, 1)}
    one, two = labels.copy(), labels.copy()
    one[7] = 1
    two[[7, 8]] = 1
    assert compare({"predict": labels}, {"predict": one}, inputs, thresholds).passed
    refused = compare({"predict": labels}, {"predict": two}, inputs, thresholds)
    assert not refused.passed
    assert refused.agreement == 0.98


def test_without_labels_the_top_class_of_scores_decides_agreement() -> None:
    original = {"scores": np.array([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5], [0.9, 0.1]])}
    exported = {"scores": np.array([[0.25, 0.75], [0.4, 0.6], [0.5, 0.5], [0.9, 0.1]])}
    result = compare(original, exported, INPUTS, Thresholds(0.0, None))
    assert result.agreement == 0.75
    assert [r.row for r in result.failing_rows] == [1]


def test_missing_values_in_both_are_the_same_answer() -> None:
    original = {"predict": np.array([np.nan, 1.0, 2.0, 3.0])}
    assert compare(original, {"predict": original["predict"].copy()}, INPUTS, EXACT).passed
    exported = {"predict": np.array([0.0, 1.0, 2.0, 3.0])}
    assert not compare(original, exported, INPUTS, EXACT).passed


def test_an_output_the_export_lacks_is_refused() -> None:
    with pytest.raises(InvalidInput, match="no output 'predict_proba'"):
        compare(_classifier([0, 1, 1, 0], [0.1] * 4), {"predict": np.zeros(4)}, INPUTS, EXACT)


def test_thresholds_out_of_range_are_refused() -> None:
    with pytest.raises(InvalidInput, match="min_agreement"):
        thresholds_for(None, 1.5, None)
    with pytest.raises(InvalidInput, match="max_abs_diff"):
        thresholds_for(None, None, -1.0)
    assert thresholds_for(None, None, None) == Thresholds(1.0, 1e-5)
    assert thresholds_for("fp16", 0.9, 0.0) == Thresholds(0.9, 0.0)
