"""Offline evaluation of a candidate version against the champion on a labelled holdout set.

Each version predicts the whole holdout in its own throw-away process (`run_isolated`:
model code never runs in the server), which also times one-row and 32-row predicts and
reports its peak memory. Quality, per-slice quality, disagreement, signature
compatibility and data checks are computed here from the arrays that come back, into
the "evaluation" result document (its shape: docs/promotion.md).
"""

from __future__ import annotations

import hashlib
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from shipyard.config import IsolationLimits, Settings
from shipyard.errors import InvalidInput, UnsupportedModel
from shipyard.promotion.metrics import Metrics, classification_metrics, regression_metrics
from shipyard.runtimes.base import Tensors, VersionSpec
from shipyard.runtimes.environments import EnvironmentBuilder
from shipyard.runtimes.isolated import _decode_array, _encode_array, run_isolated
from shipyard.signature import Signature

if TYPE_CHECKING:
    from shipyard.batch.model import Scorer
    from shipyard.monitoring.quality import Task
    from shipyard.registry.records import ModelVersion
    from shipyard.registry.service import Registry

CHUNK_ROWS = 1024
ONE_ROW_REPEATS = 50
BATCH_ROWS = 32
BATCH_REPEATS = 20
MISSING_SLICE = "(missing)"
"""The slice of rows whose slice column is empty."""
_SCORE_NAMES = ("proba", "probabilit")


@dataclass(frozen=True)
class EvaluationRequest:
    data_uri: str
    """A .csv or .parquet file: a local path or an fsspec URI."""
    label: str
    """The column holding the true label (or target value)."""
    slice_by: str | None = None
    """A column whose values split the metrics (it may or may not be a model input)."""
    max_rows: int | None = None
    """Evaluate on the first rows only."""


@dataclass(frozen=True)
class Holdout:
    table: pa.Table
    """Every column of the file (label and slice column included), first max_rows rows."""
    labels: np.ndarray
    digest: str


@dataclass(frozen=True)
class Predictions:
    """What one version answered on the holdout."""

    rows: np.ndarray
    """Positions (ascending) of the rows it scored; the others are errors."""
    values: np.ndarray
    """The predicted label or value of each scored row."""
    scores: np.ndarray | None
    """Class scores (rows by classes) when the model gives them."""
    classes: list[Any] | None
    """The class each score column stands for."""
    errors: int
    latency: dict[str, float]
    peak_rss: int


def evaluate(
    registry: Registry,
    candidate: ModelVersion,
    champion: ModelVersion | None,
    request: EvaluationRequest,
    limits: IsolationLimits,
) -> dict[str, Any]:
    """The evaluation result document of `candidate` (vs `champion`) on the holdout."""
    # Owned by a sibling module written alongside; imported here so this one loads alone.
    from shipyard.promotion.compatibility import signature_compatibility
    from shipyard.promotion.data_checks import data_checks

    holdout = read_holdout(request)
    ours = _predict(registry, candidate, holdout, request, limits)
    theirs = _predict(registry, champion, holdout, request, limits) if champion else None
    task = _task(candidate.signature, ours, holdout.labels)
    signature: dict[str, Any] = {"compatible": True, "breaking": [], "non_breaking": []}
    if champion is not None:
        signature = signature_compatibility(champion.signature, candidate.signature)
    return {
        "kind": "evaluation",
        "candidate": _ref(candidate),
        "champion": _ref(champion) if champion else None,
        "data": {
            "uri": request.data_uri,
            "rows": holdout.table.num_rows,
            "label": request.label,
            "digest": holdout.digest,
            "slice_by": request.slice_by,
        },
        "task": task,
        "metrics": {
            "candidate": _metrics(task, holdout.labels, ours, None),
            "champion": _metrics(task, holdout.labels, theirs, None) if theirs else None,
        },
        "slices": _slices(task, holdout, request.slice_by, ours, theirs),
        "disagreement": _disagreement(task, ours, theirs) if theirs else None,
        "latency": {"candidate": ours.latency, "champion": theirs.latency if theirs else None},
        "resources": {
            "candidate": _resources(candidate, ours),
            "champion": _resources(champion, theirs) if champion and theirs else None,
        },
        "signature": signature,
        "data_checks": data_checks(
            reference_sample(registry, candidate), _columns(_features(holdout, candidate, request))
        ),
        "errors": {"candidate": ours.errors, "champion": theirs.errors if theirs else None},
    }


