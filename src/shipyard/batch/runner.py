"""A batch job from start to finish: check, record, run on an executor, record the end.

`create_job` checks what it can before anything runs (the model resolves, the input
exists and has a format, the output folder is free) and records the job; `run_job`
runs it, or resumes it: chunks whose parts exist are skipped, so every input row ends
in exactly one output part or errors file, however often the job was killed.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from shipyard.batch.files import Sink, Source, open_source
from shipyard.batch.jobs import JobRecord, JobStore, State
from shipyard.batch.local import ChunkFailed, Counts, LocalExecutor
from shipyard.batch.model import resolve_model
from shipyard.batch.options import JobOptions
from shipyard.errors import Conflict, InvalidInput, ShipyardError
from shipyard.registry.refs import parse_ref
from shipyard.registry.service import Registry
from shipyard.runtimes.base import VersionSpec

log = logging.getLogger("shipyard.batch")
EXECUTORS = ("local", "ray")
_RECORD_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class JobRequest:
    model_ref: str
    input_uri: str
    output_uri: str
    input_format: str | None
    output_format: str | None
    options: JobOptions
    executor: str = "local"


def create_job(registry: Registry, request: JobRequest, created_by: str) -> JobRecord:
    if request.executor not in EXECUTORS:
        raise InvalidInput(f"unknown executor {request.executor!r}: use local or ray")
    if request.options.chunk_rows < 1 or request.options.workers < 1:
        raise InvalidInput("--chunk-rows and --workers must be at least 1")
    # Only the version is recorded here; run_job fetches (and verifies) the artifact once.
    version = registry.models.serving_version(parse_ref(request.model_ref))
    source = open_source(request.input_uri, request.input_format)
    output_format = request.output_format or source.format
    Sink.open(request.output_uri, output_format).prepare(resuming=False)
    return JobStore(registry.sessions).create(
        model=version.model,
        version=version.version,
        input_uri=request.input_uri,
        output_uri=request.output_uri,
        input_format=source.format,
        output_format=output_format,
        options=request.options,
        executor=request.executor,
        created_by=created_by,
    )


def run_job(
    registry: Registry,
    job_id: str,
    on_progress: Callable[[JobRecord, Counts], None] = lambda _job, _counts: None,
) -> JobRecord:
    """Run (or resume) a job to its end; raise ShipyardError saying why if it failed."""
    store = JobStore(registry.sessions)
    job = store.get(job_id)
    if job.state == "succeeded":
        raise Conflict(f"{job_id} already succeeded; its output is in {job.output_uri}")
    _refuse_if_alive(job)
    rerun = job.attempts > 0
    spec = resolve_model(registry, f"{job.model}:{job.version}")
    source = open_source(job.input_uri, job.input_format)
    sink = Sink.open(job.output_uri, job.output_format)
    sink.prepare(resuming=True)
    job = store.start(job_id, source.total_rows(), runner=_this_runner())
    recorder = _ProgressRecorder(store, job, on_progress)
    try:
        if job.executor == "ray":
            counts = _run_on_ray(job, spec, source, sink, recorder, rerun)
        else:
            executor = LocalExecutor(
                spec, source, sink, job.options, recorder, python=_interpreter_for(spec)
            )
            counts = executor.run(sink.done_parts())
    except KeyboardInterrupt:
        recorder.finish("interrupted")
        raise
    except (ChunkFailed, ShipyardError) as exc:
        message = exc.message if isinstance(exc, ShipyardError) else str(exc)
        recorder.finish("failed", message)
        raise InvalidInput(f"{job_id} failed: {message}") from None
    except Exception as exc:
        recorder.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    sink.write_success(
        {
            "job": job_id,
            "model": job.model,
            "version": job.version,
            "rows": counts.rows_done,
            "rejected": counts.rows_failed,
            "parts": counts.chunks_done,
        }
    )
    return store.finish(
        job_id,
        "succeeded",
        rows_done=counts.rows_done,
        rows_failed=counts.rows_failed,
        chunks_done=counts.chunks_done,
        rows_total=counts.rows_done,
    )


def _run_on_ray(
    job: JobRecord,
    spec: VersionSpec,
    source: Source,
    sink: Sink,
    recorder: _ProgressRecorder,
    rerun: bool,
) -> Counts:
    """Ray Data has no part-by-part resume: a rerun clears what the stopped run wrote."""
    from shipyard.batch.ray_executor import run_on_ray

    options = job.options
    outcome = run_on_ray(
        spec,
        source,
        sink,
        id_columns=options.id_columns,
        chunk_rows=options.chunk_rows,
        workers=options.workers,
        outputs=options.outputs,
        fail_on_error=options.fail_on_error,
        address=options.ray_address,
        resuming=rerun,
        on_progress=lambda rows, rejected: recorder(Counts(rows_done=rows, rows_failed=rejected)),
    )
    return Counts(rows_done=outcome.rows, rows_failed=outcome.rejected, chunks_done=outcome.parts)


class _ProgressRecorder:
    """Passes progress to the caller at once and to the database at most once a second."""

    def __init__(
        self,
        store: JobStore,
        job: JobRecord,
        on_progress: Callable[[JobRecord, Counts], None],
    ) -> None:
        self.store = store
        self.job = job
        self.on_progress = on_progress
        self.latest = Counts()
        self._recorded_at = 0.0

    def __call__(self, counts: Counts) -> None:
        self.latest = counts
        self.on_progress(self.job, counts)
        now = time.monotonic()
        if now - self._recorded_at >= _RECORD_EVERY_SECONDS:
            self._recorded_at = now
            self.store.progress(
                self.job.id,
                rows_done=counts.rows_done,
                rows_failed=counts.rows_failed,
                chunks_done=counts.chunks_done,
            )

    def finish(self, state: State, error: str = "") -> None:
        """Record how a run that did not succeed ended, with the counts it reached."""
        self.store.finish(
            self.job.id,
            state,
            rows_done=self.latest.rows_done,
            rows_failed=self.latest.rows_failed,
            chunks_done=self.latest.chunks_done,
            error=error,
        )


def _this_runner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _refuse_if_alive(job: JobRecord) -> None:
    """Two processes on one job would each write every remaining part: refuse the second."""
    if job.state != "running" or not job.runner:
        return
    host, _, pid = job.runner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        if job.shown_state != "stale":
            raise Conflict(
                f"{job.id} is running on {job.runner}; resume it once that stops "
                "(or once its record goes stale)"
            )
        return
    import psutil

    try:
        process = psutil.Process(int(pid))
        # A process younger than the job's last report reuses a dead runner's pid.
        alive = process.create_time() <= job.updated_at.timestamp() and process.is_running()
    except psutil.Error:
        alive = False
    if alive and int(pid) != os.getpid():
        raise Conflict(f"{job.id} is still running in process {pid}")


def _interpreter_for(spec: VersionSpec) -> str | None:
    """The version's own environment's interpreter when this one's packages do not suit
    it (built on first use on this host), else None."""
    from shipyard.config import Settings
    from shipyard.runtimes.environments import EnvironmentBuilder

    return EnvironmentBuilder.from_settings(Settings()).python_for(spec.environment)
