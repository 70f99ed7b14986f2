"""How a batch job runs; kept apart so worker processes import it without the database layer."""

from __future__ import annotations

from pydantic import BaseModel, Field


class JobOptions(BaseModel):
    """How the job runs: kept so `resume` runs it again exactly the same way."""

    chunk_rows: int = 65_536
    id_columns: list[str] = Field(default_factory=list)
    outputs: list[str] | None = None
    workers: int = 1
    retries: int = 3
    fail_on_error: bool = False
    ray_address: str | None = None