def reference_sample(registry: Registry, version: ModelVersion) -> dict[str, np.ndarray] | None:
    """The sample of inputs stored with the version at registration, by column; None if none."""
    if version.reference_sample is None:
        return None
    return _columns(registry.artifacts.read_table(version.reference_sample.digest))


def read_holdout(request: EvaluationRequest) -> Holdout:
    """The holdout file, checked for its label (and slice) column; InvalidInput saying why not."""
    from fsspec.core import url_to_fs

    from shipyard.batch.files import decode, format_of

    fmt = format_of(request.data_uri)
    if fmt not in ("csv", "parquet"):
        raise InvalidInput(f"evaluation data must be a .csv or .parquet file: {request.data_uri}")
    fs, path = url_to_fs(request.data_uri)
    if not fs.isfile(path):
        raise InvalidInput(f"no such evaluation data file: {request.data_uri}")
    with fs.open(path, "rb") as handle:
        data = handle.read()
    table = decode(data, fmt)
    for column, what in ((request.label, "label"), (request.slice_by, "slice")):
        if column is not None and column not in table.column_names:
            raise InvalidInput(
                f"{request.data_uri} has no {what} column {column!r} "
                f"(columns: {', '.join(table.column_names)})"
            )
    if request.max_rows is not None:
        table = table.slice(0, max(request.max_rows, 0))
    if table.num_rows == 0:
        raise InvalidInput(f"{request.data_uri} has no rows to evaluate on")
    labels = table.column(request.label)
    if labels.null_count:
        raise InvalidInput(f"the label column {request.label!r} has {labels.null_count} empty rows")
    return Holdout(
        table=table,
        labels=labels.to_numpy(zero_copy_only=False),
        digest=hashlib.sha256(data).hexdigest(),
    )


# --- scoring, in the child process -------------------------------------------------------


def _predict(
    registry: Registry,
    record: ModelVersion,
    holdout: Holdout,
    request: EvaluationRequest,
    limits: IsolationLimits,
) -> Predictions:
    """Score the holdout with one version in its own child process."""
    key = f"{record.model}:{record.version}"
    spec = VersionSpec.of(record, registry.artifacts.materialize(record.artifact.digest))
    label_output, score_output = _outputs(record.signature)
    wanted = [name for name in (label_output, score_output) if name is not None]
    # A version whose pins this interpreter does not satisfy scores in its own environment.
    python = EnvironmentBuilder.from_settings(Settings()).python_for(spec.environment)
    answer = run_isolated(
        _score_here, spec, _features(holdout, record, request), wanted or None,
        limits=limits, task=f"evaluating {key} on {request.data_uri}", python=python,
    )  # fmt: skip
    try:
        rows = _decode_array(answer["rows"]).astype(np.int64)
        outputs = {str(name): _decode_array(text) for name, text in answer["outputs"].items()}
        errors, reasons = int(answer["errors"]), [str(r) for r in answer["reasons"]]
        timings = {str(k): [float(t) for t in v] for k, v in answer["timings"].items()}
        peak_rss = int(answer["peak_rss"])
    except (KeyError, TypeError, ValueError, OSError, EOFError) as exc:
        raise UnsupportedModel(f"evaluating {key} gave an unreadable answer: {exc}") from None
    if rows.size == 0:
        why = f": {reasons[0]}" if reasons else ""
        raise InvalidInput(f"{key} could not score any of the {holdout.table.num_rows} rows{why}")
    values, scores, classes = _interpret(outputs, label_output, score_output, holdout.labels[rows])
    return Predictions(
        rows=rows,
        values=values,
        scores=scores,
        classes=classes,
        errors=errors,
        latency=_latency(timings),
        peak_rss=peak_rss,
    )


