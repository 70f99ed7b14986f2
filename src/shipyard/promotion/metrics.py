"""Offline quality of a model's predictions on a labelled holdout set.

Pure numpy, so evaluation and tests call them directly, and scikit-learn (an optional
extra) is not needed: the formulas match `sklearn.metrics` (macro averages over the
classes in the labels or the predictions, one-vs-rest macro ROC AUC, clipped log loss).
Every value is a plain ``float``, or ``None`` where the metric is undefined (no rows, a
single class for AUC, no class scores), so results go straight into JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.monitoring.quality import _binary_auc
from shipyard.monitoring.quality import _finite_floats as _floats

Metrics = dict[str, float | None]

CLASSIFICATION_METRICS = (
    "accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "calibration_error",
)  # fmt: skip
REGRESSION_METRICS = ("mae", "rmse", "r2")
CALIBRATION_BINS = 10


def classification_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    scores: np.ndarray | None = None,
    classes: Sequence[Any] | None = None,
) -> Metrics:
    """Every classification metric of predicted labels, and of class scores when given.

    ``scores`` holds one column per class, in the order of ``classes`` (one column, or
    a 1-D array, scores the greater of two classes). Without scores (or classes),
    roc_auc, log_loss and calibration_error are ``None``.
    """
    truth, predicted = np.asarray(y_true), np.asarray(y_pred)
    if truth.shape != predicted.shape:
        raise InvalidInput(f"{truth.size} labels but {predicted.size} predictions")
    precision, recall, f1 = macro_precision_recall_f1(truth, predicted)
    result: Metrics = {
        "accuracy": accuracy(truth, predicted),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "roc_auc": None,
        "log_loss": None,
        "calibration_error": None,
    }
    if scores is not None and classes is not None and truth.size:
        result["roc_auc"] = roc_auc(truth, scores, classes)
        result["log_loss"] = log_loss(truth, scores, classes)
        result["calibration_error"] = expected_calibration_error(truth, scores, classes)
    return result


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> Metrics:
    """Mean absolute error, root mean squared error and R² of numeric predictions."""
    truth, predicted = _floats(y_true, "labels"), _floats(y_pred, "predictions")
    if truth.shape != predicted.shape:
        raise InvalidInput(f"{truth.size} labels but {predicted.size} predictions")
    return {
        "mae": mae(truth, predicted),
        "rmse": rmse(truth, predicted),
        "r2": r2(truth, predicted),
    }


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    if len(y_true) == 0:
        return None
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def macro_precision_recall_f1(
    y_true: np.ndarray, y_pred: np.ndarray
) -> tuple[float | None, float | None, float | None]:
    """Macro averages over the classes seen in labels or predictions.

    As sklearn's default (zero_division=0): a class never predicted has precision 0,
    one never true has recall 0.
    """
    if len(y_true) == 0:
        return None, None, None
    classes, codes = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    k, n = len(classes), len(y_true)
    true_codes, pred_codes = codes[:n], codes[n:]
    confusion = np.bincount(true_codes * k + pred_codes, minlength=k * k).reshape(k, k)
    hits = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros(k), where=actual > 0)
    # Every class here is true or predicted at least once, so the denominator is > 0.
    f1 = 2 * hits / (predicted + actual)
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


def roc_auc(y_true: np.ndarray, scores: np.ndarray, classes: Sequence[Any]) -> float | None:
    """Binary ROC AUC (the greater class positive), or one-vs-rest macro over k > 2 classes.

    A class absent from the labels has no AUC and is left out of the average (sklearn
    refuses instead); ``None`` when no class has one.
    """
    matrix = _score_matrix(scores, classes, len(y_true))
    truth = np.asarray(y_true)
    if len(classes) == 2:
        return _binary_auc(truth == classes[1], matrix[:, 1])
    per_class = [_binary_auc(truth == c, matrix[:, i]) for i, c in enumerate(classes)]
    defined = [auc for auc in per_class if auc is not None]
    return float(np.mean(defined)) if defined else None


def log_loss(y_true: np.ndarray, scores: np.ndarray, classes: Sequence[Any]) -> float | None:
    """Mean negative log probability of the true class, probabilities clipped away from 0
    and 1 by float64's epsilon (as sklearn); ``None`` when a label is not among ``classes``."""
    if len(y_true) == 0:
        return None
    matrix = _score_matrix(scores, classes, len(y_true))
    columns = _class_columns(y_true, classes)
    if columns is None:
        return None
    eps = np.finfo(np.float64).eps
    chosen = np.clip(matrix[np.arange(len(columns)), columns], eps, 1 - eps)
    return float(-np.mean(np.log(chosen)))


