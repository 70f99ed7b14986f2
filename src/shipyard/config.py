"""Settings, read from SHIPYARD_* environment variables (pydantic-settings)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class ScalingOptions(BaseModel):
    """How one model's worker count follows its load (a manifest's `scaling:`); a field
    left out takes the server-wide setting. Delays are seconds."""

    model_config = ConfigDict(extra="forbid")

    min_workers: int | None = Field(default=None, ge=0, le=256)
    max_workers: int | None = Field(default=None, ge=1, le=256)
    target_ongoing_requests: float | None = Field(default=None, gt=0, le=100_000)
    target_p95_ms: float | None = Field(default=None, gt=0)
    upscale_delay: float | None = Field(default=None, ge=0, le=3600)
    downscale_delay: float | None = Field(default=None, ge=0, le=86_400)
    scale_to_zero_after: float | None = Field(default=None, gt=0, le=30 * 86_400)

    @model_validator(mode="after")
    def _bounds(self) -> ScalingOptions:
        low, high = self.min_workers, self.max_workers
        if low is not None and high is not None and low > high:
            raise ValueError(f"min_workers ({low}) is above max_workers ({high})")
        return self


class ServingOptions(BaseModel):
    """How one model is served; a field left out takes the server-wide setting.

    `workers` fixes the worker count (min = max = workers); `scaling` lets it move."""

    model_config = ConfigDict(extra="forbid")

    workers: int | None = Field(default=None, ge=1, le=256)
    max_batch_size: int | None = Field(default=None, ge=1)
    max_batch_delay_ms: float | None = Field(default=None, ge=0, le=10_000)
    max_queue: int | None = Field(default=None, ge=1)
    max_queue_batches: int | None = Field(default=None, ge=1)
    cache: bool | None = None
    scaling: ScalingOptions | None = None


@dataclass(frozen=True, slots=True)
class ScalingPolicy:
    """How one model's worker count follows its load, every field decided.

    Like Ray Serve's autoscaling config: the pool aims at `target_ongoing_requests` per
    worker (in flight plus queued), moves up only after the load has asked for more for
    `upscale_delay` seconds and down only after `downscale_delay`, and unloads entirely
    after `scale_to_zero_after` idle seconds (None: never). `min_workers` > 0 keeps that
    many loaded whatever happens; 0 leaves the version free to be unloaded when the
    memory budget needs room (least recently used first) or after the idle time.
    """

    min_workers: int = 0
    max_workers: int = 1
    target_ongoing_requests: float = 2.0
    target_p95_ms: float | None = None
    """Also scale up while the p95 of queue wait plus predict is above this (None: no)."""
    upscale_delay: float = 3.0
    downscale_delay: float = 60.0
    scale_to_zero_after: float | None = None

    @property
    def fixed(self) -> bool:
        """One worker count while loaded: nothing to scale between."""
        return self.floor >= self.max_workers

    @property
    def floor(self) -> int:
        """Fewest workers while loaded: min_workers, at least one (zero means unloaded)."""
        return max(1, self.min_workers)

    def overridden_by(self, own: ScalingOptions | None) -> ScalingPolicy:
        if own is None:
            return self
        low = self.min_workers if own.min_workers is None else own.min_workers
        high = own.max_workers or max(self.max_workers, low)
        return ScalingPolicy(
            min_workers=min(low, high),
            max_workers=high,
            target_ongoing_requests=own.target_ongoing_requests or self.target_ongoing_requests,
            target_p95_ms=own.target_p95_ms or self.target_p95_ms,
            upscale_delay=_given(own.upscale_delay, self.upscale_delay),
            downscale_delay=_given(own.downscale_delay, self.downscale_delay),
            scale_to_zero_after=own.scale_to_zero_after or self.scale_to_zero_after,
        )

    def fixed_at(self, workers: int) -> ScalingPolicy:
        """This policy with the worker count fixed (and never unloaded for idling)."""
        return replace(self, min_workers=workers, max_workers=workers, scale_to_zero_after=None)


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


@dataclass(frozen=True, slots=True)
class ModelServing:
    """The serving options in force for one model, every one decided.

    The field defaults are the defaults of the whole platform (`DEFAULT_SERVING`)."""

    workers: int = 1
    """Workers a load starts with (the scaling policy moves the count from there)."""
    max_batch_size: int = 64
    max_batch_delay: float = 0.0
    """Seconds an idle worker may wait for a fuller batch (0: never wait)."""
    max_queue: int = 256
    max_queue_batches: int = 6
    """Full batches per live worker that may wait, a newcomer's own included; beyond,
    refused at once (503): accepted requests wait about this many batch times."""
    cache: bool = False
    scaling: ScalingPolicy = ScalingPolicy()

    def overridden_by(self, own: ServingOptions | None) -> ModelServing:
        """These options with every field `own` sets taking its place."""
        if own is None:
            return self
        delay_ms = own.max_batch_delay_ms
        scaling = self.scaling.overridden_by(own.scaling)
        if own.workers is not None:
            scaling = scaling.fixed_at(own.workers)
        return ModelServing(
            workers=own.workers or scaling.floor,
            max_batch_size=own.max_batch_size or self.max_batch_size,
            max_batch_delay=self.max_batch_delay if delay_ms is None else delay_ms / 1000,
            max_queue=own.max_queue or self.max_queue,
            max_queue_batches=own.max_queue_batches or self.max_queue_batches,
            cache=self.cache if own.cache is None else own.cache,
            scaling=scaling,
        )

    def scaled(self, scaling: ScalingPolicy) -> ModelServing:
        """These options with another scaling policy; a load starts within its bounds."""
        workers = min(max(self.workers, scaling.floor), scaling.max_workers)
        return replace(self, scaling=scaling, workers=workers)


# Default values are written here once; Settings, manifests and the serving core
# import them rather than repeat them.

DEFAULT_SERVING = ModelServing()
"""Serving options with nothing configured (one fixed worker); Settings instead scale
each model between one worker and one per core."""
DEFAULT_SCALING = ScalingPolicy()

DEFAULT_DEPLOYMENT_SAMPLE = 0.1
"""Share of a deployment's requests kept in the prediction log (manifest monitoring.sample)."""
DEFAULT_DIRECT_SAMPLE = 0.0
"""Share of direct model calls (not through a deployment) kept in the prediction log."""
DEFAULT_PREDICTION_LOG_BATCH = 500
"""Records per prediction-log write."""
DEFAULT_PREDICTION_LOG_FLUSH_SECONDS = 1.0
"""Longest wait before a prediction-log write."""
DEFAULT_TRACE_SAMPLE = 1.0
"""Share of requests traced when tracing is on."""
DEFAULT_DRIFT_P_VALUE = 0.05
"""A feature drifts when its test's p-value is below this."""
DEFAULT_DRIFT_SHARE = 0.5
"""The dataset drifts when at least this share of its features drift."""


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """How much one uploaded model folder (a tar archive) may unpack to."""

    max_bytes: int = 8 * 1024**3
    max_files: int = 10_000


