"""Settings, read from SHIPYARD_* environment variables (pydantic-settings)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where Shipyard keeps its state and how it reaches it."""

    model_config = SettingsConfigDict(env_prefix="SHIPYARD_", extra="ignore")

    home: Path = Field(
        default=Path(".shipyard"),
        description="Folder for the embedded defaults: SQLite registry, artifacts, caches.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the registry; default is a SQLite file in the home.",
    )
    artifact_root: str | None = Field(
        default=None,
        description="Any fsspec URI for model artifacts; default is a folder in the home.",
    )
    url: str | None = Field(
        default=None,
        description="When set, the CLI talks to the Shipyard server at this URL.",
    )
    user: str | None = Field(
        default=None,
        description="Name recorded as created_by; default is the operating-system user.",
    )

    workers_per_model: int = Field(
        default=1, ge=1, description="Worker processes per loaded model version."
    )
    max_batch_size: int = Field(
        default=64, ge=1, description="Most rows one dynamic batch may hold (1 = no batching)."
    )
    max_queue: int = Field(
        default=256, ge=1, description="Requests that may wait per model before 503s."
    )
    cache_entries: int = Field(
        default=0, ge=0, description="Result cache size in answers; 0 turns the cache off."
    )
    cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0, description="Result cache bytes.")
    cache_ttl: float = Field(default=60.0, gt=0, description="Seconds a cached answer lives.")
    request_timeout: float = Field(
        default=30.0, gt=0, description="Default per-request deadline in seconds (504 after)."
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest request body accepted (413)."
    )
    max_tensor_elements: int = Field(
        default=64 * 1024 * 1024, ge=1, description="Most elements one input tensor may have."
    )

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'registry.db').resolve()}"

    @cached_property
    def resolved_artifact_root(self) -> str:
        if self.artifact_root:
            return self.artifact_root
        return str((self.home / "artifacts").resolve())

    @cached_property
    def cache_dir(self) -> Path:
        """Local folder where verified artifacts are unpacked for loading."""
        return (self.home / "cache").resolve()

    @property
    def redacted_database_url(self) -> str:
        """The database URL with any password masked, fit for logs."""
        from sqlalchemy import make_url

        return make_url(self.resolved_database_url).render_as_string(hide_password=True)
