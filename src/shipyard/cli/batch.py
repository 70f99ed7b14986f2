"""`shipyard batch …`: score files with a registered model, resumably.

Jobs run where the command runs (local worker processes, or a Ray cluster), next to
the registry database that records them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from shipyard.cli.models import JsonOption, local_registry

if TYPE_CHECKING:
    from shipyard.batch.jobs import JobRecord
    from shipyard.batch.local import Counts
    from shipyard.registry.service import Registry

app = typer.Typer(help="Score files with a model: resumable batch jobs.", no_args_is_help=True)


@app.command("run")
def run(
    ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    input_uri: str = typer.Option(
        ..., "--input", "-i", help="A file or a folder of parts: a path or an fsspec URI."
    ),
    output_uri: str = typer.Option(
        ..., "--output", "-o", help="The folder that receives the output parts."
    ),
    output_format: str | None = typer.Option(
        None, "--format", help="parquet, csv or jsonl (default: the input's)."
    ),
    input_format: str | None = typer.Option(
        None, "--input-format", help="Only when the input's names do not tell."
    ),
    id_column: list[str] = typer.Option(
        [], "--id-column", help="Copy this column to the output (repeat for more)."
    ),
    chunk_rows: int = typer.Option(65_536, help="Rows per chunk: one chunk, one output part."),
    workers: int = typer.Option(0, help="Worker processes (default: one per core)."),
    outputs: str | None = typer.Option(
        None, help="Model outputs to write, comma-separated (e.g. predict,predict_proba)."
    ),
    retries: int = typer.Option(3, help="Times a failing chunk is tried again, with backoff."),
    fail_on_error: bool = typer.Option(
        False, "--fail-on-error", help="Fail the job on the first row the model rejects."
    ),
    executor: str = typer.Option("local", help="local (worker processes) or ray (Ray Data)."),
    ray_address: str | None = typer.Option(
        None, help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Start a job: every input row gets one output row, or one line in _errors/."""
    import os

    from shipyard.batch.options import JobOptions
    from shipyard.batch.runner import JobRequest, create_job
    from shipyard.config import Settings
    from shipyard.registry.service import default_user

    options = JobOptions(
        chunk_rows=chunk_rows,
        id_columns=id_column,
        outputs=[o.strip() for o in outputs.split(",") if o.strip()] if outputs else None,
        workers=workers or os.cpu_count() or 1,
        retries=retries,
        fail_on_error=fail_on_error,
        ray_address=ray_address,
    )
    registry = local_registry("batch run")
    request = JobRequest(ref, input_uri, output_uri, input_format, output_format, options, executor)
    job = create_job(registry, request, default_user(Settings()))
    typer.echo(f"{job.id}: {job.model}:{job.version} {job.input_uri} -> {job.output_uri}", err=True)
    _run(registry, job.id, as_json)


@app.command("resume")
def resume(
    job_id: str = typer.Argument(..., help="The job id `batch run` printed."),
    as_json: bool = JsonOption,
) -> None:
    """Finish a job that stopped (killed, interrupted, failed): done parts are kept."""
    _run(local_registry("batch resume"), job_id, as_json)


@app.command("status")
def status(job_id: str = typer.Argument(...), as_json: bool = JsonOption) -> None:
    """One job: state, version, input, output, counts."""
    from shipyard.batch.jobs import JobStore

    job = JobStore(local_registry("batch status").sessions).get(job_id)
    if as_json:
        _print_job_json(job)
        return
    from shipyard.cli.output import print_fields

    print_fields(
        job.id,
        [
            ("state", job.shown_state),
            ("model", f"{job.model}:{job.version}"),
            ("input", f"{job.input_uri} ({job.input_format})"),
            ("output", f"{job.output_uri} ({job.output_format})"),
            ("executor", job.executor),
            ("rows", _rows_text(job)),
            ("rejected rows", job.rows_failed),
            ("parts", job.chunks_done),
            ("chunk rows", job.options.chunk_rows),
            ("id columns", ", ".join(job.options.id_columns) or "(row_number)"),
            ("attempts", job.attempts),
            ("created", f"{job.created_at:%Y-%m-%d %H:%M:%S} by {job.created_by}"),
            ("finished", f"{job.finished_at:%Y-%m-%d %H:%M:%S}" if job.finished_at else None),
            ("error", job.error or None),
        ],
    )


@app.command("list")
def list_jobs(
    state: str | None = typer.Option(None, help="Only jobs in this state."),
    limit: int = typer.Option(50, help="At most this many, newest first."),
    as_json: bool = JsonOption,
) -> None:
    """Recent jobs, newest first."""
    from shipyard.batch.jobs import JobStore

    jobs = JobStore(local_registry("batch list").sessions).list(limit=limit, state=state)
    if as_json:
        from shipyard.cli.output import print_json

        print_json(jobs)
        return
    from shipyard.cli.output import print_table

    print_table(
        "batch jobs",
        ["id", "state", "model", "rows", "rejected", "output", "created"],
        [
            [
                j.id,
                j.shown_state,
                f"{j.model}:{j.version}",
                _rows_text(j),
                j.rows_failed,
                j.output_uri,
                f"{j.created_at:%Y-%m-%d %H:%M}",
            ]
            for j in jobs
        ],
    )


def _rows_text(job: JobRecord) -> str:
    return f"{job.rows_done:,} / {job.rows_total:,}" if job.rows_total else f"{job.rows_done:,}"


def _print_job_json(job: JobRecord) -> None:
    from shipyard.cli.output import print_json

    data: dict[str, Any] = job.model_dump(mode="json")
    data["shown_state"] = job.shown_state
    print_json(data)


def _run(registry: Registry, job_id: str, as_json: bool) -> None:
    from shipyard.batch.runner import run_job

    with _ProgressBar() as bar:
        job = run_job(registry, job_id, bar.update)
    if as_json:
        _print_job_json(job)
    else:
        rejected = (
            f", {job.rows_failed:,} rejected (see {job.output_uri.rstrip('/')}/_errors)"
            if job.rows_failed
            else ""
        )
        typer.echo(
            f"{job.id} succeeded: {job.rows_done:,} rows in {job.chunks_done} parts{rejected}",
            err=True,
        )


class _ProgressBar:
    """Rows done, rows/s and ETA on stderr, by rows when the total is known, else by bytes."""

    def __enter__(self) -> _ProgressBar:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[rows]} rows"),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.progress.start()
        self.task: Any = None
        return self

    def update(self, job: JobRecord, counts: Counts) -> None:
        import time

        if self.task is None:
            self.started = time.monotonic()
            self.first_rows = counts.rows_done  # skipped parts of a resume are not speed
            self.by_rows = job.rows_total is not None
            total = job.rows_total if self.by_rows else counts.bytes_total
            self.task = self.progress.add_task(job.id, total=total, rows="0", rate="-")
        elapsed = max(1e-6, time.monotonic() - self.started)
        rate = (counts.rows_done - self.first_rows) / elapsed
        self.progress.update(
            self.task,
            completed=counts.rows_done if self.by_rows else counts.bytes_read,
            rows=f"{counts.rows_done:,}",
            rate=f"{rate:,.0f}",
        )

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()
