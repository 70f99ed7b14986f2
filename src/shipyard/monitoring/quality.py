"""Model quality from ground-truth labels: accuracy, F1, ROC AUC, MAE, RMSE.

Pure functions over numpy, so the monitoring API and tests call them directly.
Every number returned is a plain Python ``float``/``int`` and an undefined metric
(no rows, one class only) is ``None``, so results go straight into JSON. The
formulas match scikit-learn (``accuracy_score``, ``f1_score(average="macro")``,
``roc_auc_score``, ``mean_absolute_error``, RMSE) without depending on it.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.stats import rankdata

from shipyard.errors import InvalidInput

Task = Literal["classification", "regression"]
Metrics = dict[str, float | None]

TASKS: tuple[Task, ...] = ("classification", "regression")
CLASSIFICATION_METRICS = ("accuracy", "f1", "auc")
REGRESSION_METRICS = ("mae", "rmse")


@dataclass(frozen=True)
class LabelledPrediction:
    """One prediction row joined with the label that arrived for it later."""

    at: float  # unix seconds of the prediction
    version: str
    label: Any
    prediction: Any
    # Class scores: one float (binary, positive class) or one per class.
    # Left out of ==/hash because numpy arrays compare elementwise.
    score: np.ndarray | list[float] | None = field(default=None, compare=False)


def classification_quality(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    scores: np.ndarray | None = None,
    classes: Sequence[Any] | None = None,
) -> Metrics:
    """Accuracy, macro F1 and ROC AUC of predicted labels (and scores) against true labels.

    F1 is macro-averaged over the classes seen in ``y_true`` or ``y_pred``. AUC is
    binary when ``scores`` is 1-D or has two columns (the last column scores the
    positive class, ``classes[-1]`` or else the greater label in ``y_true``), and a
    one-vs-rest macro average when ``scores`` has k > 2 columns ordered as
    ``classes`` (default: the sorted labels of both sequences), over the classes
    present in ``y_true``. AUC is ``None`` without scores or when ``y_true`` holds a
    single class.
    """
    n = len(y_true)
    if len(y_pred) != n:
        raise InvalidInput(f"{n} labels but {len(y_pred)} predictions")
    if n == 0:
        return {"accuracy": None, "f1": None, "auc": None, "count": 0}
    index: dict[Any, int] = {}
    true_codes = _encode(y_true, index)
    pred_codes = _encode(y_pred, index)
    k = len(index)
    confusion = np.bincount(true_codes * k + pred_codes, minlength=k * k).reshape(k, k)
    hits = np.diag(confusion)
    # 2*tp + fp + fn > 0 for every class seen, so F1 is always defined here.
    f1 = 2 * hits / (confusion.sum(axis=0) + confusion.sum(axis=1))
    return {
        "accuracy": float(hits.sum() / n),
        "f1": float(f1.mean()),
        "auc": None if scores is None else _auc(true_codes, index, scores, classes),
        "count": n,
    }


def regression_quality(y_true: Sequence[Any], y_pred: Sequence[Any]) -> Metrics:
    """Mean absolute error and root mean squared error of numeric predictions."""
    truth = _finite_floats(y_true, "labels")
    predicted = _finite_floats(y_pred, "predictions")
    if truth.shape != predicted.shape:
        raise InvalidInput(f"{truth.size} labels but {predicted.size} predictions")
    if truth.size == 0:
        return {"mae": None, "rmse": None, "count": 0}
    errors = predicted - truth
    return {
        "mae": float(np.abs(errors).mean()),
        "rmse": math.sqrt(float(np.square(errors).mean())),
        "count": int(truth.size),
    }


def infer_task(y_true_values: Iterable[Any]) -> Task:
    """Regression when the labels are numbers and some are not whole; classification otherwise.

    Strings, booleans, integers and whole-valued floats (``1.0``) are class labels.
    """
    fractional = False
    for value in y_true_values:
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            return "classification"
        if not fractional and not float(value).is_integer():
            fractional = True
    return "regression" if fractional else "classification"


def quality_over_time(
    items: Iterable[LabelledPrediction],
    bucket_seconds: float,
    task: Task | None = None,
    classes: Sequence[Any] | None = None,
) -> list[dict[str, Any]]:
    """Quality per (version, time bucket), sorted by version then bucket start.

    Buckets are aligned to multiples of ``bucket_seconds`` since the epoch. Each
    entry holds ``version``, ``start``, ``end``, ``count`` and the task's metrics.
    The task is inferred once from all labels so every entry has the same keys.
    """
    if not bucket_seconds > 0 or not math.isfinite(bucket_seconds):
        raise InvalidInput(f"bucket_seconds must be a positive number, got {bucket_seconds}")
    bucket_seconds = float(bucket_seconds)
    rows = list(items)
    task, classes = _resolve(rows, task, classes)
    groups: defaultdict[tuple[str, float], list[LabelledPrediction]] = defaultdict(list)
    for row in rows:
        start = math.floor(row.at / bucket_seconds) * bucket_seconds
        groups[(row.version, float(start))].append(row)
    return [
        {
            "version": version,
            "start": start,
            "end": start + bucket_seconds,
            **_quality(groups[(version, start)], task, classes),
        }
        for version, start in sorted(groups)
    ]


def quality_by_version(
    items: Iterable[LabelledPrediction],
    task: Task | None = None,
    classes: Sequence[Any] | None = None,
) -> dict[str, Metrics]:
    """Quality per model version over all the given rows, keyed by version (sorted)."""
    rows = list(items)
    task, classes = _resolve(rows, task, classes)
    groups: defaultdict[str, list[LabelledPrediction]] = defaultdict(list)
    for row in rows:
        groups[row.version].append(row)
    return {version: _quality(groups[version], task, classes) for version in sorted(groups)}


def _resolve(
    rows: list[LabelledPrediction], task: Task | None, classes: Sequence[Any] | None
) -> tuple[Task, Sequence[Any] | None]:
    """The task, and for multiclass scores one class order shared by every group."""
    if task is None:
        task = infer_task(row.label for row in rows)
    elif task not in TASKS:
        raise InvalidInput(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    # A group may lack some classes, so multiclass scores get one column order from all rows.
    multiclass = any(row.score is not None and np.size(row.score) > 2 for row in rows)
    if task == "classification" and classes is None and multiclass:
        classes = _sorted_labels({row.label for row in rows} | {r.prediction for r in rows})
    return task, classes


def _quality(rows: list[LabelledPrediction], task: Task, classes: Sequence[Any] | None) -> Metrics:
    y_true = [row.label for row in rows]
    y_pred = [row.prediction for row in rows]
    if task == "regression":
        return regression_quality(y_true, y_pred)
    scores = None
    if rows and all(row.score is not None for row in rows):
        try:
            scores = np.asarray([np.asarray(row.score, dtype=float) for row in rows])
        except ValueError as e:
            raise InvalidInput(f"scores of one version must have the same length: {e}") from e
    return classification_quality(y_true, y_pred, scores, classes)


def _encode(labels: Sequence[Any], index: dict[Any, int]) -> np.ndarray:
    """Integer codes for hashable labels, growing ``index`` with unseen ones."""
    try:
        codes = [index.setdefault(label, len(index)) for label in labels]
    except TypeError as e:
        raise InvalidInput(f"labels must be scalars: {e}") from e
    return np.asarray(codes, dtype=np.intp)


def _sorted_labels(labels: Iterable[Any]) -> list[Any]:
    try:
        return sorted(labels)
    except TypeError as e:
        raise InvalidInput(f"labels of mixed types have no order; pass classes: {e}") from e


def _auc(
    true_codes: np.ndarray, index: dict[Any, int], scores: np.ndarray, classes: Sequence[Any] | None
) -> float | None:
    """ROC AUC, binary or one-vs-rest macro; see ``classification_quality``."""
    score = _finite_floats(scores, "scores")
    if score.ndim == 2 and score.shape[1] == 1:
        score = score[:, 0]
    if score.ndim not in (1, 2) or score.shape[0] != true_codes.size:
        raise InvalidInput(f"scores of shape {score.shape} do not fit {true_codes.size} labels")
    if classes is not None:
        seen = set(np.unique(true_codes).tolist())
        unknown = [label for label, code in index.items() if code in seen and label not in classes]
        if unknown:
            raise InvalidInput(f"labels {unknown!r} are not among the classes {list(classes)!r}")
    if score.ndim == 1 or score.shape[1] == 2:
        if classes is not None:
            if len(classes) != 2:
                raise InvalidInput(f"binary scores need two classes, got {len(classes)}")
            positive = classes[-1]
        else:
            codes = set(np.unique(true_codes).tolist())
            present = _sorted_labels(label for label, code in index.items() if code in codes)
            if len(present) > 2:
                raise InvalidInput(f"binary scores but {len(present)} classes in the labels")
            positive = present[-1]
        column = score if score.ndim == 1 else score[:, -1]
        return _binary_auc(true_codes == index.get(positive, -1), column)
    k = score.shape[1]
    order = list(classes) if classes is not None else _sorted_labels(index)
    if len(order) != k:
        raise InvalidInput(f"scores have {k} columns but there are {len(order)} classes")
    # A class absent from this window has no AUC; average the ones that are defined.
    per_class = [
        _binary_auc(true_codes == index.get(c, -1), score[:, i]) for i, c in enumerate(order)
    ]
    defined = [auc for auc in per_class if auc is not None]
    return sum(defined) / len(defined) if defined else None


def _binary_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Mann-Whitney U over average ranks: equals the trapezoidal ROC area, ties included."""
    n_pos = int(np.count_nonzero(positive))
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _finite_floats(values: Sequence[Any] | np.ndarray, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} must be numbers: {e}") from e
    if not np.isfinite(array).all():
        raise InvalidInput(f"{what} must be finite")
    return array
