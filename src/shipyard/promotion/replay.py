"""Replay a deployment's logged traffic against a candidate version, before it serves any.

The prediction log holds what the deployment was asked and what it answered. The
candidate re-predicts every logged request, one request at a time as the server would,
in one throw-away process (its code never runs here), and its answers are compared with
the logged ones on the deployment's prediction output: how often they agree, which
labels flip to which, how the output's distribution moves, how often the candidate fails
and how long it takes per request.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from shipyard.config import IsolationLimits
from shipyard.errors import InvalidInput
from shipyard.monitoring.drift import _psi, _quantile_edges
from shipyard.monitoring.store import (
    READ_CHUNK,
    MonitoringStore,
    PredictionFilter,
    PredictionRecord,
    prediction_output,
)
from shipyard.registry.records import ModelVersion
from shipyard.registry.service import Registry
from shipyard.runtimes.base import Tensors, VersionSpec
from shipyard.runtimes.isolated import run_isolated
from shipyard.serving.types import Tensor
from shipyard.serving.validation import conform
from shipyard.signature import NUMPY_DTYPES, Signature

MAX_ERROR_SAMPLES = 5
RTOL, ATOL = 1e-3, 1e-6
"""Regression outputs agree when np.isclose says so with these tolerances."""


def replay(
    registry: Registry,
    store: MonitoringStore,
    deployment: str,
    candidate: ModelVersion,
    window_seconds: float | None,
    limit: int | None,
    limits: IsolationLimits,
) -> dict[str, Any]:
    """The replay result (kind "replay") of `candidate` on the deployment's logged requests:
    the newest `limit` (None: all) within the last `window_seconds` (None: all time)."""
    if limit is not None and limit < 1:
        raise InvalidInput(f"limit must be at least 1, got {limit}")
    wanted = registry.deployments.get(deployment).manifest.watch.prediction_output
    since = time.time() - window_seconds if window_seconds is not None else None
    records = logged_requests(store, deployment, since, limit)
    if not records:
        raise InvalidInput(
            f"the prediction log holds no requests of {deployment}{_window_text(window_seconds)}; "
            "is monitoring.sample above 0?"
        )
    output = _compared_output(records, wanted)
    prepared = [_candidate_inputs(record, candidate.signature) for record in records]
    answers = _predict_all(registry, candidate, prepared, output, limits)
    outcome = _compare(records, answers, output)
    return {
        "kind": "replay",
        "candidate": {"model": candidate.model, "version": candidate.version},
        "deployment": deployment,
        "window_seconds": window_seconds,
        "since": since,
        "requests": len(records),
        "rows": sum(record.rows for record in records),
        "logged_versions": _logged_versions(records),
        "output": output,
        **outcome.document(len(records)),
    }


def logged_requests(
    store: MonitoringStore, deployment: str, since: float | None, limit: int | None
) -> list[PredictionRecord]:
    """The deployment's logged requests since `since`, oldest first: the newest `limit`."""
    # Failed requests have no answer to agree with (their inputs still count for drift).
    where = PredictionFilter(deployment=deployment, since=since, answered_only=True)
    if limit is not None:
        return list(reversed(store.predictions(where, limit=limit)))
    records: list[PredictionRecord] = []
    while True:  # paging forward by id: a window may hold more than one read should take
        after = records[-1].id if records else 0
        page = store.predictions(where, limit=READ_CHUNK, after_id=after)
        records += page
        if len(page) < READ_CHUNK:
            return records


def _window_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f" in the last {seconds / size:g}{unit}"
    return f" in the last {seconds:g}s"


def _compared_output(records: Sequence[PredictionRecord], wanted: str | None) -> str:
    """The output compared: the manifest's, else the log's own rule on the newest request."""
    newest = {name: np.asarray(values) for name, values in records[-1].outputs.items()}
    name = prediction_output(newest, wanted)
    if name is None:
        held = ", ".join(newest) or "none"
        raise InvalidInput(
            f"the logged requests hold no output {wanted!r} to compare (they hold {held})"
            if wanted is not None
            else "the logged requests hold no outputs to compare"
        )
    return name


def _logged_versions(records: Sequence[PredictionRecord]) -> dict[str, int]:
    rows: Counter[str] = Counter()
    for record in records:
        rows[str(record.version)] += record.rows
    return dict(rows)


# ---- the candidate's inputs ------------------------------------------------------------


def _candidate_inputs(record: PredictionRecord, signature: Signature | None) -> Tensors | str:
    """The logged inputs as the candidate takes them, or why they cannot be.

    The log keeps JSON, so dtypes are re-derived from the candidate's signature. A
    candidate whose inputs are laid out differently (one matrix vs named columns) is fed
    the same values rearranged, as a client adapting to it would send them.
    """
    logged = {name: np.asarray(values) for name, values in record.inputs.items()}
    if signature is None or not signature.inputs:
        return logged
    try:
        arranged = _arranged(logged, [spec.name for spec in signature.inputs])
        specs = {spec.name: spec for spec in signature.inputs}
        tensors = [
            Tensor(name, specs[name].datatype, _cast(name, array, specs[name].datatype))
            for name, array in arranged.items()
        ]
        return conform(tensors, signature)  # the server's own checks: names, shapes
    except InvalidInput as exc:
        return exc.message