def _score_here(spec: VersionSpec, table: pa.Table, outputs: list[str] | None) -> dict[str, Any]:
    """In the child: predict every row in chunks, then time small predicts; JSON-shaped."""
    from shipyard.batch.model import Scorer

    scorer = Scorer(spec, outputs)
    positions: list[np.ndarray] = []
    pieces: list[Tensors] = []
    reasons: dict[int, str] = {}
    sample: Tensors | None = None  # scored rows of the first chunk, to time predicts on
    for start in range(0, table.num_rows, CHUNK_ROWS):
        chunk = table.slice(start, CHUNK_ROWS)
        tensors, chunk_positions, chunk_pieces, rejected = _score_chunk(scorer, chunk)
        reasons.update({start + row: why for row, why in rejected.items()})
        for rows, result in chunk_pieces:
            positions.append(rows + start)
            pieces.append(result)
        if sample is None and chunk_positions.size:
            sample = tensors
    timings = _time_predicts(scorer, sample) if sample is not None else {}
    names = list(pieces[0]) if pieces else []
    return {
        "rows": _encode_array(np.concatenate(positions) if positions else np.empty(0, np.int64)),
        "outputs": {
            n: _encode_array(np.concatenate([np.asarray(p[n]) for p in pieces])) for n in names
        },
        "errors": len(reasons),
        "reasons": [reasons[row] for row in sorted(reasons)[:3]],
        "timings": timings,
        # Linux reports kilobytes.
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _score_chunk(
    scorer: Scorer, chunk: pa.Table
) -> tuple[Tensors, np.ndarray, list[tuple[np.ndarray, Tensors]], dict[int, str]]:
    """Scorer.score's steps, keeping the output arrays whole (score() splits a 2-D output
    into columns) and the accepted rows' inputs for timing."""
    reasons: dict[int, str] = {}
    tensors = scorer._inputs(chunk, (), reasons)
    positions = np.arange(chunk.num_rows, dtype=np.int64)
    if reasons:
        positions = np.setdiff1d(positions, np.fromiter(reasons, dtype=np.int64))
        tensors = {name: array[positions] for name, array in tensors.items()}
    pieces, rejected = scorer._predict(tensors, positions)
    reasons.update(rejected)
    accepted = np.concatenate([rows for rows, _ in pieces]) if pieces else positions[:0]
    # Only rows the model accepted are timed: a refused row would time an exception.
    keep = np.isin(positions, accepted)
    return {n: a[keep] for n, a in tensors.items()}, accepted, pieces, reasons


def _time_predicts(scorer: Scorer, sample: Tensors) -> dict[str, list[float]]:
    """Milliseconds of one-row and 32-row predicts on scored rows, cycling through them."""
    count = len(next(iter(sample.values())))
    timings: dict[str, list[float]] = {"one_row": [], "batch32": []}
    for label, size, repeats in (
        ("one_row", 1, ONE_ROW_REPEATS),
        ("batch32", BATCH_ROWS, BATCH_REPEATS),
    ):
        for i in range(repeats):
            rows = (np.arange(size) + i * size) % count
            batch = {name: array[rows] for name, array in sample.items()}
            started = time.perf_counter()
            scorer.runtime.predict(batch, scorer.outputs)
            timings[label].append((time.perf_counter() - started) * 1000)
    return timings


# --- reading the answers ---------------------------------------------------------------


def _outputs(signature: Signature | None) -> tuple[str | None, str | None]:
    """The output naming the predicted label or value, and the one with class scores."""
    outputs = signature.outputs if signature else []
    label = "predict" if any(o.name == "predict" for o in outputs) else None
    score = next(
        (o.name for o in outputs
         if len(o.shape) == 2 and any(part in o.name.lower() for part in _SCORE_NAMES)),
        None,
    )  # fmt: skip
    return label, score


def _interpret(
    outputs: Tensors, label_output: str | None, score_output: str | None, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, list[Any] | None]:
    """Predicted labels or values, class scores and the scores' classes from raw outputs."""
    scores = outputs.get(score_output) if score_output else None
    if label_output is None and scores is None and outputs:
        # No signature to go by: the first output; a 2-D one of several columns holds scores.
        first = next(iter(outputs.values()))
        if first.ndim == 2 and first.shape[1] > 1:
            scores = first
        else:
            outputs = {"predict": first.reshape(len(first))}
            label_output = "predict"
    values = outputs.get(label_output) if label_output else None
    classes = None
    if scores is not None:
        scores = np.asarray(scores, dtype=float).reshape(len(scores), -1)
        classes = _score_classes(labels, values, scores.shape[1])
        if values is None:
            top = scores.argmax(axis=1)
            values = np.asarray(classes, dtype=object)[top] if classes else top
    if values is None:
        raise UnsupportedModel(f"the model gave none of the outputs asked for: {list(outputs)}")
    return _like(np.asarray(values).reshape(len(values)), labels), scores, classes


def _score_classes(labels: np.ndarray, values: np.ndarray | None, columns: int) -> list[Any] | None:
    """Which class each score column stands for: as sklearn orders them, the sorted classes
    seen in labels and predictions, or 0..k-1 when some class never shows up; None if unknowable."""
    seen = labels if values is None else np.concatenate([labels, _like(values, labels)])
    try:
        observed = [v.item() if isinstance(v, np.generic) else v for v in np.unique(seen)]
    except TypeError:  # labels of mixed types have no order
        return None
    if len(observed) == columns:
        return observed
    whole = all(isinstance(v, int | float) and float(v).is_integer() for v in observed)
    if whole and all(0 <= v < columns for v in observed):
        return list(range(columns))
    return None


def _like(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Predictions comparable with the labels: text against text, numbers against numbers."""
    text_labels = labels.dtype.kind in "OUS"
    if text_labels != (values.dtype.kind in "OUS"):
        return values.astype(str) if text_labels else values
    return values


def _task(signature: Signature | None, predictions: Predictions, labels: np.ndarray) -> Task:
    """Classification when the model gives class scores or non-float labels; regression when
    it predicts floats; from the labels (whole numbers or text: classes) otherwise."""
    from shipyard.monitoring.quality import infer_task

    if predictions.scores is not None:
        return "classification"
    spec = next((o for o in signature.outputs if o.name == "predict"), None) if signature else None
    if spec is not None:
        return "regression" if spec.datatype.startswith("FP") else "classification"
    return infer_task(labels.tolist())


# --- the result --------------------------------------------------------------------------


def _metrics(
    task: Task, labels: np.ndarray, predictions: Predictions, select: np.ndarray | None
) -> Metrics:
    """Metrics over the rows the model scored, within `select` (a mask over all rows) if given."""
    keep = select[predictions.rows] if select is not None else slice(None)
    truth = labels[predictions.rows][keep]
    values = predictions.values[keep]
    if task == "regression":
        return regression_metrics(truth, values)
    scores = predictions.scores[keep] if predictions.scores is not None else None
    return classification_metrics(truth, values, scores, predictions.classes)


def _slices(
    task: Task,
    holdout: Holdout,
    column: str | None,
    ours: Predictions,
    theirs: Predictions | None,
) -> list[dict[str, Any]]:
    if column is None:
        return []
    values = [
        MISSING_SLICE if v is None else str(v) for v in holdout.table.column(column).to_pylist()
    ]
    keys = np.asarray(values, dtype=object)
    result = []
    for value in sorted(set(values)):
        select = keys == value
        result.append(
            {
                "value": value,
                "rows": int(select.sum()),
                "candidate": _metrics(task, holdout.labels, ours, select),
                "champion": _metrics(task, holdout.labels, theirs, select) if theirs else None,
            }
        )
    return result


def _disagreement(task: Task, ours: Predictions, theirs: Predictions) -> float | None:
    """Over rows both scored: the share of differing labels, or the mean absolute
    difference in units of the champion predictions' spread."""
    _, mine, other = np.intersect1d(ours.rows, theirs.rows, return_indices=True)
    if mine.size == 0:
        return None
    a, b = ours.values[mine], theirs.values[other]
    if task == "classification":
        return float(np.mean(_like(a, b) != b))
    b = b.astype(float)
    spread = float(np.std(b)) or 1.0
    return float(np.mean(np.abs(a.astype(float) - b))) / spread


def _latency(timings: dict[str, list[float]]) -> dict[str, float]:
    result = {}
    for name in ("one_row", "batch32"):
        times = timings.get(name) or [0.0]
        result[f"{name}_p50_ms"] = float(np.percentile(times, 50))
        result[f"{name}_p95_ms"] = float(np.percentile(times, 95))
    return result


def _resources(record: ModelVersion, predictions: Predictions) -> dict[str, int]:
    return {"artifact_bytes": record.artifact.size, "worker_memory_bytes": predictions.peak_rss}


def _ref(record: ModelVersion) -> dict[str, Any]:
    return {"model": record.model, "version": record.version}


def _features(holdout: Holdout, record: ModelVersion, request: EvaluationRequest) -> pa.Table:
    """The holdout without the label, and without the slice column unless the model takes it."""
    inputs = {spec.name for spec in record.signature.inputs} if record.signature else set()
    drop = [request.label]
    if request.slice_by is not None and request.slice_by not in inputs:
        drop.append(request.slice_by)
    return holdout.table.drop_columns(drop)


def _columns(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
