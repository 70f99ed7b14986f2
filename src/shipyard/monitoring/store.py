"""Reading the prediction log, recording feedback, and keeping drift history.

One object over the registry database, used by the control-plane API and the
CLI's local mode alike. Heavy reads (windows of logged inputs) go through the
Core table API and orjson, not the ORM: a window may hold many thousand rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

import numpy as np
import orjson
import sqlalchemy as sa
from pydantic import BaseModel, Field

from shipyard.errors import InvalidInput, NotFound
from shipyard.monitoring.prediction_log import decode_tensors
from shipyard.monitoring.quality import LabelledPrediction
from shipyard.registry.tables import DriftReportRow, FeedbackRow, PredictionRow

PREDICTIONS = cast(sa.Table, PredictionRow.__table__)
FEEDBACK = cast(sa.Table, FeedbackRow.__table__)
DRIFT = cast(sa.Table, DriftReportRow.__table__)
MAX_FEEDBACK_ITEMS = 10_000
"""Labels accepted in one call; the CLI sends bigger files in parts."""
READ_CHUNK = 5_000


class PredictionRecord(BaseModel):
    id: int
    at: float = Field(description="Unix seconds when the request arrived.")
    request_id: str
    deployment: str | None
    model: str
    version: int
    latency_ms: float
    rows: int
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    failed: bool = Field(
        default=False, description="The version failed on these inputs: there are no outputs."
    )


class FeedbackItem(BaseModel):
    request_id: str = Field(min_length=1, max_length=128)
    label: Any = Field(description="The true value: one per row of the request (a list) or one.")


class FeedbackResult(BaseModel):
    accepted: int
    matched: int = Field(description="How many name a request in the prediction log now.")


class DriftReport(BaseModel):
    id: int
    deployment: str
    model: str
    version: int
    at: float
    window_seconds: float
    current_rows: int
    drifted: bool
    share: float
    trigger: str
    result: dict[str, Any]


@dataclass(frozen=True)
class PredictionFilter:
    deployment: str | None = None
    model: str | None = None
    version: int | None = None
    since: float | None = None
    until: float | None = None
    answered_only: bool = False
    """Leave out failed requests (they have inputs, no outputs)."""

    def where(self) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = []
        if self.answered_only:
            clauses.append(PREDICTIONS.c.failed.is_(False))
        if self.deployment is not None:
            clauses.append(PREDICTIONS.c.deployment == self.deployment)
        if self.model is not None:
            clauses.append(PREDICTIONS.c.model == self.model)
        if self.version is not None:
            clauses.append(PREDICTIONS.c.version == self.version)
        if self.since is not None:
            clauses.append(PREDICTIONS.c.at >= self.since)
        if self.until is not None:
            clauses.append(PREDICTIONS.c.at < self.until)
        return clauses


def _record(row: sa.Row[Any]) -> PredictionRecord:
    return PredictionRecord(
        id=row.id,
        at=row.at,
        request_id=row.request_id,
        deployment=row.deployment,
        model=row.model,
        version=row.version,
        latency_ms=row.latency_ms,
        rows=row.rows,
        inputs=orjson.loads(row.inputs),
        outputs=orjson.loads(row.outputs),
        failed=row.failed,
    )


class LoggedWindow(NamedTuple):
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    """Answered requests' outputs only."""
    rows: int
    failed_rows: int
    """Rows of `rows` whose request failed (inputs kept, no outputs)."""