def expected_calibration_error(
    y_true: np.ndarray, scores: np.ndarray, classes: Sequence[Any], bins: int = CALIBRATION_BINS
) -> float | None:
    """ECE: over equal-width bins of the top-class probability, the row-weighted mean of
    |accuracy of the top class - mean top probability|. Bin i holds (i/bins, (i+1)/bins],
    the first also 0."""
    if len(y_true) == 0:
        return None
    matrix = _score_matrix(scores, classes, len(y_true))
    top = matrix.argmax(axis=1)
    confidence = matrix[np.arange(len(top)), top]
    predicted = np.asarray(_plain(classes), dtype=object)[top]
    correct = np.asarray(np.asarray(_plain(y_true), dtype=object) == predicted, dtype=bool)
    # Inner edges with right=True: bin i holds (edge i, edge i+1]; 0 falls in the first.
    which = np.digitize(confidence, np.linspace(0, 1, bins + 1)[1:-1], right=True)
    total = 0.0
    for b in np.unique(which):
        members = which == b
        gap = abs(float(correct[members].mean()) - float(confidence[members].mean()))
        total += gap * int(members.sum())
    return total / len(top)


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    if len(y_true) == 0:
        return None
    return float(np.mean(np.abs(np.asarray(y_pred, float) - np.asarray(y_true, float))))


def rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    if len(y_true) == 0:
        return None
    errors = np.asarray(y_pred, float) - np.asarray(y_true, float)
    return math.sqrt(float(np.mean(np.square(errors))))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    """Coefficient of determination; ``None`` under two rows or for constant labels,
    where sklearn answers nan or a forced 1.0/0.0."""
    truth = np.asarray(y_true, float)
    if truth.size < 2:
        return None
    total = float(np.sum(np.square(truth - truth.mean())))
    if total == 0:
        return None
    residual = float(np.sum(np.square(truth - np.asarray(y_pred, float))))
    return 1.0 - residual / total


def _score_matrix(scores: np.ndarray, classes: Sequence[Any], rows: int) -> np.ndarray:
    """Scores as rows by classes; a binary model's single column becomes [1 - p, p]."""
    matrix = _floats(scores, "class scores")
    if matrix.ndim == 2 and matrix.shape[1] == 1:
        matrix = matrix[:, 0]
    if matrix.ndim == 1:
        matrix = np.column_stack([1 - matrix, matrix])
    if matrix.ndim != 2 or matrix.shape != (rows, len(classes)):
        raise InvalidInput(
            f"class scores of shape {matrix.shape} do not fit {rows} rows of {len(classes)} classes"
        )
    return matrix


def _class_columns(y_true: np.ndarray, classes: Sequence[Any]) -> np.ndarray | None:
    """Each label's column in the scores; None when a label is not a known class."""
    position = {c: i for i, c in enumerate(_plain(classes))}
    columns = [position.get(label, -1) for label in _plain(y_true)]
    if -1 in columns:
        return None
    return np.asarray(columns, dtype=np.intp)


def _plain(values: Sequence[Any] | np.ndarray) -> list[Any]:
    """Python scalars, so numpy 1 and Python 1 (and 1.0) find each other in a dict."""
    return [v.item() if isinstance(v, np.generic) else v for v in values]
