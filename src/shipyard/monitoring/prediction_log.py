"""The prediction log: a sampled, durable record of what each version was asked and said.

The request path only decides whether to keep a request (one random draw) and
appends a reference to its tensors to a list. A writer thread encodes them and
inserts them in batches, one transaction per batch, into the registry database.

Loss bound (docs/monitoring.md): a record is durable once its batch commits.
A crash (kill -9, power loss) loses what was not yet committed: the batch being
written and the one filling, so at most `2 * batch_rows` records, and in time
at most about `flush_seconds` plus one insert. When the writer falls behind
(the database is slow), records beyond a full waiting batch are dropped and
counted rather than held without bound: serving never waits on the log.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import orjson
import sqlalchemy as sa

from shipyard.config import DEFAULT_PREDICTION_LOG_BATCH, DEFAULT_PREDICTION_LOG_FLUSH_SECONDS
from shipyard.runtimes.base import Tensors
from shipyard.serving.types import RequestContext

log = logging.getLogger("shipyard.predictions")

PURGE_EVERY_SECONDS = 600.0
PURGE_CHUNK = 5_000


def encode_tensors(tensors: Tensors) -> str:
    """{name: nested list} as JSON text; bytes become text (undecodable bytes replaced)."""
    plain: dict[str, Any] = {}
    for name, array in tensors.items():
        if array.dtype.kind in "OSU":
            plain[name] = _plain(array.tolist())
        else:
            plain[name] = array
    return orjson.dumps(plain, option=orjson.OPT_SERIALIZE_NUMPY, default=_fallback).decode()


def _fallback(value: Any) -> Any:
    """What orjson's numpy support declines: non-contiguous views, float16, numpy scalars."""
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot log a {type(value).__name__}")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(slots=True)
class _Record:
    at: float
    request_id: str
    deployment: str | None
    model: str
    version: int
    latency_ms: float
    rows: int
    inputs: Tensors
    outputs: Tensors
    failed: bool


@dataclass
class LogStats:
    """Counters /metrics reads: records kept, written (durable), dropped."""

    sampled: int = 0
    written: int = 0
    dropped: int = 0
    failed_flushes: int = 0
    flushes: int = 0


class PredictionLog:
    """Samples answered requests and writes them in batches off the request path."""

    def __init__(
        self,
        engine: sa.Engine,
        sample_rate: Callable[[str | None], float],
        *,
        batch_rows: int = DEFAULT_PREDICTION_LOG_BATCH,
        flush_seconds: float = DEFAULT_PREDICTION_LOG_FLUSH_SECONDS,
        retention_seconds: float | None = None,
    ) -> None:
        from shipyard.registry.tables import PredictionRow

        self.engine = engine
        self.table = cast(sa.Table, PredictionRow.__table__)
        self.sample_rate = sample_rate
        """The share of a deployment's (or, for None, a direct model call's) requests kept."""
        self.batch_rows = max(1, batch_rows)
        self.flush_seconds = flush_seconds
        self.retention_seconds = retention_seconds
        self.stats = LogStats()
        self._filling: list[_Record] = []
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="shipyard-prediction-log")
        self._purged_at = 0.0

    def start(self) -> None:
        self._thread.start()

    def offer(
        self, context: RequestContext, inputs: Tensors, outputs: Tensors, failed: bool = False
    ) -> None:
        """Keep the exchange (sampled); a failed one has inputs and no outputs."""
        rate = self.sample_rate(context.deployment)
        if rate <= 0.0 or (rate < 1.0 and random.random() >= rate):
            return
        if len(self._filling) >= self.batch_rows:
            self.stats.dropped += 1  # the writer is behind: see the module docstring
            self._wake.set()
            return
        self.stats.sampled += 1
        self._filling.append(
            _Record(
                context.wall,
                context.request_id,
                context.deployment,
                context.model or "",
                int(context.version or 0),
                (time.perf_counter() - context.started) * 1000.0,
                context.rows,
                inputs,
                outputs,
                failed,
            )
        )
        if len(self._filling) >= self.batch_rows:
            self._wake.set()

    def flush(self) -> None:
        """Write what is waiting now (the writer thread's job; tests and shutdown call it)."""
        batch, self._filling = self._filling, []  # one atomic swap under the GIL
        if not batch:
            return
        rows = [
            {
                "at": r.at,
                "request_id": r.request_id,
                "deployment": r.deployment,
                "model": r.model,
                "version": r.version,
                "latency_ms": r.latency_ms,
                "rows": r.rows,
                "inputs": encode_tensors(r.inputs),
                "outputs": encode_tensors(r.outputs),
                "failed": r.failed,
            }
            for r in batch
        ]
        try:
            with self.engine.begin() as connection:
                connection.execute(self.table.insert(), rows)
        except Exception:
            self.stats.failed_flushes += 1
            self.stats.dropped += len(rows)
            log.exception("writing %d prediction log records failed; they are dropped", len(rows))
            return
        self.stats.flushes += 1
        self.stats.written += len(rows)

    def _run(self) -> None:
        while not self._closing:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()
            self._purge_if_due()
        self.flush()

    def _purge_if_due(self) -> None:
        if self.retention_seconds is None:
            return
        now = time.time()
        if now - self._purged_at < PURGE_EVERY_SECONDS:
            return
        self._purged_at = now
        try:
            purge(self.engine, now - self.retention_seconds)
        except Exception:
            log.exception("purging old prediction log records failed")

    def close(self) -> None:
        """Stop the writer after it writes what is waiting."""
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)


def purge(engine: sa.Engine, older_than: float) -> int:
    """Delete records from before `older_than` (unix seconds), in small transactions."""
    from shipyard.registry.tables import PredictionRow

    table = cast(sa.Table, PredictionRow.__table__)
    deleted = 0
    while True:
        with engine.begin() as connection:
            chosen: list[int] = list(
                connection.execute(
                    sa.select(table.c.id).where(table.c.at < older_than).limit(PURGE_CHUNK)
                ).scalars()
            )
            if not chosen:
                return deleted
            connection.execute(sa.delete(table).where(table.c.id.in_(chosen)))
            deleted += len(chosen)


def decode_tensors(text: str) -> dict[str, np.ndarray]:
    return {name: np.asarray(values) for name, values in orjson.loads(text).items()}