class MonitoringStore:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # ---- prediction log ------------------------------------------------------

    def predictions(
        self, where: PredictionFilter, limit: int = 100, after_id: int | None = None
    ) -> list[PredictionRecord]:
        """Newest first, or oldest first after `after_id` (paging forward)."""
        query = sa.select(PREDICTIONS).where(*where.where())
        if after_id is not None:
            query = query.where(PREDICTIONS.c.id > after_id).order_by(PREDICTIONS.c.id)
        else:
            query = query.order_by(PREDICTIONS.c.id.desc())
        with self.engine.connect() as connection:
            return [_record(row) for row in connection.execute(query.limit(limit))]

    def _scan(self, where: PredictionFilter) -> Iterator[sa.Row[Any]]:
        """Every matching record, oldest first, read in chunks by id."""
        last = 0
        while True:
            query = (
                sa.select(PREDICTIONS)
                .where(*where.where(), PREDICTIONS.c.id > last)
                .order_by(PREDICTIONS.c.id)
                .limit(READ_CHUNK)
            )
            with self.engine.connect() as connection:
                rows = list(connection.execute(query))
            yield from rows
            if len(rows) < READ_CHUNK:
                return
            last = rows[-1].id

    def export_parquet(self, where: PredictionFilter, destination: str) -> int:
        """Write matching records to a Parquet file (local path or fsspec URI), one row
        per predicted row: request columns, then `input.<name>` and `output.<name>`
        (a 2-D tensor of width k gives `<name>.0` … `<name>.k-1`). Returns rows written."""
        import fsspec
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer: pq.ParquetWriter | None = None
        schema: pa.Schema | None = None
        written = 0
        with fsspec.open(destination, "wb") as sink:
            chunk: list[dict[str, Any]] = []
            for row in self._scan(where):
                chunk.extend(_flat_rows(row))
                if len(chunk) >= READ_CHUNK:
                    writer, schema = _write(chunk, sink, writer, schema)
                    written += len(chunk)
                    chunk = []
            if chunk or writer is None:
                writer, schema = _write(chunk, sink, writer, schema)
                written += len(chunk)
            if writer is not None:
                writer.close()
        return written

    def window(
        self, deployment: str, version: int, since: float, until: float | None = None
    ) -> LoggedWindow:
        """A version's logged inputs (failed requests' too) and outputs in a window,
        concatenated by name."""
        where = PredictionFilter(deployment=deployment, version=version, since=since, until=until)
        inputs: dict[str, list[np.ndarray]] = {}
        outputs: dict[str, list[np.ndarray]] = {}
        rows = failed_rows = 0
        for row in self._scan(where):
            for name, array in decode_tensors(row.inputs).items():
                inputs.setdefault(name, []).append(np.atleast_1d(array))
            for name, array in decode_tensors(row.outputs).items():
                outputs.setdefault(name, []).append(np.atleast_1d(array))
            rows += row.rows
            failed_rows += row.rows if row.failed else 0
        return LoggedWindow(_concat(inputs), _concat(outputs), rows, failed_rows)

    def versions_seen(self, deployment: str, since: float) -> list[tuple[str, int]]:
        """(model, version) pairs that answered the deployment since `since`."""
        query = (
            sa.select(PREDICTIONS.c.model, PREDICTIONS.c.version)
            .where(PREDICTIONS.c.deployment == deployment, PREDICTIONS.c.at >= since)
            .distinct()
        )
        with self.engine.connect() as connection:
            return sorted((row.model, row.version) for row in connection.execute(query))

    # ---- feedback --------------------------------------------------------------

    def models_of(self, request_ids: Sequence[str]) -> dict[str, set[str]]:
        """The models that answered each of these logged requests (unknown ids: absent)."""
        ids = list(dict.fromkeys(request_ids))
        owners: dict[str, set[str]] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(ids), 500):  # stay under bound-parameter limits
                query = (
                    sa.select(PREDICTIONS.c.request_id, PREDICTIONS.c.model)
                    .where(PREDICTIONS.c.request_id.in_(ids[start : start + 500]))
                    .distinct()
                )
                for row in connection.execute(query):
                    owners.setdefault(str(row.request_id), set()).add(str(row.model))
        return owners

    def add_feedback(self, items: Sequence[FeedbackItem], created_by: str = "") -> FeedbackResult:
        if len(items) > MAX_FEEDBACK_ITEMS:
            raise InvalidInput(
                f"{len(items)} labels in one call; send at most {MAX_FEEDBACK_ITEMS} at a time"
            )
        now = time.time()
        rows = [
            {
                "request_id": item.request_id,
                "label": orjson.dumps(item.label).decode(),
                "at": now,
                "created_by": created_by,
            }
            for item in items
        ]
        with self.engine.begin() as connection:
            if rows:
                connection.execute(FEEDBACK.insert(), rows)
            ids = list({item.request_id for item in items})
            matched = 0
            for start in range(0, len(ids), 500):  # stay under bound-parameter limits
                matched += connection.execute(
                    sa.select(sa.func.count(sa.distinct(PREDICTIONS.c.request_id))).where(
                        PREDICTIONS.c.request_id.in_(ids[start : start + 500])
                    )
                ).scalar_one()
        return FeedbackResult(accepted=len(rows), matched=matched)

    def labelled(
        self,
        deployment: str,
        since: float,
        until: float | None = None,
        wanted_output: str | None = None,
    ) -> list[LabelledPrediction]:
        """Logged predictions of a deployment that have a label, one item per row."""
        labels = self._labels_since(since)
        items: list[LabelledPrediction] = []
        for row in self._scan(PredictionFilter(deployment=deployment, since=since, until=until)):
            label = labels.get(row.request_id)
            if label is None:
                continue
            outputs = decode_tensors(row.outputs)
            name = prediction_output(outputs, wanted_output)
            if name is None:
                continue
            predicted = np.atleast_1d(outputs[name])
            scores = outputs.get("predict_proba")
            truth = label if isinstance(label, list) else [label]
            if len(truth) != len(predicted):
                continue  # a label per row is required; such feedback cannot be scored
            for i, value in enumerate(truth):
                score = scores[i] if scores is not None and len(scores) == len(truth) else None
                items.append(
                    LabelledPrediction(row.at, str(row.version), value, predicted[i].item(), score)
                )
        return items

    def _labels_since(self, since: float) -> dict[str, Any]:
        """Newest label per request id. Labels arrive after their predictions, so every
        label for this window's requests was written after the window began."""
        query = (
            sa.select(FEEDBACK.c.request_id, FEEDBACK.c.label)
            .where(FEEDBACK.c.at >= since)
            .order_by(FEEDBACK.c.id)
        )
        with self.engine.connect() as connection:
            return {row.request_id: orjson.loads(row.label) for row in connection.execute(query)}

    # ---- drift history -----------------------------------------------------------

    def save_drift(self, report: dict[str, Any]) -> int:
        values = dict(report)
        values["result"] = orjson.dumps(values["result"]).decode()
        with self.engine.begin() as connection:
            inserted = connection.execute(DRIFT.insert().values(**values))
            key = inserted.inserted_primary_key
            assert key is not None  # an insert of one row always has one
            return int(key[0])

    def drift_reports(
        self, deployment: str, limit: int = 20, version: int | None = None
    ) -> list[DriftReport]:
        query = sa.select(DRIFT).where(DRIFT.c.deployment == deployment)
        if version is not None:
            query = query.where(DRIFT.c.version == version)
        query = query.order_by(DRIFT.c.id.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [_drift(row) for row in connection.execute(query)]

    def drift_report(self, report_id: int) -> DriftReport:
        with self.engine.connect() as connection:
            row = connection.execute(sa.select(DRIFT).where(DRIFT.c.id == report_id)).first()
        if row is None:
            raise NotFound(f"no drift report {report_id}")
        return _drift(row)


def _drift(row: sa.Row[Any]) -> DriftReport:
    return DriftReport(
        id=row.id,
        deployment=row.deployment,
        model=row.model,
        version=row.version,
        at=row.at,
        window_seconds=row.window_seconds,
        current_rows=row.current_rows,
        drifted=row.drifted,
        share=row.share,
        trigger=row.trigger,
        result=orjson.loads(row.result),
    )


def prediction_output(outputs: dict[str, np.ndarray], wanted: str | None) -> str | None:
    """The output holding the predictions: the one named, else `predict`, else the first."""
    if wanted is not None:
        return wanted if wanted in outputs else None
    if "predict" in outputs:
        return "predict"
    return next(iter(outputs), None)


def _concat(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    joined: dict[str, np.ndarray] = {}
    for name, arrays in parts.items():
        try:
            joined[name] = np.concatenate(arrays)
        except ValueError:
            continue  # shapes changed within the window (a new signature): skip the name
    return joined


def _flat_rows(row: sa.Row[Any]) -> Iterable[dict[str, Any]]:
    """One dict per predicted row of a logged request."""
    columns: dict[str, np.ndarray] = {}
    for prefix, text in (("input", row.inputs), ("output", row.outputs)):
        for name, array in decode_tensors(text).items():
            array = np.atleast_1d(array)
            if array.ndim == 2:
                for j in range(array.shape[1]):
                    columns[f"{prefix}.{name}.{j}"] = array[:, j]
            elif array.ndim == 1:
                columns[f"{prefix}.{name}"] = array
    base = {
        "request_id": row.request_id,
        "at": row.at,
        "deployment": row.deployment,
        "model": row.model,
        "version": row.version,
        "latency_ms": row.latency_ms,
        "failed": row.failed,
    }
    for i in range(row.rows):
        flat = dict(base, row=i)
        for name, values in columns.items():
            flat[name] = values[i].item() if i < len(values) else None
        yield flat


def _write(chunk: list[dict[str, Any]], sink: Any, writer: Any, schema: Any) -> tuple[Any, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if schema is None:
        table = (
            pa.Table.from_pylist(chunk)
            if chunk
            else pa.table({"request_id": pa.array([], pa.string())})
        )
        schema = table.schema
        writer = pq.ParquetWriter(sink, schema)
    else:
        table = pa.Table.from_pylist(chunk, schema=schema)  # a column unseen at first is dropped
    writer.write_table(table)
    return writer, schema
