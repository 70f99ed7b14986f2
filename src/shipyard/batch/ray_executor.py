"""The Ray executor: a batch job run by Ray Data, for inputs that outgrow one machine.

Read tasks read the input files; a pool of actors, each loading the model once,
scores the batches, and each actor writes the part and errors of its batch itself,
as the local executor's workers do. The driver only gathers a few counts per batch.

Every row read carries its position (input file, row in that file) to the actor:
 - a part is named by its batch's first position (`part-000002-000000004096.parquet`);
   the dataset preserves order, so a batch is a run of consecutive rows and
   `read_output` (name order) gives the rows in input order. A retried batch
   overwrites its own part.
 - with no id column, `row_number` is the file's first row number plus the position.
   Parquet files know their rows from the footer; text files before the last are
   counted first, in parallel tasks.

Rows are read by `Source.chunks`, the local executor's reader, and parts encoded by
`files.encode`, so CSV typing and the bytes written match the local executor: Ray's
readers cannot tell where in its file a row was, and its JSON writer rounds floats.

A Ray job does not resume part by part (its parts are not tied to input chunks): a
rerun clears what the stopped run left and starts over. The caller writes `_SUCCESS`.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from shipyard.batch.files import EXTENSIONS, Sink, Source, encode
from shipyard.batch.model import ROW_NUMBER, Scorer
from shipyard.errors import Conflict, InvalidInput, MissingExtra, ShipyardError
from shipyard.runtimes.base import VersionSpec

_FILE = "__shipyard_file"
_ROW = "__shipyard_row"
# Reading and counting ask for a quarter of a core: the actors (a core each) do the
# real work, and a cluster with a core per actor must still fit a reader, or the
# job waits for one forever.
_READ_CPUS = 0.25
# A local instance's shared memory for blocks in flight; Ray spills beyond it.
_LOCAL_OBJECT_STORE_BYTES = 2 << 30
_COUNT_CHUNK_ROWS = 1 << 16
_MAX_READ_TASKS = 1024  # beyond this many files, a read task reads a run of them


@dataclass(frozen=True)
class RayOutcome:
    """What a finished Ray run did."""

    rows: int
    """Input rows scored, accepted and rejected alike (the local executor's rows_done)."""
    rejected: int
    """Rows set aside in `_errors/`."""
    parts: int
    """Part files written (a batch whose every row was rejected writes none)."""


def run_on_ray(
    spec: VersionSpec,
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
    """Score `source` into `sink` with `workers` actors scoring `chunk_rows`-row batches.

    `address` None uses the Ray this process already initialised, else the cluster in
    RAY_ADDRESS, else a local instance started for the job and shut down after it.
    `resuming`: the job ran before and stopped, so the parts and errors it left are
    removed first; a new job (False) refuses a folder that holds any.
    `on_progress(rows, rejected)` is called as batches finish.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise MissingExtra("ray", "ray") from None

    _clear_or_refuse(sink, resuming)
    with _connected(address):
        files = ray.data.from_items(
            [{"file": index} for index in range(len(source.files))],
            override_num_blocks=min(len(source.files), _MAX_READ_TASKS),
        )
        files.context.execution_options.preserve_order = True
        files.context.enable_progress_bars = False  # the CLI draws its own
        files.context.print_on_execution_start = False
        # A read task's ShipyardError (a file that does not parse) then comes back as
        # itself, not as text inside a UserCodeException. Ray logs it as an error of
        # its own code: a cosmetic cost.
        files.context.raise_original_map_exception = True
        offsets = None if id_columns else _row_offsets(source)
        summaries = files.map_batches(
            partial(_read_files, source=source, chunk_rows=chunk_rows),
            batch_size=None,
            batch_format="numpy",
            num_cpus=_READ_CPUS,
        ).map_batches(
            _ScoreBatches,
            fn_constructor_kwargs={
                "spec": spec,
                "shipped": _ship(spec),
                "outputs": list(outputs) if outputs else None,
                "id_columns": list(id_columns),
                "offsets": offsets,
                "sink": sink,
                "fail_on_error": fail_on_error,
            },
            batch_size=chunk_rows,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_actor(_cluster_cpus(), workers),
        )
        try:
            return _gather(
                summaries.iter_batches(batch_size=None, batch_format="pyarrow"), on_progress
            )
        except Exception as exc:
            cause = _shipyard_cause(exc)
            if cause is None:
                raise
            raise cause from None


def cpus_per_actor(cluster_cpus: float, workers: int) -> float:
    """A core per actor, or an equal share of what a reader leaves when the cluster is
    smaller than that (a laptop, a 2-core box), so that the job fits.

    A cluster that reports no CPUs yet (an autoscaler about to add nodes) gets a core
    per actor and is left to grow.
    """
    spare = cluster_cpus - _READ_CPUS
    if spare <= 0 or spare >= workers:
        return 1.0
    return spare / workers


def _cluster_cpus() -> float:
    import ray

    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return float(resources.get("CPU", 0.0))


def _gather(
    summaries: Iterable[pa.Table], on_progress: Callable[[int, int], None] | None
) -> RayOutcome:
    rows = rejected = parts = 0
    for summary in summaries:
        for batch in summary.to_pylist():
            if batch["failure"] is not None:
                raise InvalidInput(batch["failure"])
            rows += batch["rows"]
            rejected += batch["rejected"]
            parts += batch["parts"]
        if on_progress is not None:
            on_progress(rows, rejected)
    return RayOutcome(rows=rows, rejected=rejected, parts=parts)


def _summary(rows: int, rejected: int, parts: int, failure: str | None = None) -> pa.Table:
    """What an actor answers for a batch: counts, or why the job must stop."""
    return pa.table(
        {
            "rows": pa.array([rows], type=pa.int64()),
            "rejected": pa.array([rejected], type=pa.int64()),
            "parts": pa.array([parts], type=pa.int64()),
            "failure": pa.array([failure], type=pa.string()),
        }
    )


def _read_files(
    batch: dict[str, np.ndarray], source: Source, chunk_rows: int
) -> Iterator[pa.Table]:
    """One read task: its files in order, as tables of at most `chunk_rows` rows whose
    rows are tagged with their file and their position there."""
    for index in batch["file"].tolist():
        one_file = replace(source, files=[source.files[index]])
        position = 0
        for table in one_file.chunks(chunk_rows):
            count = table.num_rows
            yield table.append_column(
                _FILE, pa.array(np.full(count, index, dtype=np.int32))
            ).append_column(_ROW, pa.array(np.arange(position, position + count)))
            position += count


class _ScoreBatches:
    """One Ray Data actor: loads the model once, then scores and writes batch after batch.

    A ShipyardError (the input does not fit the model, a rejected row under
    fail_on_error) and a model that does not load on this node are answered, not
    raised, so the driver stops the job with the message rather than Ray's traceback.
    """

    def __init__(
        self,
        spec: VersionSpec,
        shipped: _ShippedModel,
        outputs: list[str] | None,
        id_columns: list[str],
        offsets: list[int] | None,
        sink: Sink,
        fail_on_error: bool,
    ) -> None:
        self.keys = [*id_columns, _FILE, _ROW]
        self.offsets = np.asarray(offsets, dtype=np.int64) if offsets is not None else None
        self.sink = sink
        self.fail_on_error = fail_on_error
        self.scorer: Scorer | None = None
        self.failure: str | None = None
        try:
            self.scorer = Scorer(_on_this_node(spec, shipped), outputs)
        except Exception as exc:
            self.failure = f"the model {spec.key} did not load: {type(exc).__name__}: {exc}"

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.scorer is None:
            return _summary(batch.num_rows, 0, 0, failure=self.failure)
        try:
            rejected, parts = self._score_and_write(self.scorer, batch)
        except ShipyardError as exc:
            return _summary(batch.num_rows, 0, 0, failure=exc.message)
        return _summary(batch.num_rows, rejected, parts)

    def _score_and_write(self, scorer: Scorer, batch: pa.Table) -> tuple[int, int]:
        """Errors first, as the local executor does: a part then means its batch is done."""
        scored = scorer.score(batch, self.keys)
        if scored.rejected and self.fail_on_error:
            first = self._public(scored.errors.slice(0, 1)).to_pylist()[0]
            raise InvalidInput(f"a row was rejected ({first}); stopping as --fail-on-error asks")
        name = f"part-{batch[_FILE][0].as_py():06d}-{batch[_ROW][0].as_py():012d}"
        if scored.rejected:
            self._put(f"_errors/{name}.jsonl", encode(self._public(scored.errors), "jsonl"))
        output = self._public(scored.output)
        if not output.num_rows:
            return scored.rejected, 0
        self._put(f"{name}.{EXTENSIONS[self.sink.format]}", encode(output, self.sink.format))
        return scored.rejected, 1

    def _public(self, table: pa.Table) -> pa.Table:
        """Positions dropped; with no id column they become `row_number`, first."""
        files = table[_FILE].to_numpy()
        rows = table[_ROW].to_numpy()
        table = table.drop_columns([_FILE, _ROW])
        if self.offsets is None:
            return table
        numbers = self.offsets[files] + rows
        return table.add_column(0, ROW_NUMBER, pa.array(numbers, type=pa.int64()))

    def _put(self, name: str, data: bytes) -> None:
        self.sink.put(f"{self.sink.root}/{name}", data)


@dataclass(frozen=True)
class _ShippedModel:
    """The model's file or folder as a tar in Ray's object store, for the nodes of a
    cluster that do not have the driver's local copy."""

    name: str
    digest: str
    tar: list[Any]
    """[ObjectRef]: in a list, so Ray hands actors the reference rather than the bytes."""


def _ship(spec: VersionSpec) -> _ShippedModel:
    import ray

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(spec.path, arcname=os.path.basename(spec.path))
    data = buffer.getvalue()
    return _ShippedModel(
        name=os.path.basename(spec.path),
        digest=hashlib.sha256(data).hexdigest(),
        tar=[ray.put(data)],
    )


def _on_this_node(spec: VersionSpec, shipped: _ShippedModel) -> VersionSpec:
    """The spec itself where its path exists, else one pointing at the shipped copy,
    unpacked once per node (actors that lose the race use the winner's)."""
    if os.path.exists(spec.path):
        return spec
    import ray

    folder = Path(tempfile.gettempdir()) / "shipyard-models" / shipped.digest
    if not folder.exists():
        building = folder.with_name(f".{shipped.digest}-{uuid.uuid4().hex}")
        with tarfile.open(fileobj=io.BytesIO(ray.get(shipped.tar[0]))) as tar:
            tar.extractall(building, filter="data")
        try:
            os.rename(building, folder)
        except OSError:
            shutil.rmtree(building, ignore_errors=True)
    return replace(spec, path=str(folder / shipped.name))


def _count_rows(source: Source, index: int) -> int:
    one_file = replace(source, files=[source.files[index]])
    footer_rows = one_file.total_rows()  # Parquet knows without reading the data
    if footer_rows is not None:
        return footer_rows
    return sum(table.num_rows for table in one_file.chunks(_COUNT_CHUNK_ROWS))


def _row_offsets(source: Source) -> list[int]:
    """The `row_number` of each file's first row: the rows of the files before it."""
    import ray

    count = ray.remote(num_cpus=_READ_CPUS)(_count_rows)
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


def _shipyard_cause(exc: BaseException) -> ShipyardError | None:
    """The ShipyardError a task raised, from under Ray's RayTaskError."""
    current: BaseException | None = exc
    while current is not None:
        raised = getattr(current, "cause", None)  # a RayTaskError's: what the task raised
        if isinstance(raised, ShipyardError):
            return raised
        if isinstance(current, ShipyardError):
            return current
        current = current.__cause__
    return None


def _clear_or_refuse(sink: Sink, resuming: bool) -> None:
    """A rerun removes what the stopped run left; a new job will not write over parts."""
    errors = f"{sink.root}/_errors"
    left = sink.part_files()
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
