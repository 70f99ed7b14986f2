"""Data drift: does live traffic still look like the data the model was trained on?

Pure functions of two samples per feature, the reference (training or a known-good
window) and the current one (recent traffic): a Kolmogorov-Smirnov test for numeric
features, a chi-squared test of homogeneity for categorical ones, and the population
stability index (PSI) for both. The dataset drifts when a large enough share of its
features do. Callers collect the samples and store or render the result.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from shipyard.config import DEFAULT_DRIFT_P_VALUE, DEFAULT_DRIFT_SHARE

PSI_BINS = 10
PSI_EPSILON = 1e-4  # stands in for an empty bin's share so PSI stays finite
MAX_INT_CATEGORIES = 10  # integer features with more distinct values are treated as numeric
HISTOGRAM_CATEGORIES = 20  # categories drawn one by one; the rest share an "(other)" bar
OTHER_LABEL = "(other)"


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature, and the whole dataset, count as drifted."""

    p_value: float = DEFAULT_DRIFT_P_VALUE
    """A feature drifts when its test's p-value is below this."""
    psi: float | None = None
    """If set, a feature also drifts when its PSI is at least this (0.2 is a common choice)."""
    share: float = DEFAULT_DRIFT_SHARE
    """The dataset drifts when at least this share of the tested features drift."""
    min_rows: int = 30
    """Fewer current rows than this give no verdict (for a feature: fewer non-missing
    rows on either side)."""

    def __post_init__(self) -> None:
        if not 0 < self.p_value < 1:
            raise ValueError(f"p_value must be between 0 and 1 (exclusive), got {self.p_value}")
        if self.psi is not None and not self.psi > 0:
            raise ValueError(f"psi must be positive when set, got {self.psi}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], got {self.share}")
        if self.min_rows < 1:
            raise ValueError(f"min_rows must be at least 1, got {self.min_rows}")


DEFAULT_THRESHOLDS = DriftThresholds()


@dataclass(frozen=True)
class Histogram:
    """Reference and current shares per bin (numeric) or category, for drawing."""

    labels: list[str]
    reference: list[float]
    current: list[float]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        return cls(
            labels=[str(label) for label in d["labels"]],
            reference=[float(x) for x in d["reference"]],
            current=[float(x) for x in d["current"]],
        )


@dataclass(frozen=True)
class FeatureDrift:
    """The drift test of one feature (or of the model's output)."""

    name: str
    kind: str  # "numeric" or "categorical"
    test: str  # "ks" or "chi2"
    statistic: float  # NaN when one side has no values
    p_value: float
    psi: float
    drifted: bool
    enough_rows: bool  # False: too few rows for a verdict, so drifted is False
    reference_rows: int  # non-missing values tested
    current_rows: int
    reference_missing: int  # NaN / None values dropped before testing
    current_missing: int
    histogram: Histogram

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("statistic", "p_value", "psi"):
            d[key] = _json_float(d[key])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureDrift:
        return cls(
            name=str(d["name"]),
            kind=str(d["kind"]),
            test=str(d["test"]),
            statistic=_float_or_nan(d["statistic"]),
            p_value=_float_or_nan(d["p_value"]),
            psi=_float_or_nan(d["psi"]),
            drifted=bool(d["drifted"]),
            enough_rows=bool(d["enough_rows"]),
            reference_rows=int(d["reference_rows"]),
            current_rows=int(d["current_rows"]),
            reference_missing=int(d["reference_missing"]),
            current_missing=int(d["current_missing"]),
            histogram=Histogram.from_dict(d["histogram"]),
        )


@dataclass(frozen=True)
class DriftResult:
    """Per-feature tests plus the dataset verdict."""

    features: list[FeatureDrift]
    output: FeatureDrift | None  # prediction drift; not counted in share
    share: float  # drifted features / features with a verdict (0.0 when none)
    drifted: bool  # share >= thresholds.share; False without enough rows
    enough_rows: bool
    reference_rows: int
    current_rows: int
    thresholds: DriftThresholds

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able types only; NaN becomes None."""
        return {
            "features": [feature.to_dict() for feature in self.features],
            "output": None if self.output is None else self.output.to_dict(),
            "share": _json_float(self.share),
            "drifted": self.drifted,
            "enough_rows": self.enough_rows,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "thresholds": asdict(self.thresholds),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DriftResult:
        """Rebuild a result stored with to_dict, e.g. to render it again."""
        output = d.get("output")
        return cls(
            features=[FeatureDrift.from_dict(feature) for feature in d["features"]],
            output=None if output is None else FeatureDrift.from_dict(output),
            share=_float_or_nan(d["share"]),
            drifted=bool(d["drifted"]),
            enough_rows=bool(d["enough_rows"]),
            reference_rows=int(d["reference_rows"]),
            current_rows=int(d["current_rows"]),
            thresholds=DriftThresholds(**d["thresholds"]),
        )


def feature_kind(reference: np.ndarray) -> str:
    """ "categorical" for strings, bytes, bools, objects and few-valued integers, else "numeric"."""
    dtype_kind = reference.dtype.kind
    if dtype_kind in "USOb":
        return "categorical"
    if dtype_kind in "iu":
        return "categorical" if np.unique(reference).size <= MAX_INT_CATEGORIES else "numeric"
    if dtype_kind == "f":
        return "numeric"
    raise ValueError(f"cannot test drift of {reference.dtype} values")


def feature_drift(
    name: str,
    reference: np.ndarray,
    current: np.ndarray,
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
) -> FeatureDrift:
    """Test whether one feature's current values come from the reference distribution."""
    reference = _as_1d(name, reference)
    return _drift(name, feature_kind(reference), reference, _as_1d(name, current), thresholds)