DEFAULT_UNPACK = UnpackLimits()


@dataclass(frozen=True, slots=True)
class IsolationLimits:
    """Bounds on a throw-away process that runs a model's code for the server
    (inspection at registration, drift reference predictions)."""

    seconds: float = 120.0
    memory_bytes: int = 8 * 1024**3
    """Address space (RLIMIT_AS) of the process; 0 = no limit."""


DEFAULT_ISOLATION = IsolationLimits()


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
    api_key: SecretStr | None = Field(
        default=None, description="API key the CLI sends to SHIPYARD_URL (never printed)."
    )
    ca_bundle: Path | None = Field(
        default=None,
        description="PEM file of the certificate authorities the CLI and shipyard.Client "
        "trust for an https SHIPYARD_URL (e.g. a private CA's certificate).",
    )
    user: str | None = Field(
        default=None,
        description="Name recorded as created_by; default is the operating-system user.",
    )

    workers_per_model: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="A fixed count of worker processes per loaded model version; unset: "
        "each version scales between min_workers (at least one) and max_workers_per_model.",
    )
    min_workers: int = Field(
        default=DEFAULT_SCALING.min_workers,
        ge=0,
        le=256,
        description="Workers each loaded version keeps whatever its load; 0 lets an idle "
        "version be unloaded when the memory budget needs room.",
    )
    max_workers_per_model: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Most workers one version scales to; default one per core.",
    )
    target_ongoing_requests: float = Field(
        default=DEFAULT_SCALING.target_ongoing_requests,
        gt=0,
        description="Requests in flight plus queued per worker that the autoscaler aims at.",
    )
    target_p95_ms: float | None = Field(
        default=None, gt=0, description="Also scale up while queue wait + predict p95 is above."
    )
    upscale_delay: float = Field(
        default=DEFAULT_SCALING.upscale_delay,
        ge=0,
        le=3600,
        description="Seconds the load must ask for more workers before they start.",
    )
    downscale_delay: float = Field(
        default=DEFAULT_SCALING.downscale_delay,
        ge=0,
        le=86_400,
        description="Seconds the load must ask for fewer workers before any is drained.",
    )
    scale_to_zero_after: float | None = Field(
        default=None,
        gt=0,
        description="Unload a version idle this many seconds (min_workers 0 only); the next "
        "request waits for a cold start. Unset: never.",
    )
    max_workers: int | None = Field(
        default=None,
        ge=1,
        description="Worker processes the whole server may run (all versions together).",
    )
    memory_budget: ByteSize | None = Field(
        default=None,
        description="Resident memory all workers together may use (e.g. 8GiB); loading past "
        "it unloads the least recently used idle version, or is refused (503). Default: 80% "
        "of the machine's memory.",
    )
    spare_workers: int = Field(
        default=1,
        ge=0,
        le=16,
        description="Pre-started interpreters, per framework in use, with its libraries "
        "imported: a cold start, scale-up or crash replacement skips spawn and imports.",
    )
    scaling_tick: float = Field(
        default=0.5, gt=0, le=60, description="Seconds between autoscaler observations."
    )
    max_batch_size: int = Field(
        default=DEFAULT_SERVING.max_batch_size,
        ge=1,
        description="Most rows one dynamic batch may hold (1 = no batching).",
    )
    max_batch_delay_ms: float = Field(
        default=DEFAULT_SERVING.max_batch_delay * 1000,
        ge=0,
        le=10_000,
        description="How long an idle worker may wait for a fuller batch; 0 = adaptive only.",
    )
    max_queue: int = Field(
        default=DEFAULT_SERVING.max_queue,
        ge=1,
        description="Requests that may wait per model before 503s.",
    )
    max_queue_batches: int = Field(
        default=DEFAULT_SERVING.max_queue_batches,
        ge=1,
        description="Full batches per live worker that may wait in a model's queue (a "
        "newcomer's own included) before 503s: accepted requests wait about this many batch "
        "service times, so latency under overload stays near the unloaded one.",
    )
    cache: bool = Field(
        default=DEFAULT_SERVING.cache, description="Cache every model's answers (opt-in)."
    )
    models: dict[str, ServingOptions] = Field(
        default_factory=dict,
        description='Per-model options as JSON, e.g. {"iris": {"workers": 1, "cache": true}}.',
    )
    cache_entries: int = Field(
        default=10_000, ge=1, description="Result cache bound in answers (all models share it)."
    )
    cache_bytes: int = Field(default=64 * 1024 * 1024, ge=0, description="Result cache bytes.")
    cache_ttl: float = Field(default=60.0, gt=0, description="Seconds a cached answer lives.")
    rate_limit: float | None = Field(
        default=None, gt=0, description="Requests/s per API key unless the key sets its own."
    )
    auth_failure_rate: float = Field(
        default=1.0,
        gt=0,
        description="Failed logins/s allowed per client address after a burst; then 429.",
    )
    auth_failure_burst: int = Field(
        default=10, ge=1, description="Failed logins a client address may make at once."
    )
    auth_failure_audit_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Refused logins are audited as one counted event per address and this span.",
    )
    jwt_secret: SecretStr | None = Field(
        default=None, description="Accept HS256 JWT bearer tokens signed with this secret."
    )
    jwt_jwks_file: Path | None = Field(
        default=None, description="Accept RS256/ES256 JWT bearer tokens signed by these keys."
    )
    jwt_audience: str | None = Field(default=None, description="Required `aud` of JWTs.")
    jwt_issuer: str | None = Field(default=None, description="Required `iss` of JWTs.")
    jwt_roles_claim: str = Field(default="roles", description="JWT claim listing roles.")
    session_secret: SecretStr | None = Field(
        default=None,
        description="Signs web console sessions (32+ characters); default: a random secret kept "
        "in the home (`session.secret`). Set the same one on every replica of a fleet.",
    )
    session_hours: float = Field(
        default=8.0, gt=0, le=24 * 30, description="How long a console sign-in lasts."
    )
    tls_cert: Path | None = Field(default=None, description="PEM certificate chain for TLS.")
    tls_key: Path | None = Field(default=None, description="PEM private key for TLS.")
    signing_key: Path | None = Field(
        default=None,
        description="Ed25519 private key file (PEM PKCS8) that signs edge bundles, e.g. a "
        "mounted secret shared by a fleet; default: the home's `signing/default.key`.",
    )
    rollout_tick: float = Field(
        default=0.5, gt=0, le=60, description="Seconds between rollout controller checks."
    )
    request_timeout: float = Field(
        default=30.0, gt=0, description="Default per-request deadline in seconds (504 after)."
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest request body accepted (413)."
    )
    max_tensor_elements: int = Field(
        default=64 * 1024 * 1024, ge=1, description="Most elements one input tensor may have."
    )
    max_control_body_bytes: int = Field(
        default=16 * 1024 * 1024,
        ge=1024,
        description="Largest body of a request outside the inference fast path (control "
        "plane, feedback), model uploads aside (413).",
    )
    max_upload_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024,
        description="Largest model upload, POST /api/models/{name}/versions (413).",
    )
    max_unpacked_bytes: int = Field(
        default=DEFAULT_UNPACK.max_bytes,
        ge=1024,
        description="Most bytes an uploaded model folder archive may unpack to (413).",
    )
    max_archive_files: int = Field(
        default=DEFAULT_UNPACK.max_files,
        ge=1,
        description="Most entries an uploaded model folder archive may hold (413).",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Seconds a connection has to send a request's headers; then it is closed.",
    )
    body_timeout: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Longest pause in seconds between chunks of a request body (408 after).",
    )
    advertise_url: str | None = Field(
        default=None,
        description="Where other replicas and operators reach this server (GET /api/cluster); "
        "default: the scheme, host and port it listens on.",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="Comma-separated addresses of load balancers whose X-Forwarded-For and "
        "X-Forwarded-Proto name the client (`*`: any). Empty: those headers are ignored, "
        "so no caller can claim another's address.",
    )
    http_processes: int | Literal["auto"] = Field(
        default=1,
        description="HTTP front processes sharing one port and one set of model workers per "
        "version (`auto`: a quarter of the cores, at least one).",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="Open HTTP connections (or requests in flight) beyond which a request "
        "gets 503 at once.",
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="Server logs: one JSON object per line, or plain text."
    )
    access_log: bool = Field(
        default=True, description="One log line per inference request (request id, latency)."
    )
    otlp_endpoint: str | None = Field(
        default=None,
        description="Export trace spans over OTLP/HTTP to this traces URL "
        "(e.g. http://127.0.0.1:4318/v1/traces); unset: no tracing.",
    )
    otlp_sample: float = Field(
        default=DEFAULT_TRACE_SAMPLE,
        ge=0,
        le=1,
        description="Share of requests traced (a caller's sampled traceparent is always traced).",
    )
    prediction_log_sample: float = Field(
        default=DEFAULT_DIRECT_SAMPLE,
        ge=0,
        le=1,
        description="Share of direct model calls kept in the prediction log "
        "(deployments set their own: monitoring.sample).",
    )
    prediction_log_batch: int = Field(
        default=DEFAULT_PREDICTION_LOG_BATCH,
        ge=1,
        le=100_000,
        description="Records per prediction-log write.",
    )
    prediction_log_flush_seconds: float = Field(
        default=DEFAULT_PREDICTION_LOG_FLUSH_SECONDS,
        gt=0,
        le=60,
        description="Longest wait before a prediction-log write.",
    )
    prediction_log_retention: str | None = Field(
        default="30d", description="Delete prediction-log records older than this (e.g. 30d)."
    )
    price_per_replica_hour: float | None = Field(
        default=None,
        ge=0,
        description="Price of one worker (one core) for an hour: enables cost per 1,000 "
        "predictions.",
    )
    isolation_timeout: float = Field(
        default=DEFAULT_ISOLATION.seconds,
        gt=0,
        le=3600,
        description="Seconds a throw-away process may take to inspect an uploaded model or "
        "predict a drift reference sample; then it is killed and the request refused (400).",
    )
    isolation_memory_bytes: int = Field(
        default=DEFAULT_ISOLATION.memory_bytes,
        ge=0,
        description="Address space (RLIMIT_AS) of that process; over it, refused (400). "
        "0 = no limit.",
    )
    env_manager: Literal["auto", "local", "uv"] = Field(
        default="auto",
        description="Where a version whose requirements this server's packages do not "
        "satisfy runs: `uv` builds an environment from its pins (once per host), `local` "
        "runs it here anyway, `auto` is uv when needed and installed.",
    )
    env_root: Path | None = Field(
        default=None,
        description="Folder of the per-version environments and their build logs; "
        "default: envs/ in the home.",
    )

    @field_validator("prediction_log_retention")
    @classmethod
    def _retention(cls, value: str | None) -> str | None:
        from shipyard.durations import duration_seconds
        from shipyard.errors import InvalidInput

        if value is not None:
            try:
                duration_seconds(value, "retention")
            except InvalidInput as exc:
                raise ValueError(exc.message) from None
        return value

    @property
    def prediction_log_retention_seconds(self) -> float | None:
        from shipyard.durations import duration_seconds

        if self.prediction_log_retention is None:
            return None
        return duration_seconds(self.prediction_log_retention)

    @field_validator("http_processes")
    @classmethod
    def _http_processes(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("http_processes must be at least 1, or auto")
        return value

    @property
    def http_process_count(self) -> int:
        if self.http_processes == "auto":
            return max(1, (os.cpu_count() or 1) // 4)
        return self.http_processes

    def serving_for(self, model: str) -> ModelServing:
        """The options for one model: its own entry in `models`, else the server-wide ones."""
        scaling = ScalingPolicy(
            min_workers=self.min_workers,
            max_workers=max(self.min_workers, self.max_workers_per_model or os.cpu_count() or 1),
            target_ongoing_requests=self.target_ongoing_requests,
            target_p95_ms=self.target_p95_ms,
            upscale_delay=self.upscale_delay,
            downscale_delay=self.downscale_delay,
            scale_to_zero_after=self.scale_to_zero_after,
        )
        if self.workers_per_model is not None:
            scaling = scaling.fixed_at(self.workers_per_model)
        server_wide = ModelServing(
            workers=scaling.floor,
            max_batch_size=self.max_batch_size,
            max_batch_delay=self.max_batch_delay_ms / 1000,
            max_queue=self.max_queue,
            max_queue_batches=self.max_queue_batches,
            cache=self.cache,
            scaling=scaling,
        )
        return server_wide.overridden_by(self.models.get(model))

    @property
    def memory_budget_bytes(self) -> int:
        """The workers' memory budget: the setting, else 80% of the machine's memory."""
        if self.memory_budget is not None:
            return int(self.memory_budget)
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return int(pages * page_size * 0.8)

    @property
    def unpack_limits(self) -> UnpackLimits:
        return UnpackLimits(self.max_unpacked_bytes, self.max_archive_files)

    @property
    def isolation_limits(self) -> IsolationLimits:
        return IsolationLimits(self.isolation_timeout, self.isolation_memory_bytes)

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

    @property
    def env_root_path(self) -> Path:
        """Where per-version environments are built (SHIPYARD_ENV_ROOT, else home/envs)."""
        return (self.env_root or self.home / "envs").resolve()

    @cached_property
    def cache_dir(self) -> Path:
        """Local folder where verified artifacts are unpacked for loading."""
        return (self.home / "cache").resolve()

    @property
    def redacted_database_url(self) -> str:
        """The database URL with any password masked, fit for logs."""
        from sqlalchemy import make_url

        return make_url(self.resolved_database_url).render_as_string(hide_password=True)