def _arranged(logged: Tensors, names: list[str]) -> Tensors:
    if all(name in logged for name in names):
        return {name: logged[name] for name in names}
    columns = list(logged.values())
    if len(names) == 1:
        if len(columns) == 1:
            return {names[0]: columns[0]}
        if all(column.ndim == 1 for column in columns):
            return {names[0]: np.column_stack(columns)}
    if len(columns) == 1 and columns[0].ndim == 2 and columns[0].shape[1] == len(names):
        return {name: columns[0][:, j] for j, name in enumerate(names)}
    raise InvalidInput(
        f"the candidate takes {', '.join(names)}; the logged request holds {', '.join(logged)}"
    )


def _cast(name: str, array: np.ndarray, datatype: str) -> np.ndarray:
    target = NUMPY_DTYPES[datatype]
    if datatype == "BYTES":
        return array.astype(object)
    # same_kind, not safe: JSON kept FP32 as a double; it never turns floats into integers.
    if not np.can_cast(array.dtype, target, casting="same_kind"):
        raise InvalidInput(f"input {name!r}: the candidate takes {datatype}, got {array.dtype}")
    return array.astype(target)


# ---- predicting in the child -------------------------------------------------------------


def _predict_all(
    registry: Registry,
    candidate: ModelVersion,
    prepared: list[Tensors | str],
    output: str,
    limits: IsolationLimits,
) -> list[dict[str, Any]]:
    """One answer per request: {"output": values, "ms": float} or {"error": message}."""
    runnable = [inputs for inputs in prepared if not isinstance(inputs, str)]
    answered: list[dict[str, Any]] = []
    if runnable:
        path = registry.artifacts.materialize(candidate.artifact.digest)
        spec = VersionSpec.of(candidate, path)
        value = run_isolated(
            replay_here, spec, runnable, output,
            limits=limits, task=f"replaying {len(runnable)} requests on {spec.key}",
        )  # fmt: skip
        if not isinstance(value, list) or len(value) != len(runnable):
            raise InvalidInput(f"replaying on {spec.key} gave an answer of the wrong shape")
        answered = [entry if isinstance(entry, dict) else {"error": "no answer"} for entry in value]
    replies = iter(answered)
    return [{"error": inputs} if isinstance(inputs, str) else next(replies) for inputs in prepared]


