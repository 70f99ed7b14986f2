"""The Ray executor: a batch job run by Ray Data, for inputs that outgrow one machine.

Read tasks read the input files (`ray_io.InputDatasource`), a pool of actors that each
load the model once scores the batches, and write tasks write the parts. The dataset
preserves order, so parts, named by write task, hold the rows in input order and
`read_output` gives the same table as after a local run.

Rows carry their file and in-file position through scoring. When the job has no id
column, `row_number` is the file's offset plus that position; the offsets of text
files are counted first, in parallel Ray tasks (Parquet's come from the footers).

Unlike the local executor a Ray job does not resume part by part: its parts are not
tied to input chunks, so a rerun starts over.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from shipyard.batch.files import Sink, Source, encode
from shipyard.batch.model import ROW_NUMBER, ModelSpec, Scorer
from shipyard.errors import Conflict, InvalidInput, MissingExtra, ShipyardError

# Reading, writing and counting rows ask for a quarter of a core each: the actors
# (one core each) do the real work, and a cluster with a core per actor must still
# fit a reader and a writer, or the job waits for them forever.
_LIGHT_CPUS = 0.25
# A local instance's shared memory for blocks in flight; Ray spills beyond it.
_LOCAL_OBJECT_STORE_BYTES = 2 << 30
# A dying actor (the model crashed the process, a node was lost) is replaced and its
# batch retried this often; an error the model raises fails the job at once.
_ACTOR_RESTARTS = 3
_PROGRESS_SECONDS = 0.5
_COUNT_CHUNK_ROWS = 1 << 16


@dataclass(frozen=True)
class RayOutcome:
    """What a finished Ray run did."""

    rows: int
    """Input rows scored, accepted and rejected alike (like the local executor's rows_done)."""
    rejected: int
    """Rows set aside in `_errors/`."""
    parts: int
    """Part files written."""


def run_on_ray(
    spec: ModelSpec,
    source: Source,
    sink: Sink,
    *,
    id_columns: Sequence[str],
    chunk_rows: int,
    workers: int,
    outputs: Sequence[str] | None,
    fail_on_error: bool,
    address: str | None,
    resuming: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> RayOutcome:
    """Score `source` into `sink` on Ray; the caller writes `_SUCCESS` with the outcome.

    `address` None joins the cluster in RAY_ADDRESS, else starts a local instance for
    the job (or uses the Ray this process already initialised). `resuming` means the
    job ran before and stopped: the parts and errors it left are removed first; a new
    job refuses a folder that holds any. `on_progress(rows, rejected)` is called about
    twice a second from this thread.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtra("ray", "ray") from None
    from shipyard.batch.ray_io import InputDatasource, PartsDatasink

    _clear_or_refuse(sink, resuming)
    with _connected(address):
        offsets = None if id_columns else _row_offsets(source)
        tally = ray.remote(num_cpus=0)(_Tally).remote()
        dataset = ray.data.read_datasource(
            InputDatasource(source, chunk_rows), num_cpus=_LIGHT_CPUS
        ).map_batches(
            _ScoreBatches,
            fn_constructor_kwargs={
                "spec": spec,
                "outputs": list(outputs) if outputs else None,
                "id_columns": list(id_columns),
                "offsets": offsets,
                "sink": sink,
                "fail_on_error": fail_on_error,
                "tally": tally,
            },
            batch_size=chunk_rows,
            batch_format="pyarrow",
            concurrency=workers,
            num_cpus=cpus_per_actor(ray.cluster_resources().get("CPU", 0.0), workers),
            max_restarts=_ACTOR_RESTARTS,
            max_task_retries=_ACTOR_RESTARTS,
        )
        dataset.context.execution_options.preserve_order = True
        dataset.context.enable_progress_bars = False  # the CLI draws its own

        def report() -> None:
            if on_progress is not None:
                on_progress(*ray.get(tally.totals.remote()))

        _run_reporting(
            lambda: dataset.write_datasink(
                PartsDatasink(sink), ray_remote_args={"num_cpus": _LIGHT_CPUS}
            ),
            report,
        )
        rows, rejected = ray.get(tally.totals.remote())
        report()
    return RayOutcome(rows=rows, rejected=rejected, parts=len(_parts(sink)))


def cpus_per_actor(cluster_cpus: float, workers: int) -> float:
    """A core per actor, or an equal share of what is left beside a reader and a writer
    when the cluster is smaller than that (a laptop, a 2-core box), so the job fits.

    A cluster that reports no CPUs yet (an autoscaler about to add nodes) gets a core
    per actor and is left to grow.
    """
    spare = cluster_cpus - 2 * _LIGHT_CPUS
    if spare <= 0 or spare >= workers:
        return 1.0
    return spare / workers


class _ScoreBatches:
    """One Ray Data actor: loads the model once, then scores batch after batch."""

    def __init__(
        self,
        spec: ModelSpec,
        outputs: list[str] | None,
        id_columns: list[str],
        offsets: list[int] | None,
        sink: Sink,
        fail_on_error: bool,
        tally: Any,
    ) -> None:
        from shipyard.batch.ray_io import FILE_COLUMN, ROW_COLUMN

        self.scorer = Scorer(spec, outputs)
        self.keys = [*id_columns, FILE_COLUMN, ROW_COLUMN]
        self.offsets = np.asarray(offsets, dtype=np.int64) if offsets is not None else None
        self.sink = sink
        self.fail_on_error = fail_on_error
        self.tally = tally

    def __call__(self, batch: pa.Table) -> pa.Table:
        import ray

        from shipyard.batch.ray_io import FILE_COLUMN, ROW_COLUMN

        if not batch.num_rows:
            return batch
        scored = self.scorer.score(batch, self.keys)
        if scored.rejected and self.fail_on_error:
            first = self._public(scored.errors.slice(0, 1)).to_pylist()[0]
            raise InvalidInput(f"a row was rejected ({first}); stopping as --fail-on-error asks")
        # Named by the batch's first row: a retried batch overwrites its own file.
        key = (batch[FILE_COLUMN][0].as_py(), batch[ROW_COLUMN][0].as_py())
        if scored.rejected:
            path = f"{self.sink.root}/_errors/part-{key[0]:06d}-{key[1]:012d}.jsonl"
            self.sink.fs.makedirs(f"{self.sink.root}/_errors", exist_ok=True)
            with self.sink.fs.open(path, "wb") as out:
                out.write(encode(self._public(scored.errors), "jsonl"))
        # Waited for, so the totals read after the write cover every batch written.
        ray.get(self.tally.record.remote(key, batch.num_rows, scored.rejected))
        return self._public(scored.output)

    def _public(self, table: pa.Table) -> pa.Table:
        """Positions dropped; with no id column they become `row_number`, first."""
        from shipyard.batch.ray_io import FILE_COLUMN, ROW_COLUMN

        files = table[FILE_COLUMN].to_numpy()
        rows = table[ROW_COLUMN].to_numpy()
        table = table.drop_columns([FILE_COLUMN, ROW_COLUMN])
        if self.offsets is None:
            return table
        numbers = self.offsets[files] + rows
        return table.add_column(0, ROW_NUMBER, pa.array(numbers, type=pa.int64()))


class _Tally:
    """Rows and rejections per batch, kept by batch so a retried batch is counted once."""

    def __init__(self) -> None:
        self.batches: dict[tuple[int, int], tuple[int, int]] = {}

    def record(self, key: tuple[int, int], rows: int, rejected: int) -> None:
        self.batches[key] = (rows, rejected)

    def totals(self) -> tuple[int, int]:
        rows = sum(r for r, _ in self.batches.values())
        rejected = sum(r for _, r in self.batches.values())
        return rows, rejected


def _count_rows(source: Source, index: int) -> int:
    one_file = replace(source, files=[source.files[index]])
    footer_rows = one_file.total_rows()  # Parquet knows without reading the data
    if footer_rows is not None:
        return footer_rows
    return sum(table.num_rows for table in one_file.chunks(_COUNT_CHUNK_ROWS))


def _row_offsets(source: Source) -> list[int]:
    """The `row_number` of each file's first row: the rows of the files before it."""
    import ray

    count = ray.remote(num_cpus=_LIGHT_CPUS)(_count_rows)
    # The last file's own length is never needed.
    counts = ray.get([count.remote(source, i) for i in range(len(source.files) - 1)])
    return list(itertools.accumulate(counts, initial=0))


@contextmanager
def _connected(address: str | None) -> Iterator[None]:
    """Ray for the job: the one this process has, a cluster, or a local instance that
    is shut down afterwards."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            include_dashboard=False,
            log_to_driver=False,
            object_store_memory=_LOCAL_OBJECT_STORE_BYTES,
        )
    try:
        yield
    finally:
        ray.shutdown()


def _run_reporting(write: Callable[[], None], report: Callable[[], None]) -> None:
    """Run the write on a daemon thread and report while it runs.

    Daemon, so an interrupted job does not wait for a write that is still going; the
    errors of the run come back as the ShipyardError that caused them.
    """
    failure: list[BaseException] = []

    def target() -> None:
        try:
            write()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="shipyard-ray-write", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(_PROGRESS_SECONDS)
        report()
    if failure:
        cause = _shipyard_cause(failure[0])
        if cause is not None:
            raise cause from None
        raise failure[0]


def _shipyard_cause(exc: BaseException) -> ShipyardError | None:
    """The ShipyardError a task raised, from under Ray's wrappers (RayTaskError, UserCodeException)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ShipyardError):
            return type(current)(current.message) if type(current).__init__ is ShipyardError.__init__ else current
        cause = getattr(current, "cause", None)
        pending.extend([current.__cause__, current.__context__])
        if isinstance(cause, BaseException):
            pending.append(cause)
    return None


def _parts(sink: Sink) -> list[str]:
    if not sink.fs.exists(sink.root):
        return []
    return [
        name for name in sink.fs.ls(sink.root, detail=False) if os.path.basename(name).startswith("part-")
    ]


def _clear_or_refuse(sink: Sink, resuming: bool) -> None:
    """A rerun removes what the stopped run left; a new job will not write over parts."""
    errors = f"{sink.root}/_errors"
    left = _parts(sink)
    if not resuming:
        if left or sink.fs.exists(errors):
            raise Conflict(
                f"the output folder {sink.root} already holds parts or errors: choose another"
            )
        return
    for path in left:
        sink.fs.rm(path)
    if sink.fs.exists(errors):
        sink.fs.rm(errors, recursive=True)