def detect_drift(
    reference: Mapping[str, np.ndarray],
    current: Mapping[str, np.ndarray],
    thresholds: DriftThresholds = DEFAULT_THRESHOLDS,
    reference_output: np.ndarray | None = None,
    current_output: np.ndarray | None = None,
) -> DriftResult:
    """Test every reference feature that current also has (others are skipped).

    Outputs, when both are given, are tested too but do not count towards the
    dataset verdict. A 2-D output with several columns (class scores) is reduced
    to its argmax per row and tested as a categorical class label.
    """
    names = [name for name in reference if name in current]
    features = [feature_drift(name, reference[name], current[name], thresholds) for name in names]
    output = None
    if reference_output is not None and current_output is not None:
        output = _output_drift(reference_output, current_output, thresholds)

    tested = [feature for feature in features if feature.enough_rows]
    share = sum(feature.drifted for feature in tested) / len(tested) if tested else 0.0
    everything = [*features, *([output] if output else [])]
    reference_rows = max((f.reference_rows + f.reference_missing for f in everything), default=0)
    current_rows = max((f.current_rows + f.current_missing for f in everything), default=0)
    enough_rows = current_rows >= thresholds.min_rows
    return DriftResult(
        features=features,
        output=output,
        share=share,
        drifted=enough_rows and bool(tested) and share >= thresholds.share,
        enough_rows=enough_rows,
        reference_rows=reference_rows,
        current_rows=current_rows,
        thresholds=thresholds,
    )


def _output_drift(
    reference: np.ndarray, current: np.ndarray, thresholds: DriftThresholds
) -> FeatureDrift:
    reference, current = np.asarray(reference), np.asarray(current)
    if reference.ndim == 2 and reference.shape[1] > 1:
        classes = (reference.argmax(axis=1), np.asarray(current).argmax(axis=1))
        return _drift("output", "categorical", *classes, thresholds)
    return feature_drift("output", reference, current, thresholds)


def _drift(
    name: str,
    kind: str,
    reference: np.ndarray,
    current: np.ndarray,
    thresholds: DriftThresholds,
) -> FeatureDrift:
    ref, ref_missing = _drop_missing(reference)
    cur, cur_missing = _drop_missing(current)
    test, statistic, p_value, psi, histogram = (
        _numeric(ref, cur) if kind == "numeric" else _categorical(ref, cur)
    )
    enough_rows = min(ref.size, cur.size) >= thresholds.min_rows
    psi_drifted = thresholds.psi is not None and psi >= thresholds.psi
    return FeatureDrift(
        name=name,
        kind=kind,
        test=test,
        statistic=statistic,
        p_value=p_value,
        psi=psi,
        drifted=enough_rows and (p_value < thresholds.p_value or psi_drifted),
        enough_rows=enough_rows,
        reference_rows=int(ref.size),
        current_rows=int(cur.size),
        reference_missing=ref_missing,
        current_missing=cur_missing,
        histogram=histogram,
    )


_Tested = tuple[str, float, float, float, Histogram]


def _numeric(reference: np.ndarray, current: np.ndarray) -> _Tested:
    ref, cur = reference.astype(np.float64), current.astype(np.float64)
    edges = _quantile_edges(ref)
    ref_counts = np.bincount(np.searchsorted(edges, ref), minlength=edges.size + 1)
    cur_counts = np.bincount(np.searchsorted(edges, cur), minlength=edges.size + 1)
    histogram = Histogram(_bin_labels(edges), _shares(ref_counts), _shares(cur_counts))
    if ref.size == 0 or cur.size == 0:
        return "ks", math.nan, math.nan, math.nan, histogram
    with warnings.catch_warnings():
        # Samples up to 10,000 try the exact p-value; when that fails scipy warns and
        # uses the asymptotic one, which is what we would have chosen anyway.
        warnings.filterwarnings("ignore", "ks_2samp: Exact calculation", RuntimeWarning)
        result = stats.ks_2samp(ref, cur)
    statistic, p_value = float(result.statistic), float(result.pvalue)
    return "ks", statistic, p_value, _psi(ref_counts, cur_counts), histogram


