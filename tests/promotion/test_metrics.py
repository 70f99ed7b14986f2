"""Holdout metrics against scikit-learn's own (an independent implementation) and hand sums."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from shipyard.promotion.metrics import (
    classification_metrics,
    expected_calibration_error,
    log_loss,
    regression_metrics,
    roc_auc,
)


def _noisy_classifier(rows: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, class probabilities that lean towards the true class, and their argmax."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, size=rows)
    logits = rng.normal(size=(rows, k)) + 1.5 * np.eye(k)[truth]
    scores = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return truth, scores, scores.argmax(axis=1)


@pytest.mark.parametrize(("k", "seed"), [(2, 0), (3, 1), (5, 2)])
def test_classification_metrics_match_sklearn(k: int, seed: int) -> None:
    truth, scores, predicted = _noisy_classifier(300, k, seed)
    classes = list(range(k))
    result = classification_metrics(truth, predicted, scores, classes)
    if k == 2:
        expected_auc = sk.roc_auc_score(truth, scores[:, 1])
    else:
        expected_auc = sk.roc_auc_score(truth, scores, multi_class="ovr", average="macro")
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(truth, predicted))
    assert result["precision"] == pytest.approx(
        sk.precision_score(truth, predicted, average="macro")
    )
    assert result["recall"] == pytest.approx(sk.recall_score(truth, predicted, average="macro"))
    assert result["f1"] == pytest.approx(sk.f1_score(truth, predicted, average="macro"))
    assert result["roc_auc"] == pytest.approx(expected_auc)
    assert result["log_loss"] == pytest.approx(sk.log_loss(truth, scores, labels=classes))
    assert all(isinstance(v, float) for v in result.values())


def test_macro_averages_count_a_class_never_predicted_as_zero_like_sklearn() -> None:
    truth = np.array(["a", "b", "c", "c", "b", "a"])
    predicted = np.array(["a", "a", "c", "c", "a", "d"])  # b never predicted, d never true
    result = classification_metrics(truth, predicted)
    for name, fn in (("precision", sk.precision_score), ("recall", sk.recall_score)):
        assert result[name] == pytest.approx(fn(truth, predicted, average="macro", zero_division=0))
    assert result["f1"] == pytest.approx(sk.f1_score(truth, predicted, average="macro"))
    assert result["roc_auc"] is None
    assert result["log_loss"] is None
    assert result["calibration_error"] is None


def test_binary_scores_as_one_column_of_string_classes() -> None:
    truth, scores, _ = _noisy_classifier(200, 2, 3)
    names = np.array(["no", "yes"])
    positive = scores[:, 1]
    assert roc_auc(names[truth], positive, ["no", "yes"]) == pytest.approx(
        sk.roc_auc_score(truth, positive)
    )
    assert log_loss(names[truth], positive, ["no", "yes"]) == pytest.approx(
        sk.log_loss(truth, positive)
    )


def test_log_loss_clips_certain_mistakes_like_sklearn() -> None:
    truth = np.array([0, 1, 1])
    scores = np.array([[1.0, 0.0], [1.0, 0.0], [0.2, 0.8]])
    assert log_loss(truth, scores, [0, 1]) == pytest.approx(sk.log_loss(truth, scores))


def test_expected_calibration_error_by_hand() -> None:
    # Top-class probabilities 0.95, 0.95 (bin (0.9, 1]) and 0.62, 0.68 (bin (0.6, 0.7]).
    scores = np.array([[0.95, 0.05], [0.05, 0.95], [0.62, 0.38], [0.32, 0.68]])
    truth = np.array([0, 0, 0, 0])  # right, wrong, right, wrong
    # bin (0.9, 1]: accuracy 1/2, confidence 0.95 -> gap 0.45, 2 rows
    # bin (0.6, 0.7]: accuracy 1/2, confidence 0.65 -> gap 0.15, 2 rows
    expected = (2 * 0.45 + 2 * 0.15) / 4
    assert expected_calibration_error(truth, scores, [0, 1]) == pytest.approx(expected)


def test_calibration_error_is_zero_when_confidence_equals_accuracy() -> None:
    # Three rows at 0.75 in one bin, three of four right.
    scores = np.tile([0.25, 0.75], (4, 1))
    truth = np.array([1, 1, 1, 0])
    assert expected_calibration_error(truth, scores, [0, 1]) == pytest.approx(0.0)


def test_auc_is_none_for_a_single_class() -> None:
    truth = np.array([1, 1, 1])
    result = classification_metrics(truth, truth, np.array([0.2, 0.6, 0.9]), [0, 1])
    assert result["roc_auc"] is None
    assert result["accuracy"] == 1.0


def test_regression_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(4)
    truth = rng.normal(size=250) * 3
    predicted = truth + rng.normal(size=250)
    result = regression_metrics(truth, predicted)
    assert result["mae"] == pytest.approx(sk.mean_absolute_error(truth, predicted))
    assert result["rmse"] == pytest.approx(np.sqrt(sk.mean_squared_error(truth, predicted)))
    assert result["r2"] == pytest.approx(sk.r2_score(truth, predicted))
    assert all(isinstance(v, float) for v in result.values())


def test_empty_or_constant_inputs_are_undefined_not_errors() -> None:
    empty = np.array([], dtype=np.int64)
    assert all(v is None for v in classification_metrics(empty, empty).values())
    assert all(v is None for v in regression_metrics(empty, empty).values())
    assert regression_metrics(np.ones(5), np.arange(5.0))["r2"] is None