def replay_here(spec: VersionSpec, requests: list[Tensors], output: str) -> list[dict[str, Any]]:
    """In the child: load once, then predict and time each request on its own."""
    from shipyard.runtimes import load

    runtime = load(spec)
    answers: list[dict[str, Any]] = []
    for inputs in requests:
        started = time.perf_counter()
        try:
            result = runtime.predict(inputs, [output])
            values = np.asarray(result[output])
        except Exception as exc:  # the candidate's failure on this request, kept as a sample
            answers.append({"error": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        elapsed = (time.perf_counter() - started) * 1000.0
        answers.append({"output": _plain(values.tolist()), "ms": elapsed})
    return answers


def _plain(value: Any) -> Any:
    """JSON-shaped values, bytes as text: as the prediction log keeps them."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)


# ---- comparing -----------------------------------------------------------------------------


@dataclass
class _Outcome:
    compared: int = 0
    agreed: int = 0
    flips: Counter[tuple[Any, Any]] = field(default_factory=Counter)
    logged: list[Any] = field(default_factory=list)
    replayed: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    classification: bool = True

    def document(self, requests: int) -> dict[str, Any]:
        return {
            "agreement": self.agreed / self.compared if self.compared else None,
            "flips": _flips(self.flips) if self.classification else [],
            "output_drift": _output_drift(self.logged, self.replayed, self.classification),
            "error_rate": len(self.errors) / requests if requests else 0.0,
            "errors": len(self.errors),
            "error_samples": self.errors[:MAX_ERROR_SAMPLES],
            "latency": _latency(self.latencies),
        }


def _compare(
    records: Sequence[PredictionRecord], answers: Sequence[dict[str, Any]], output: str
) -> _Outcome:
    outcome = _Outcome(classification=_is_classification(records, output))
    for record, answer in zip(records, answers, strict=True):
        if "error" in answer:
            outcome.errors.append(str(answer["error"]))
            continue
        outcome.latencies.append(float(answer["ms"]))
        if output not in record.outputs:
            continue  # an older request answered without this output: nothing to compare
        logged, replayed = np.asarray(record.outputs[output]), np.asarray(answer["output"])
        if logged.shape != replayed.shape:
            outcome.errors.append(
                f"the candidate answered {output!r} with shape {list(replayed.shape)} "
                f"where the log holds {list(logged.shape)}"
            )
            continue
        _compare_request(outcome, logged, replayed)
    return outcome


def _is_classification(records: Sequence[PredictionRecord], output: str) -> bool:
    """Labels (integers, strings, booleans) are classes; floats are a regression."""
    for record in reversed(records):
        if output in record.outputs:
            return np.asarray(record.outputs[output]).dtype.kind != "f"
    return True


def _compare_request(outcome: _Outcome, logged: np.ndarray, replayed: np.ndarray) -> None:
    rows = logged.shape[0] if logged.ndim else 1
    # A row agrees when all its values do (a 2-D output compares whole rows).
    logged_rows, replayed_rows = logged.reshape(rows, -1), replayed.reshape(rows, -1)
    same: list[bool]
    if outcome.classification:
        same = [a.tolist() == b.tolist() for a, b in zip(logged_rows, replayed_rows, strict=True)]
        for a, b, agreed in zip(logged_rows, replayed_rows, same, strict=True):
            if not agreed:
                outcome.flips[(_label(a), _label(b))] += 1
    else:
        try:
            close = np.isclose(
                logged_rows.astype(np.float64), replayed_rows.astype(np.float64),
                rtol=RTOL, atol=ATOL, equal_nan=True,
            )  # fmt: skip
            same = [bool(value) for value in np.ravel(np.asarray(close).all(axis=1))]
        except (TypeError, ValueError):  # the candidate answered text where numbers were
            same = [False] * rows
    outcome.compared += rows
    outcome.agreed += sum(same)
    outcome.logged += logged.reshape(-1).tolist()
    outcome.replayed += replayed.reshape(-1).tolist()


def _label(row: np.ndarray) -> Any:
    """A row's label, hashable for counting: the value, or a tuple of a 2-D output's row."""
    values = row.tolist()
    return values[0] if len(values) == 1 else tuple(values)


def _flips(counts: Counter[tuple[Any, Any]]) -> list[dict[str, Any]]:
    ordered = sorted(counts.items(), key=lambda item: (-item[1], str(item[0])))
    return [{"from": _json(old), "to": _json(new), "count": n} for (old, new), n in ordered]


def _json(label: Any) -> Any:
    return list(label) if isinstance(label, tuple) else label


def _latency(latencies: list[float]) -> dict[str, float | None]:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None}
    p50, p95 = np.percentile(np.asarray(latencies), [50, 95]).tolist()
    return {"p50_ms": float(p50), "p95_ms": float(p95)}


# ---- output drift ---------------------------------------------------------------------------


def _output_drift(
    logged: list[Any], replayed: list[Any], classification: bool
) -> dict[str, float | None] | None:
    """KS and PSI of the candidate's outputs against the logged ones (the reference).

    Classes are compared as categories (PSI over class shares; KS over class codes in a
    fixed order, so it still reads 0 when nothing moved); numbers over the logged
    output's quantile bins, as the drift monitor bins a numeric feature.
    """
    binned = _as_categories(logged, replayed) if classification else _binned(logged, replayed)
    if binned is None:
        return None
    ref, cur, ref_counts, cur_counts = binned
    if ref.size == 0 or cur.size == 0:
        return None
    with warnings.catch_warnings():
        # As in monitoring/drift.py: when the exact p-value fails scipy falls back to the
        # asymptotic one, which is what we would choose anyway.
        warnings.filterwarnings("ignore", "ks_2samp: Exact calculation", RuntimeWarning)
        result = stats.ks_2samp(ref, cur)
    return {
        "ks": _finite_or_none(float(result.statistic)),
        "p_value": _finite_or_none(float(result.pvalue)),
        "psi": _finite_or_none(_psi(ref_counts, cur_counts)),
    }


_Binned = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Reference and current values (as numbers), then their counts per bin."""


def _binned(logged: list[Any], replayed: list[Any]) -> _Binned | None:
    ref, cur = _finite(logged), _finite(replayed)
    if ref is None or cur is None:
        return None
    edges = _quantile_edges(ref)
    ref_counts = np.bincount(np.searchsorted(edges, ref), minlength=edges.size + 1)
    cur_counts = np.bincount(np.searchsorted(edges, cur), minlength=edges.size + 1)
    return ref, cur, ref_counts, cur_counts


def _as_categories(logged: list[Any], replayed: list[Any]) -> _Binned:
    # Labels as text: an int label and its float echo (1 vs 1.0) are one class.
    ref = [_category(value) for value in logged]
    cur = [_category(value) for value in replayed]
    categories = sorted(set(ref) | set(cur))
    code = {category: i for i, category in enumerate(categories)}
    ref_codes = np.array([code[value] for value in ref], dtype=np.float64)
    cur_codes = np.array([code[value] for value in cur], dtype=np.float64)
    size = len(categories)
    return (
        ref_codes,
        cur_codes,
        np.bincount(ref_codes.astype(np.int64), minlength=size),
        np.bincount(cur_codes.astype(np.int64), minlength=size),
    )


def _category(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _finite(values: list[Any]) -> np.ndarray | None:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    finite: np.ndarray = array[np.isfinite(array)]
    return finite


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