def _categorical(reference: np.ndarray, current: np.ndarray) -> _Tested:
    ref, cur = _category_keys(reference), _category_keys(current)
    if (ref.dtype.kind == "U") != (cur.dtype.kind == "U"):
        ref, cur = _as_labels(ref), _as_labels(cur)
    categories = np.unique(np.concatenate([ref, cur]))
    ref_counts = np.bincount(np.searchsorted(categories, ref), minlength=categories.size)
    cur_counts = np.bincount(np.searchsorted(categories, cur), minlength=categories.size)
    histogram = _category_histogram(categories, ref_counts, cur_counts)
    if ref.size == 0 or cur.size == 0:
        return "chi2", math.nan, math.nan, math.nan, histogram
    if categories.size < 2:
        return "chi2", 0.0, 1.0, 0.0, histogram  # one category on both sides: nothing can move
    result = stats.chi2_contingency(np.vstack([ref_counts, cur_counts]))
    statistic, p_value = float(result.statistic), float(result.pvalue)
    return "chi2", statistic, p_value, _psi(ref_counts, cur_counts), histogram


def _as_1d(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"feature {name!r} must be a 1-D array, got shape {array.shape}")
    return array


def _drop_missing(values: np.ndarray) -> tuple[np.ndarray, int]:
    if values.dtype.kind == "f":
        keep = ~np.isnan(values)
    elif values.dtype.kind == "O":
        keep = np.array([not _is_missing(v) for v in values.tolist()], dtype=bool)
    else:
        return values, 0
    return values[keep], int(values.size - np.count_nonzero(keep))


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _quantile_edges(reference: np.ndarray) -> np.ndarray:
    """Inner bin edges at the reference deciles; the outer bins are open to +-inf."""
    if reference.size == 0:
        return np.empty(0)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, PSI_BINS + 1)[1:-1]))
    finite: np.ndarray = edges[np.isfinite(edges)]
    return finite


def _bin_labels(edges: np.ndarray) -> list[str]:
    """Labels of the bins (-inf, e0], (e0, e1], ..., (en, inf) that searchsorted assigns."""
    if edges.size == 0:
        return ["all"]
    shown = [f"{edge:.4g}" for edge in edges.tolist()]
    inner = [f"({low}, {high}]" for low, high in itertools.pairwise(shown)]
    return [f"≤ {shown[0]}", *inner, f"> {shown[-1]}"]


def _category_keys(values: np.ndarray) -> np.ndarray:
    """Values np.unique can sort: numbers and bools as they are, anything else as text."""
    if values.dtype.kind in "biufU":
        return values
    return _as_labels(values)


def _as_labels(values: np.ndarray) -> np.ndarray:
    return np.array([_label(v) for v in values.tolist()], dtype=str)


def _label(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # an int feature read back as float keeps its label
    return str(value)


def _category_histogram(
    categories: np.ndarray, ref_counts: np.ndarray, cur_counts: np.ndarray
) -> Histogram:
    labels = [_label(category) for category in categories.tolist()]
    ref_shares, cur_shares = _shares(ref_counts), _shares(cur_counts)
    if len(labels) <= HISTOGRAM_CATEGORIES:
        return Histogram(labels, ref_shares, cur_shares)
    order = np.argsort(-(np.array(ref_shares) + np.array(cur_shares)), kind="stable").tolist()
    shown, rest = order[: HISTOGRAM_CATEGORIES - 1], order[HISTOGRAM_CATEGORIES - 1 :]
    return Histogram(
        [*(labels[i] for i in shown), OTHER_LABEL],
        [*(ref_shares[i] for i in shown), math.fsum(ref_shares[i] for i in rest)],
        [*(cur_shares[i] for i in shown), math.fsum(cur_shares[i] for i in rest)],
    )


def _shares(counts: np.ndarray) -> list[float]:
    total = int(counts.sum())
    return [float(count) / total if total else 0.0 for count in counts.tolist()]


def _psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    ref = np.maximum(ref_counts / ref_counts.sum(), PSI_EPSILON)
    cur = np.maximum(cur_counts / cur_counts.sum(), PSI_EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _float_or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)
