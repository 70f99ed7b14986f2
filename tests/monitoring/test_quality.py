"""Quality metrics agree with scikit-learn and bucket by version and time."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    mean_absolute_error,
    roc_auc_score,
    root_mean_squared_error,
)

from shipyard.errors import InvalidInput
from shipyard.monitoring.quality import (
    LabelledPrediction,
    classification_quality,
    infer_task,
    quality_by_version,
    quality_over_time,
    regression_quality,
)

ANIMALS = ["cat", "dog", "eel"]


def _noisy_predictions(rng: np.random.Generator, labels: np.ndarray, pool: list[Any]) -> list[Any]:
    """Mostly right: each prediction is replaced by a random class 35% of the time."""
    wrong = rng.random(labels.size) < 0.35
    return [rng.choice(pool) if flip else label for label, flip in zip(labels, wrong, strict=True)]


def _assert_plain(metrics: dict[str, Any]) -> None:
    """JSON-ready: plain Python numbers or None, never numpy scalars or NaN."""
    for value in metrics.values():
        assert value is None or type(value) in (int, float, str), (value, type(value))
    json.dumps(metrics, allow_nan=False)


@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_sklearn_on_string_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.choice(ANIMALS, size=200)
    y_pred = _noisy_predictions(rng, y_true, [*ANIMALS, "fox"])  # "fox" is never true

    got = classification_quality(list(y_true), y_pred)

    assert got["count"] == 200
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    want_f1 = f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert got["f1"] == pytest.approx(want_f1, abs=1e-12)
    assert got["auc"] is None
    _assert_plain(got)


@pytest.mark.parametrize("seed", range(5))
def test_binary_auc_matches_sklearn_with_tied_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    positive = rng.random(300) < 0.4
    y_true = np.where(positive, "yes", "no")
    # One decimal place: many ties, within and across the classes.
    score = np.round(np.clip(rng.normal(0.4 + 0.2 * positive, 0.2), 0, 1), 1)
    assert np.unique(score).size < 15
    y_pred = np.where(score >= 0.5, "yes", "no")
    want = roc_auc_score(y_true, score)

    one_column = classification_quality(list(y_true), list(y_pred), score)
    two_columns = classification_quality(list(y_true), list(y_pred), np.c_[1 - score, score])
    named = classification_quality(list(y_true), list(y_pred), score, classes=["no", "yes"])

    for got in (one_column, two_columns, named):
        assert got["auc"] == pytest.approx(want, abs=1e-12)
        _assert_plain(got)
    assert one_column["f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_binary_auc_on_integer_labels_takes_the_greater_label_as_positive() -> None:
    y_true = [0, 1, 1, 0, 1, 0, 0, 1]
    score = np.array([0.1, 0.9, 0.4, 0.4, 0.8, 0.2, 0.7, 0.7])
    got = classification_quality(y_true, [0] * 8, score)
    assert got["auc"] == pytest.approx(roc_auc_score(y_true, score), abs=1e-12)
    # Naming the classes the other way round flips the positive class.
    flipped = classification_quality(y_true, [0] * 8, score, classes=[1, 0])
    assert flipped["auc"] == pytest.approx(1 - roc_auc_score(y_true, score), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_multiclass_auc_matches_sklearn_one_vs_rest_macro(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Rows drawn from a small palette of probability vectors: ties in every column.
    palette = rng.dirichlet(np.ones(3), size=6)
    chosen = rng.integers(0, len(palette), size=250)
    scores = palette[chosen]
    y_true = np.array([rng.choice(ANIMALS, p=row) for row in scores])
    y_pred = [ANIMALS[i] for i in scores.argmax(axis=1)]
    want = roc_auc_score(y_true, scores, multi_class="ovr", average="macro", labels=ANIMALS)

    got = classification_quality(list(y_true), y_pred, scores, classes=ANIMALS)
    by_default_order = classification_quality(list(y_true), y_pred, scores)

    assert got["auc"] == pytest.approx(want, abs=1e-12)
    assert by_default_order["auc"] == pytest.approx(want, abs=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred), abs=1e-12)
    _assert_plain(got)


def test_auc_is_none_without_scores_or_with_one_class() -> None:
    assert classification_quality(["a", "b"], ["a", "a"])["auc"] is None
    one_class = classification_quality(["a", "a", "a"], ["a", "b", "a"], np.array([0.1, 0.5, 0.9]))
    assert one_class["auc"] is None
    assert one_class["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(5))
def test_regression_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.normal(10, 3, size=150)
    y_pred = y_true + rng.normal(0, 1, size=150)

    got = regression_quality(list(y_true), list(y_pred))

    assert got["count"] == 150
    assert got["mae"] == pytest.approx(mean_absolute_error(y_true, y_pred), abs=1e-12)
    assert got["rmse"] == pytest.approx(root_mean_squared_error(y_true, y_pred), abs=1e-12)
    _assert_plain(got)


def test_empty_input_gives_none_metrics() -> None:
    assert classification_quality([], [], np.empty(0)) == {
        "accuracy": None,
        "f1": None,
        "auc": None,
        "count": 0,
    }
    assert regression_quality([], []) == {"mae": None, "rmse": None, "count": 0}
    assert quality_over_time([], bucket_seconds=60) == []
    assert quality_by_version([]) == {}


def test_inconsistent_input_is_refused() -> None:
    with pytest.raises(InvalidInput, match="2 labels but 1 predictions"):
        classification_quality(["a", "b"], ["a"])
    with pytest.raises(InvalidInput, match="do not fit"):
        classification_quality(["a", "b"], ["a", "b"], np.array([0.1, 0.2, 0.3]))
    with pytest.raises(InvalidInput, match="3 columns but there are 2 classes"):
        classification_quality(["a", "b"], ["a", "b"], np.ones((2, 3)))
    with pytest.raises(InvalidInput, match="not among the classes"):
        classification_quality(["a", "c"], ["a", "b"], np.array([0.1, 0.2]), classes=["a", "b"])
    with pytest.raises(InvalidInput, match="finite"):
        regression_quality([1.0, math.nan], [1.0, 2.0])
    with pytest.raises(InvalidInput, match="bucket_seconds"):
        quality_over_time([], bucket_seconds=0)


@pytest.mark.parametrize(
    ("labels", "task"),
    [
        (["cat", "dog"], "classification"),
        ([True, False], "classification"),
        ([0, 1, 2], "classification"),
        (np.array([0, 1, 2]), "classification"),
        ([1.0, 2.0], "classification"),
        ([1, 2.5], "regression"),
        (np.array([0.25, 3.0]), "regression"),
        ([], "classification"),
    ],
)
def test_infer_task(labels: Any, task: str) -> None:
    assert infer_task(labels) == task


def _row(at: float, version: str, label: Any, prediction: Any, **kw: Any) -> LabelledPrediction:
    return LabelledPrediction(at=at, version=version, label=label, prediction=prediction, **kw)


def test_quality_over_time_buckets_per_version() -> None:
    items = [
        # v1, bucket [0, 60): 2 of 3 right; bucket [60, 120): 1 of 2 right.
        _row(0, "v1", "a", "a"),
        _row(10, "v1", "b", "b"),
        _row(59.9, "v1", "a", "b"),
        _row(60, "v1", "a", "a"),
        _row(119, "v1", "b", "a"),
        # v2, bucket [0, 60): 1 of 1 right; bucket [120, 180): 0 of 1 right.
        _row(130, "v2", "b", "a"),
        _row(30, "v2", "a", "a"),
    ]

    buckets = quality_over_time(reversed(items), bucket_seconds=60)

    assert [(b["version"], b["start"], b["end"], b["count"]) for b in buckets] == [
        ("v1", 0.0, 60.0, 3),
        ("v1", 60.0, 120.0, 2),
        ("v2", 0.0, 60.0, 1),
        ("v2", 120.0, 180.0, 1),
    ]
    assert [b["accuracy"] for b in buckets] == pytest.approx([2 / 3, 1 / 2, 1.0, 0.0])
    assert all(b["auc"] is None for b in buckets)
    for bucket in buckets:
        _assert_plain(bucket)

    by_version = quality_by_version(items)
    assert list(by_version) == ["v1", "v2"]
    assert by_version["v1"]["accuracy"] == pytest.approx(3 / 5)
    assert by_version["v1"]["count"] == 5
    assert by_version["v2"]["accuracy"] == pytest.approx(1 / 2)


def test_quality_over_time_regression_and_explicit_task() -> None:
    items = [_row(5, "v1", 1.5, 2.0), _row(6, "v1", 3.0, 1.0), _row(65, "v1", 2.0, 2.0)]

    buckets = quality_over_time(items, bucket_seconds=60)

    assert [b["mae"] for b in buckets] == pytest.approx([1.25, 0.0])
    assert buckets[0]["rmse"] == pytest.approx(math.sqrt((0.25 + 4.0) / 2))
    # Whole-valued labels would be classes; the caller can insist on regression.
    whole = [_row(0, "v1", 1, 2), _row(1, "v1", 3, 3)]
    assert quality_by_version(whole)["v1"]["accuracy"] == 0.5
    assert quality_by_version(whole, task="regression")["v1"] == {
        "mae": 0.5,
        "rmse": pytest.approx(math.sqrt(0.5)),
        "count": 2,
    }


def test_quality_over_time_multiclass_scores_share_one_class_order() -> None:
    scores = {"a": [0.7, 0.2, 0.1], "b": [0.2, 0.6, 0.2], "c": [0.1, 0.3, 0.6]}
    items = [
        # The first bucket never sees class "c", yet its columns keep the global order.
        _row(0, "v1", "a", "a", score=np.array(scores["a"])),
        _row(1, "v1", "b", "a", score=scores["a"]),
        _row(2, "v1", "b", "b", score=scores["b"]),
        _row(60, "v1", "c", "c", score=scores["c"]),
        _row(61, "v1", "a", "b", score=scores["b"]),
        _row(62, "v1", "b", "c", score=scores["c"]),
    ]

    buckets = quality_over_time(items, bucket_seconds=60)

    first_true = ["a", "b", "b"]
    first_scores = np.array([scores["a"], scores["a"], scores["b"]])
    # Classes "a" and "b" are defined in the first bucket; "c" has no positives.
    want = np.mean(
        [
            roc_auc_score([t == c for t in first_true], first_scores[:, i])
            for i, c in enumerate("ab")
        ]
    )
    assert buckets[0]["auc"] == pytest.approx(want, abs=1e-12)
    second_true = ["c", "a", "b"]
    second_scores = np.array([scores["c"], scores["b"], scores["c"]])
    want = roc_auc_score(second_true, second_scores, multi_class="ovr", labels=["a", "b", "c"])
    assert buckets[1]["auc"] == pytest.approx(want, abs=1e-12)


def test_rows_missing_a_score_leave_auc_undefined() -> None:
    items = [_row(0, "v1", 1, 1, score=[0.9]), _row(1, "v1", 0, 1, score=None)]
    assert quality_by_version(items)["v1"]["auc"] is None
    scored = [_row(0, "v1", 1, 1, score=[0.9]), _row(1, "v1", 0, 1, score=[0.3])]
    assert quality_by_version(scored)["v1"]["auc"] == 1.0
