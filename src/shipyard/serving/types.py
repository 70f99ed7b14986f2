"""The internal request and response every transport decodes into and encodes from.

Plain slotted dataclasses over numpy arrays: no validation framework on the hot path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from shipyard.config import ServingOptions
from shipyard.registry.records import ModelVersion
from shipyard.runtimes.base import Tensors


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(slots=True)
class InferRequest:
    inputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    """Request-level `binary_data_output`: every output as raw bytes."""


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    """Answered from the result cache (transports may say so in a header)."""


@dataclass(slots=True)
class RequestContext:
    """One request's identity and timeline, filled in by each layer it passes.

    Stamps are `time.perf_counter()` readings (0.0: the stage did not happen).
    Monitoring reads the finished context after the answer is sent: metrics,
    the access log line, the prediction log and trace spans all come from it,
    so the layers themselves only write a few floats.
    """

    request_id: str
    started: float
    """perf_counter() when the request arrived."""
    wall: float
    """time.time() when the request arrived (for logs, spans and the prediction log)."""
    transport: str = "rest"
    route: str = ""
    """The path template or gRPC method."""
    traceparent: str | None = None
    """The caller's W3C trace context header, if it sent one."""
    deployment: str | None = None
    model: str | None = None
    version: str | None = None
    status: int = 200
    error: str | None = None
    rows: int = 0
    cached: bool = False
    decoded: float = 0.0
    """The body is parsed into tensors."""
    queued: float = 0.0
    """Entered its version's worker queue."""
    dispatched: float = 0.0
    """Left the queue in a batch bound for a worker."""
    predicted: float = 0.0
    """The worker's answer is back."""
    finished: float = 0.0
    """The answer is encoded and about to be sent."""
    batch_rows: int = 0
    """Rows in the batch that carried it to the worker."""
    batch_wait: float = 0.0
    """Seconds it was held with a worker free, waiting for a fuller batch (max_batch_delay)."""


class ModelKey(NamedTuple):
    """One model version as the data plane keys it (loaded models, caches, metrics)."""

    model: str
    version: int

    def __str__(self) -> str:
        return f"{self.model}:{self.version}"


PIN_METADATA = "x-shipyard-version"
"""Header (REST) or metadata key (gRPC) that pins a request to one version of a deployment."""


@dataclass(slots=True)
class RequestHints:
    """What a transport knows about a request beyond its tensors, the same for every transport.

    `metadata` reads one request header (REST) or metadata entry (gRPC) by its lower-case
    name: a deployment sticky by header reads its key through it, so stickiness works the
    same over both transports without the core knowing either.
    """

    pinned_version: str | None = None
    """A version (number or alias) the caller pinned; the gate has checked its role."""
    metadata: Callable[[str], str | None] = field(default=lambda _: None)
    context: RequestContext | None = None
    """The request's identity and timeline, when the transport keeps one (monitoring)."""
    models: frozenset[str] | None = None
    """The models the caller may call (its key's scope); None: any."""
    may_deploy: bool = False
    """The caller's role may deploy, so a request of its may load a version on demand."""


Predictor = Callable[["ModelVersion"], Awaitable[Tensors]]
"""Answers the request at hand with another version (shadow and comparison copies)."""


class Routed(Protocol):
    """A deployment's live revision as the data plane sees it (routing implements it)."""

    @property
    def name(self) -> str:
        """The deployment."""

    @property
    def main(self) -> ModelVersion:
        """What the deployment mostly serves: requests decode against its signature."""

    def choose(self, request: InferRequest, hints: RequestHints) -> ModelVersion:
        """The version that answers this request (sticky key or weighted draw)."""

    def observe(
        self, chosen: ModelVersion, seconds: float, outputs: Tensors | None, copy: Predictor
    ) -> None:
        """Count one answer (`outputs`) or server-side failure (None) for rollout gates,
        and send the shadow and comparison copies it is due; never waits for them."""


class PredictionSink(Protocol):
    """Where answered requests go to be sampled into the prediction log (monitoring)."""

    def offer(self, context: RequestContext, inputs: Tensors, outputs: Tensors) -> None:
        """Take the request or not (sampling); never blocks, never raises."""


class VersionSource(Protocol):
    """Names to versions, and loading them (serving.manager.ModelManager implements it)."""

    async def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The version a name (and a number or alias) addresses now."""

    async def load(self, name: str, version: str | None = None) -> object:
        """Load it and warm it; return once it answers."""

    def override_serving(self, model: str, options: ServingOptions | None) -> None:
        """Serving options a deployment sets for its model's versions loaded from now on."""


class Router(Protocol):
    """Finds the deployment a name addresses (routing.DeploymentRouter implements it)."""

    async def route(self, name: str) -> Routed | None:
        """The deployment's live revision, or None when `name` is no deployment."""


BATCH_SIZE_BOUNDS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
"""Upper bounds of the batch-size histogram's buckets (rows); the last bucket is +Inf."""


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """A worker pool's counters at one moment: what monitoring reads (metrics, cost)."""

    workers: int
    """Live worker processes."""
    pids: tuple[int, ...]
    """Process ids of the pool's started workers (cost reads their CPU time)."""
    queued: int
    """Requests waiting for a worker."""
    batches: int
    rows: int
    refused: int
    """Requests refused by admission control (503)."""
    restarts: int
    batch_sizes: tuple[int, ...]
    """Predict calls per BATCH_SIZE_BOUNDS bucket, then +Inf; each bucket on its own
    (not cumulative)."""


@dataclass(frozen=True, slots=True)
class VersionSnapshot:
    """One version a model manager knows: its state and, once it serves, its pool."""

    key: ModelKey
    state: str
    """loading, ready, failed or unloaded."""
    reason: str = ""
    """Why it failed to load."""
    load_seconds: float = 0.0
    pool: PoolSnapshot | None = None
    """None while no worker pool serves it (loading, failed, unloaded)."""


@dataclass(frozen=True, slots=True)
class CacheLookups:
    """Result cache lookups for one version since start."""

    key: ModelKey
    hits: int
    misses: int


@dataclass(frozen=True, slots=True)
class CacheSnapshot:
    """The result cache's size and lookups at one moment."""

    entries: int
    bytes: int
    lookups: tuple[CacheLookups, ...] = ()


@dataclass(frozen=True, slots=True)
class DeploymentSnapshot:
    """The revision a deployment serves and the shadow copies it sent."""

    deployment: str
    revision: int
    shadow_sent: int = 0
    shadow_agreed: int = 0
    shadow_failed: int = 0
    shadow_seconds: float = 0.0
