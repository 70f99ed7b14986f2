"""Batch job records in the registry database: what each job does and how far it got.

The output folder is the truth about which chunks are done (a part exists or it
does not); the record is what people read (`shipyard batch status`) and what a
resume needs to run the job again the same way. A resume recounts from the parts,
so a record that lagged behind a killed process is corrected, never trusted.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from shipyard.batch.options import JobOptions
from shipyard.errors import NotFound
from shipyard.registry.db import write_session
from shipyard.registry.tables import BatchJobRow, utcnow

State = Literal["queued", "running", "succeeded", "failed", "interrupted"]
STALE_AFTER_SECONDS = 120.0
"""A running job that has not reported for this long is shown as `stale` (its process died)."""


class JobRecord(BaseModel):
    id: str
    model: str
    version: int
    input_uri: str
    output_uri: str
    input_format: str
    output_format: str
    options: JobOptions
    executor: str
    state: State
    rows_total: int | None
    rows_done: int = Field(description="Input rows finished: scored or set aside as errors.")
    rows_failed: int = Field(description="Rows the model rejected (in the errors files).")
    chunks_done: int
    attempts: int
    error: str
    runner: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def shown_state(self) -> str:
        """The state, or `stale` for a running job whose process stopped reporting."""
        if self.state == "running":
            idle = (utcnow() - self.updated_at).total_seconds()
            if idle > STALE_AFTER_SECONDS:
                return "stale"
        return self.state


def new_job_id() -> str:
    return f"job-{secrets.token_hex(5)}"


class JobStore:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def create(
        self,
        *,
        model: str,
        version: int,
        input_uri: str,
        output_uri: str,
        input_format: str,
        output_format: str,
        options: JobOptions,
        executor: str,
        created_by: str,
    ) -> JobRecord:
        now = utcnow()
        row = BatchJobRow(
            id=new_job_id(),
            model=model,
            version=version,
            input_uri=input_uri,
            output_uri=output_uri,
            input_format=input_format,
            output_format=output_format,
            options=options.model_dump(),
            executor=executor,
            state="queued",
            rows_total=None,
            rows_done=0,
            rows_failed=0,
            chunks_done=0,
            attempts=0,
            error="",
            runner="",
            created_by=created_by,
            created_at=now,
            updated_at=now,
            finished_at=None,
        )
        with write_session(self._sessions) as session:
            session.add(row)
            session.flush()
            return _record(row)

    def get(self, job_id: str) -> JobRecord:
        with self._sessions() as session:
            row = session.get(BatchJobRow, job_id)
            if row is None:
                raise NotFound(f"no batch job {job_id!r}")
            return _record(row)

    def list(self, limit: int = 50, state: str | None = None) -> list[JobRecord]:
        query = sa.select(BatchJobRow).order_by(BatchJobRow.created_at.desc()).limit(limit)
        if state:
            query = query.where(BatchJobRow.state == state)
        with self._sessions() as session:
            return [_record(row) for row in session.scalars(query)]

    def start(self, job_id: str, rows_total: int | None, runner: str) -> JobRecord:
        """Mark a (re)started job running: one more attempt, no finish time, no old error."""
        return self._update(
            job_id,
            state="running",
            runner=runner,
            rows_total=rows_total,
            attempts=BatchJobRow.attempts + 1,
            error="",
            finished_at=None,
        )

    def progress(self, job_id: str, *, rows_done: int, rows_failed: int, chunks_done: int) -> None:
        self._update(job_id, rows_done=rows_done, rows_failed=rows_failed, chunks_done=chunks_done)

    def finish(
        self,
        job_id: str,
        state: State,
        *,
        rows_done: int,
        rows_failed: int,
        chunks_done: int,
        error: str = "",
        rows_total: int | None = None,
    ) -> JobRecord:
        values: dict[str, Any] = {
            "state": state,
            "rows_done": rows_done,
            "rows_failed": rows_failed,
            "chunks_done": chunks_done,
            "error": error,
            "finished_at": utcnow(),
        }
        if rows_total is not None:
            values["rows_total"] = rows_total
        return self._update(job_id, **values)

    def _update(self, job_id: str, **values: Any) -> JobRecord:
        with write_session(self._sessions) as session:
            session.execute(
                sa.update(BatchJobRow)
                .where(BatchJobRow.id == job_id)
                .values(updated_at=utcnow(), **values)
            )
            row = session.get(BatchJobRow, job_id, populate_existing=True)
            if row is None:
                raise NotFound(f"no batch job {job_id!r}")
            return _record(row)


def _record(row: BatchJobRow) -> JobRecord:
    return JobRecord.model_validate(
        {
            column.key: getattr(row, column.key)
            for column in sa.inspect(BatchJobRow).mapper.column_attrs
        }
    )
