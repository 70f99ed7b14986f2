"""The internal request and response every transport decodes into and encodes from.

Plain slotted dataclasses over numpy arrays: no validation framework on the hot path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from shipyard.config import ScalingPolicy, ServingOptions
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
    cold_start: float = 0.0
    """Seconds it waited for its version to load (a cold start); 0 when it was loaded."""


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
    """Where requests a version answered, or failed on, go to be sampled into the
    prediction log (monitoring)."""

    def offer(
        self, context: RequestContext, inputs: Tensors, outputs: Tensors, failed: bool = False
    ) -> None:
        """Take the request or not (sampling); never blocks, never raises. A failed one
        has inputs and no outputs."""


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
    desired: int = 0
    """Workers the pool aims at now."""
    wanted: int = 0
    """Workers the scaling policy asked for; above `desired` when the memory budget or
    the worker cap held the pool back."""
    starting: int = 0
    """Workers spawned or taken from the spares, not yet loaded and warm."""
    draining: int = 0
    """Workers finishing what they hold before they stop (scale-down)."""
    memory_bytes: int = 0
    """Resident memory of its workers."""
    """Predict calls per BATCH_SIZE_BOUNDS bucket, then +Inf; each bucket on its own
    (not cumulative)."""


@dataclass(frozen=True, slots=True)
class LoadSample:
    """What a worker pool saw over one observation interval: the autoscaler's input."""

    at: float
    """Monotonic seconds at the end of the interval."""
    seconds: float
    """Length of the interval."""
    ongoing: float
    """Requests in flight plus queued, averaged over the interval (time-weighted)."""
    arrivals: int
    """Requests that arrived in the interval."""
    p95_ms: float | None
    """p95 of queue wait plus predict of the requests answered in it (None: none were)."""
    workers: int
    """Workers ready to take requests at the end of the interval."""


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    """One change of a pool's desired worker count, with what it was based on."""

    at: float
    """Unix time of the decision."""
    current: int
    desired: int
    direction: str
    """up or down (zero: the version is unloaded)."""
    reason: str
    """load, latency, idle, budget, crash, manual, policy (min/max changed) or memory."""
    ongoing: float = 0.0
    p95_ms: float | None = None

    def document(self) -> dict[str, object]:
        """The decision as the control-plane API shows it."""
        return {
            "at": self.at,
            "from": self.current,
            "to": self.desired,
            "direction": self.direction,
            "reason": self.reason,
            "ongoing": round(self.ongoing, 3),
            "p95_ms": None if self.p95_ms is None else round(self.p95_ms, 3),
        }


class ElasticPool(Protocol):
    """A version's worker pool as the autoscaler sees it (serving.workers.WorkerPool)."""

    desired: int
    """Workers it aims at now."""
    wanted: int
    """What the policy last asked for, before the memory budget or worker cap."""

    def observe(self, now: float) -> LoadSample:
        """Its load since the last call (`now` is the event loop's clock)."""

    def scale_to(self, desired: int) -> None:
        """Start or drain workers to reach `desired` (at least one)."""


@dataclass(frozen=True, slots=True)
class Elastic:
    """One version serving now, with what the autoscaler needs to resize it."""

    key: ModelKey
    policy: ScalingPolicy
    pool: ElasticPool


class Capacity(Protocol):
    """What the autoscaler may do to the loaded versions (ModelManager implements it)."""

    def elastic(self) -> list[Elastic]:
        """Every version serving now (loaded, with a pool)."""

    def room_for(self, key: ModelKey, workers: int) -> int:
        """How many of `workers` more workers of `key` fit the memory budget and cap."""

    async def park(self, key: ModelKey, reason: str) -> bool:
        """Unload an idle version, servable still (scale to zero); False if busy."""

    def record(self, key: ModelKey, decision: ScalingDecision) -> None:
        """Keep a decision for the API and the metrics."""


COLD_START_BOUNDS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Upper bounds (seconds) of the cold-start histogram's buckets; the last is +Inf."""


@dataclass(frozen=True, slots=True)
class VersionSnapshot:
    """One version a model manager knows: its state and, once it serves, its pool."""

    key: ModelKey
    state: str
    """loading, ready, failed, unloaded, or idle (scaled to zero or evicted for memory:
    the next request loads it again)."""
    reason: str = ""
    """Why it failed to load."""
    load_seconds: float = 0.0
    pool: PoolSnapshot | None = None
    """None while no worker pool serves it (loading, failed, unloaded, idle)."""
    cold_starts: tuple[int, ...] = (0,) * (len(COLD_START_BOUNDS) + 1)
    """Loads a request waited for, per COLD_START_BOUNDS bucket (not cumulative)."""
    cold_start_seconds: float = 0.0
    """Sum of those loads' durations."""
    decisions: tuple[tuple[str, str, int], ...] = ()
    """(direction, reason, count) of scaling decisions since the server started."""
    recent: tuple[ScalingDecision, ...] = ()
    """The last few scaling decisions, oldest first."""
    min_workers: int = 0
    max_workers: int = 1


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
