"""The local executor: chunks read here, scored and written by worker processes.

The main process reads the input in fixed chunks and keeps at most two per worker in
flight, so memory is bounded by chunk size x workers, not by the input. Each worker
loads the model once, scores a chunk and writes its part itself (encoding output in
parallel too), then answers a few counts. A chunk whose attempt fails (an exception,
or a worker that died) is tried again after a backoff; a dead pool is replaced.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import pyarrow as pa

from shipyard.batch.files import Segment, Sink, Source
from shipyard.batch.interpreters import InterpreterPool
from shipyard.batch.model import Scorer
from shipyard.batch.options import JobOptions
from shipyard.errors import InvalidInput, ShipyardError
from shipyard.runtimes.base import VersionSpec
from shipyard.runtimes.lifetime import die_with_parent
from shipyard.runtimes.threads import limit_native_threads

log = logging.getLogger("shipyard.batch")
_BACKOFF_SECONDS = 0.5
_MAX_BACKOFF_SECONDS = 10.0
_IN_FLIGHT_PER_WORKER = 2


class RowsRejected(Exception):
    """A chunk had rows the model rejected and the job was told to fail on the first."""


@dataclass(frozen=True)
class ChunkTask:
    """One chunk: its rows as a table (text formats), or where to read them (Parquet)."""

    index: int
    first_row: int
    rows: int
    table: pa.Table | None = None
    segments: list[Segment] | None = None
    attempt: int = 1


@dataclass(frozen=True)
class ChunkDone:
    index: int
    rows: int
    rejected: int


@dataclass
class Counts:
    """How far the job got; chunks skipped on resume count too."""

    rows_done: int = 0
    rows_failed: int = 0
    chunks_done: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    """Input size, for progress on text formats whose row count is unknown until read."""


# -- worker process side ----------------------------------------------------------------


@dataclass(frozen=True)
class _WorkerSetup:
    spec: VersionSpec
    source: Source
    sink: Sink
    options: JobOptions


_scorer: Scorer | None = None
_setup: _WorkerSetup | None = None


def _start_worker(setup: _WorkerSetup, threads: int) -> None:
    global _scorer, _setup
    # A worker outlives a `kill -9` of the job otherwise, holding its model for good.
    die_with_parent()
    # Native thread pools a worker would otherwise size to every core: with K worker
    # processes on C cores, C/K threads each keeps the machine busy without oversubscribing.
    limit_native_threads(threads)  # for libraries the model loads next
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        threadpool_limits(threads)  # for those already loaded (NumPy's BLAS)
    except ImportError:
        pass
    _setup = setup
    _scorer = Scorer(setup.spec, setup.options.outputs)


def _score_chunk(task: ChunkTask) -> ChunkDone:
    assert _scorer is not None and _setup is not None, "worker not started"
    options = _setup.options
    table = (
        task.table if task.table is not None else _setup.source.read_segments(task.segments or [])
    )
    scored = _scorer.score(table, options.id_columns, task.first_row)
    if options.fail_on_error and scored.rejected:
        first = scored.errors.slice(0, 1).to_pylist()[0]
        raise RowsRejected(f"a row was rejected ({first}); stopping as --fail-on-error asks")
    _setup.sink.write(task.index, scored.output, scored.errors)
    return ChunkDone(task.index, table.num_rows, scored.rejected)


# -- main process side ------------------------------------------------------------------


class LocalExecutor:
    """Runs one job's remaining chunks over a pool of worker processes."""

    def __init__(
        self,
        spec: VersionSpec,
        source: Source,
        sink: Sink,
        options: JobOptions,
        on_progress: Callable[[Counts], None] = lambda _: None,
        python: str | None = None,
    ) -> None:
        """`python`: the interpreter of the version's own environment, when the
        server's packages do not suit it (runtimes/environments.py); None: this one."""
        self.setup = _WorkerSetup(spec, source, sink, options)
        self.python = python
        self.options = options
        self.on_progress = on_progress
        self.counts = Counts()
        self._pool: ProcessPoolExecutor | InterpreterPool | None = None

    def run(self, done: set[int]) -> Counts:
        """Score every chunk whose part is not in `done`; raise if a chunk keeps failing."""
        source = self.setup.source
        self.counts.bytes_total = source.total_bytes
        chunks = self._chunks(source)
        in_flight: dict[Future[ChunkDone], ChunkTask] = {}
        retries: list[tuple[float, int, ChunkTask]] = []  # (due, index, task) heap
        limit = max(1, self.options.workers) * _IN_FLIGHT_PER_WORKER
        exhausted = False
        try:
            while True:
                while len(in_flight) < limit:
                    if retries and retries[0][0] <= time.monotonic():
                        task: ChunkTask | None = heapq.heappop(retries)[2]
                    elif not exhausted:
                        task = next(chunks, None)
                        if task is None:
                            exhausted = True
                            continue
                        if task.index in done:
                            self._count_skipped(task)
                            continue
                    else:
                        break
                    assert task is not None
                    in_flight[self._pool_now().submit(_score_chunk, task)] = task
                if not in_flight and not retries and exhausted:
                    return self.counts
                timeout = max(0.0, retries[0][0] - time.monotonic()) if retries else None
                finished, _ = wait(in_flight, timeout=timeout, return_when=FIRST_COMPLETED)
                for future in finished:
                    # Absent: a dead pool's chunk, already queued again by _settle.
                    if future in in_flight:
                        self._settle(future, in_flight.pop(future), in_flight, retries)
        finally:
            # Not waiting for idle workers to exit: the job's record and marker come first.
            self._close_pool(wait=False)

    def _chunks(self, source: Source) -> Iterator[ChunkTask]:
        first_row = 0
        rows = self.options.chunk_rows
        if source.format == "parquet":
            for index, segments in enumerate(source.plan(rows)):
                size = sum(s.rows for s in segments)
                yield ChunkTask(index, first_row, size, segments=segments)
                first_row += size
            return
        for index, table in enumerate(source.chunks(rows, on_bytes=self._read_bytes)):
            yield ChunkTask(index, first_row, table.num_rows, table=table)
            first_row += table.num_rows

    def _read_bytes(self, count: int) -> None:
        self.counts.bytes_read += count

    def _settle(
        self,
        future: Future[ChunkDone],
        task: ChunkTask,
        in_flight: dict[Future[ChunkDone], ChunkTask],
        retries: list[tuple[float, int, ChunkTask]],
    ) -> None:
        try:
            result = future.result()
        except RowsRejected as exc:
            raise InvalidInput(f"chunk {task.index}: {exc}") from None
        except ShipyardError:
            raise  # the input does not fit the model (a missing column): no retry helps
        except BrokenProcessPool:
            # Every chunk the dead pool held failed with it: all go again on a new pool.
            log.warning("a worker process died; replacing the pool and retrying its chunks")
            self._close_pool(wait=True)
            for other in [task, *in_flight.values()]:
                self._retry(other, "a worker process died", retries)
            in_flight.clear()
            return
        except Exception as exc:
            self._retry(task, f"{type(exc).__name__}: {exc}", retries)
            return
        self.counts.rows_done += result.rows
        self.counts.rows_failed += result.rejected
        self.counts.chunks_done += 1
        self.on_progress(self.counts)

    def _retry(
        self, task: ChunkTask, reason: str, retries: list[tuple[float, int, ChunkTask]]
    ) -> None:
        if task.attempt > self.options.retries:
            raise ChunkFailed(
                f"chunk {task.index} (rows from {task.first_row}) failed "
                f"{task.attempt} times; last: {reason}"
            )
        delay = min(_MAX_BACKOFF_SECONDS, _BACKOFF_SECONDS * 2 ** (task.attempt - 1))
        log.warning(
            "chunk %d attempt %d failed (%s); retrying in %.1fs",
            task.index,
            task.attempt,
            reason,
            delay,
        )
        again = dataclasses.replace(task, attempt=task.attempt + 1)
        heapq.heappush(retries, (time.monotonic() + delay, task.index, again))

    def _count_skipped(self, task: ChunkTask) -> None:
        """A chunk a previous run finished: count it, including the errors it set aside."""
        self.counts.rows_done += task.rows
        self.counts.rows_failed += self._errors_in(task.index)
        self.counts.chunks_done += 1
        self.on_progress(self.counts)

    def _errors_in(self, index: int) -> int:
        sink = self.setup.sink
        path = sink.errors_path(index)
        if not sink.fs.exists(path):
            return 0
        with sink.fs.open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())

    def _pool_now(self) -> ProcessPoolExecutor | InterpreterPool:
        if self._pool is None:
            self._pool = _make_pool(self.setup, self.options.workers, self.python)
        return self._pool

    def _close_pool(self, wait: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None


class ChunkFailed(Exception):
    """A chunk failed every attempt it was allowed."""


def _make_pool(
    setup: _WorkerSetup, workers: int, python: str | None
) -> ProcessPoolExecutor | InterpreterPool:
    """Workers are started by the thread that submits (the one in `run`), which outlives
    them: the kernel ties their lifetime to that thread (see runtimes/lifetime.py)."""
    import multiprocessing

    threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    if python is not None:
        return InterpreterPool(python, workers, _start_worker, (setup, threads))
    return ProcessPoolExecutor(
        max_workers=max(1, workers),
        mp_context=multiprocessing.get_context("spawn"),  # fork would copy the parent's threads
        initializer=_start_worker,
        initargs=(setup, threads),
    )
