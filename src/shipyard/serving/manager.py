"""Which model versions are loaded, and loading or unloading them.

A name resolves to its `production` alias, else its latest version; an
explicit version is a number or an alias. Resolution is cached for a second,
so moving an alias switches what a name serves without a restart, and a hot
path does not hit the database per request. Loads run one at a time, so peak
memory during start-up is one model's.

Loading is a deploy action. A request may bring in only a version someone chose to
serve: what a name serves (its `production` alias, else its latest version), a version
an alias points at, or one placed here by the server's start, a deployer or a
deployment. Any other version is refused without loading it, and an archived version is
never loaded by a request: each load costs a model's memory.

Memory is budgeted: before a load, the resident memory of every worker (and spare) plus
the new workers' expected size must fit the server's budget, and the worker count its
cap. If not, spares are given up first, then the least recently used idle version that
`min_workers` does not pin is unloaded (it comes back on its next request, like a version
scaled to zero); if nothing can be freed, the load is refused at once with 503.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError

from shipyard.config import ModelServing, ScalingOptions, ServingOptions
from shipyard.errors import (
    Conflict,
    InvalidInput,
    ModelNotReady,
    NotFound,
    Overloaded,
    ShipyardError,
)
from shipyard.registry.records import ModelVersion
from shipyard.registry.refs import ModelRef, check_model_name, parse_version_or_alias
from shipyard.registry.service import Registry
from shipyard.runtimes.base import VersionSpec
from shipyard.runtimes.environments import EnvironmentBuilder
from shipyard.serving.memory import resident_bytes
from shipyard.serving.spares import Spare, Spares
from shipyard.serving.types import (
    COLD_START_BOUNDS,
    Elastic,
    ModelKey,
    RequestContext,
    ScalingDecision,
    VersionSnapshot,
)
from shipyard.serving.workers import WorkerPool

log = logging.getLogger("shipyard.models")
RESOLVE_TTL_SECONDS = 1.0
CHANGES_MAX_AGE = RESOLVE_TTL_SECONDS / 2
"""How old a read of the registry's change sequence may be when a stale name is checked:
one query per this interval for every name together, and a change seen within ~1 s."""
WORKER_SIZE_GUESS = 256 * 1024**2
"""Resident bytes expected of a worker of a framework this server has not loaded yet."""
RECENT_DECISIONS = 10
"""Scaling decisions kept per version for the API."""

State = Literal["loading", "ready", "failed", "unloaded", "idle"]


DEFAULT_SERVING = ModelServing()  # the defaults, written once in config.py


@dataclass
class LoadedModel:
    record: ModelVersion
    serving: ModelServing = DEFAULT_SERVING
    pool: WorkerPool | None = None
    state: State = "loading"
    reason: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    load_seconds: float = 0.0
    """Fetching the artifact and starting every worker (model load and warm-up)."""
    cold: bool = False
    """A request started this load and waits for it (a cold start)."""
    fetch_seconds: float = 0.0
    key: ModelKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = key_of(self.record)


@dataclass
class History:
    """What outlives one load of a version: cold starts, scaling decisions, worker size."""

    cold_starts: list[int] = field(default_factory=lambda: [0] * (len(COLD_START_BOUNDS) + 1))
    cold_start_seconds: float = 0.0
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    recent: deque[ScalingDecision] = field(default_factory=lambda: deque(maxlen=RECENT_DECISIONS))
    worker_bytes: int = 0
    """Resident memory of one of its workers, measured after its last load (0: never)."""
    scaling: ScalingOptions | None = None
    """Set by a deployer (`shipyard models scale`); outlives unloads."""


@dataclass
class _Resolved:
    """What a name addressed when last read, and the registry's change sequence then."""

    checked_at: float
    sequence: int
    record: ModelVersion


def key_of(record: ModelVersion) -> ModelKey:
    return ModelKey(record.model, record.version)


def _ignore_refresh_errors(task: asyncio.Task[ModelVersion]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("refreshing a model name failed: %s", task.exception())


class ModelManager:
    """Loads versions into worker pools on demand and keeps track of them."""

    def __init__(
        self,
        registry: Registry,
        serving_for: Callable[[str], ModelServing] = lambda _: DEFAULT_SERVING,
        *,
        spares: Spares | None = None,
        memory_budget: int | None = None,
        max_workers: int | None = None,
        attach: Callable[[ModelVersion, ModelServing], WorkerPool] | None = None,
        environments: EnvironmentBuilder | None = None,
    ) -> None:
        self.registry = registry
        self.environments = environments
        """Builds the environment of a version whose pins this interpreter does not
        satisfy (None: every version runs in the server's own)."""
        self.attach = attach
        """In a front process (serving/attached.py): the pool of a version whose workers
        another process runs. None: this manager starts its own workers."""
        self.serving_for = serving_for
        """Options for a model name: worker count, batching, queue, cache, scaling."""
        self.spares = spares
        self.memory_budget = memory_budget
        """Resident bytes all workers and spares may use together (None: no bound)."""
        self.max_workers = max_workers
        """Worker processes all versions may run together (None: no bound)."""
        self._serving_overrides: dict[str, ServingOptions] = {}
        self.models: dict[ModelKey, LoadedModel] = {}
        self.history: dict[ModelKey, History] = {}
        self._placed: set[ModelKey] = set()
        """Versions loaded on purpose (`load`: start-up, a deployer, a deployment's arms)."""
        self._resolved: dict[tuple[str, str | None], _Resolved] = {}
        self._refreshing: dict[tuple[str, str | None], asyncio.Future[ModelVersion]] = {}
        self._load_lock = asyncio.Lock()

    def _resolve_now(
        self, name: str, version: str | None, seen: int | None
    ) -> tuple[int, ModelVersion | None]:
        """The registry's change sequence, and what the name addresses (None: nothing
        changed since `seen`, so the answer resolved then still holds)."""
        sequence = self.registry.changes.current(CHANGES_MAX_AGE)  # read first: see changes.py
        if sequence == seen:
            return sequence, None
        check_model_name(name)
        if version is None:
            return sequence, self.registry.models.serving_version(ModelRef(name))
        parsed = parse_version_or_alias(version)
        if isinstance(parsed, int):
            return sequence, self.registry.models.get_version(ModelRef(name, version=parsed))
        return sequence, self.registry.models.get_version(ModelRef(name, alias=parsed))

    async def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The version a name addresses, kept off the hot path.

        A fresh answer comes from memory. A stale one (older than the TTL) is
        still returned at once while a single background query refreshes it, so
        no request waits on the database after the first, and a burst of
        requests never sends a burst of queries. The refresh reads the name again
        only if the registry's change sequence moved since the answer was read: in
        the steady state, one single-row query a half second serves every name.
        """
        key = (name, version)
        cached = self._resolved.get(key)
        if cached is None:
            return await self._refresh(key)
        now = time.monotonic()
        if now - cached.checked_at >= RESOLVE_TTL_SECONDS and key not in self._refreshing:
            if self.registry.changes.cached(CHANGES_MAX_AGE) == cached.sequence:
                cached.checked_at = now  # nothing changed: no thread, no query
            else:
                task = asyncio.get_running_loop().create_task(self._refresh(key, cached))
                task.add_done_callback(_ignore_refresh_errors)
        return cached.record

    async def _refresh(
        self, key: tuple[str, str | None], cached: _Resolved | None = None
    ) -> ModelVersion:
        running = self._refreshing.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[ModelVersion] = asyncio.get_running_loop().create_future()
        self._refreshing[key] = future
        seen = cached.sequence if cached is not None else None
        try:
            sequence, record = await asyncio.to_thread(self._resolve_now, *key, seen)
        except BaseException as exc:
            self._resolved.pop(key, None)  # a vanished model or alias stops resolving
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            if record is None:
                assert cached is not None  # unchanged since `seen`, which came from it
                record = cached.record
            self._resolved[key] = _Resolved(time.monotonic(), sequence, record)
            future.set_result(record)
            return record
        finally:
            del self._refreshing[key]

    def override_serving(self, model: str, options: ServingOptions | None) -> None:
        """Options a deployment's manifest sets for its model (None: none); they apply to
        versions loaded from now on, and their scaling to loaded ones now."""
        if options is None:
            self._serving_overrides.pop(model, None)
        else:
            self._serving_overrides[model] = options
        for loaded in list(self.models.values()):
            if loaded.record.model == model:
                loaded.serving = loaded.serving.scaled(self._serving_of(loaded.record).scaling)

    def is_ready(self, record: ModelVersion) -> bool:
        """Loaded and warm, or scaled to zero (its next request loads it: it serves)."""
        loaded = self.models.get(key_of(record))
        return loaded is not None and loaded.state in ("ready", "idle")

    def refuse_if_full(self, record: ModelVersion) -> None:
        """Overloaded now if the version's queue would refuse any request (see
        WorkerPool.refuse_if_full); not for a cached version, whose answers may need no
        worker."""
        loaded = self.models.get(key_of(record))
        if loaded is not None and loaded.pool is not None and not loaded.serving.cache:
            loaded.pool.refuse_if_full()

    async def get_ready(
        self,
        record: ModelVersion,
        timeout: float,
        *,
        deployed: bool = False,
        context: RequestContext | None = None,
    ) -> LoadedModel:
        """The loaded model for a resolved version, loading it first if a request may.

        `deployed`: a deployment's live revision routes to (or shadows) the version, or
        the caller may deploy (a deployer loads on demand); otherwise the version must be
        one any request may load (see above). A request that waits for a load (a cold
        start) has the wait written in its `context`; concurrent ones share one load."""
        loaded = self.models.get(key_of(record))
        if loaded is None or loaded.state in ("failed", "unloaded", "idle"):
            await self._check_demand(record, deployed)
            loaded = self.start_loading(record, cold=True)
        if loaded.state != "ready":
            waiting = time.perf_counter()
            try:
                await asyncio.wait_for(loaded.ready.wait(), timeout)
            except TimeoutError:
                raise ModelNotReady(f"{loaded.key} is still loading; retry shortly") from None
            finally:
                if context is not None:
                    context.cold_start = time.perf_counter() - waiting
        if loaded.state != "ready":
            raise ModelNotReady(f"{loaded.key} is not available: {loaded.reason}")
        return loaded

    async def _check_demand(self, record: ModelVersion, deployed: bool) -> None:
        """Refuse (409) a load a request asks for but nobody deployed."""
        if record.archived:
            raise Conflict(
                f"version {record.version} of {record.model} is archived: "
                "it is never loaded to answer requests"
            )
        if deployed or key_of(record) in self._placed or record.aliases:
            return
        serving = await self.resolve(record.model)
        if serving.version != record.version:
            raise Conflict(
                f"version {record.version} of {record.model} is not deployed: "
                "load it with a deployer key or route a deployment to it"
            )

    def start_loading(self, record: ModelVersion, *, cold: bool = False) -> LoadedModel:
        key = key_of(record)
        existing = self.models.get(key)
        if existing is not None and existing.state in ("loading", "ready"):
            return existing
        loaded = LoadedModel(record, self._serving_of(record), cold=cold)
        self.models[key] = loaded
        asyncio.get_running_loop().create_task(self._load(loaded))
        return loaded

    def _serving_of(self, record: ModelVersion) -> ModelServing:
        serving = self.serving_for(record.model).overridden_by(
            self._serving_overrides.get(record.model)
        )
        own = self._history(key_of(record)).scaling
        if own is None:
            return serving
        scaling = serving.scaling.overridden_by(own)
        return serving.scaled(scaling)

    def _history(self, key: ModelKey) -> History:
        history = self.history.get(key)
        if history is None:
            history = self.history[key] = History()
        return history

    async def _load(self, loaded: LoadedModel) -> None:
        async with self._load_lock:
            if loaded.state != "loading":
                return
            started = time.perf_counter()
            try:
                if self.attach is not None:
                    pool = self.attach(loaded.record, loaded.serving)
                else:
                    pool = await self._start_pool(loaded, started)
                await pool.start()
            except ShipyardError as exc:
                loaded.state, loaded.reason = "failed", exc.message
                log.error("loading %s failed: %s", loaded.key, exc.message)
            except Exception as exc:
                # Callers see the kind of failure; its words (paths, say) stay in the log.
                loaded.state = "failed"
                loaded.reason = f"{type(exc).__name__} (see the server log)"
                log.exception("loading %s failed", loaded.key)
            else:
                loaded.pool, loaded.state = pool, "ready"
                loaded.load_seconds = time.perf_counter() - started
                self._loaded(loaded, pool)
            finally:
                loaded.ready.set()

    async def _start_pool(self, loaded: LoadedModel, started: float) -> WorkerPool:
        """A pool of this server's own workers for a version (started by the caller)."""
        await self._make_room(loaded)
        path = await asyncio.to_thread(
            self.registry.artifacts.materialize, loaded.record.artifact.digest
        )
        loaded.fetch_seconds = time.perf_counter() - started
        spec = VersionSpec.of(loaded.record, path)
        python = None
        if self.environments is not None and spec.environment:
            # A build takes seconds to minutes: in a thread, while other versions serve.
            python = await asyncio.to_thread(self.environments.python_for, spec.environment)
        if self.spares is not None and python is None:
            self.spares.keep(loaded.record.flavor)
        return WorkerPool(
            spec,
            python=python,
            processes=loaded.serving.workers,
            max_batch_rows=loaded.serving.max_batch_size,
            max_batch_delay=loaded.serving.max_batch_delay,
            max_queue=loaded.serving.max_queue,
            max_queue_batches=loaded.serving.max_queue_batches,
            spares=self.spares,
        )

    def _loaded(self, loaded: LoadedModel, pool: WorkerPool) -> None:
        """Remember the load: a worker's size for the budget, a cold start's duration."""
        history = self._history(loaded.key)
        pids = pool.pids()
        if pids:
            history.worker_bytes = resident_bytes(pids) // len(pids)
        phases = {"fetch": loaded.fetch_seconds, **pool.phases}
        if loaded.cold:
            history.cold_starts[bisect.bisect_left(COLD_START_BOUNDS, loaded.load_seconds)] += 1
            history.cold_start_seconds += loaded.load_seconds
        log.info(
            "loaded %s in %.2f s%s",
            loaded.key,
            loaded.load_seconds,
            " (cold start)" if loaded.cold else "",
            extra={"fields": {"phases": {k: round(v, 4) for k, v in phases.items()}}},
        )

    # --- memory budget and worker cap -------------------------------------------------

    def _worker_bytes(self, record: ModelVersion) -> int:
        """Expected resident bytes of one worker of `record`: measured at its last load,
        else the mean of measured workers of its framework, else of any, else a guess."""
        own = self._history(key_of(record)).worker_bytes
        if own:
            return own
        sizes = [
            (loaded.record.flavor, h.worker_bytes)
            for key, h in self.history.items()
            if h.worker_bytes and (loaded := self.models.get(key)) is not None
        ]
        alike = [size for flavor, size in sizes if flavor == record.flavor]
        known = alike or [size for _, size in sizes]
        return sum(known) // len(known) if known else WORKER_SIZE_GUESS

    def workers_running(self) -> int:
        """Worker processes of every version: ready, starting and draining."""
        return sum(
            len(p.workers) + p.starting + len(p.draining)
            for p in (loaded.pool for loaded in self.models.values())
            if p is not None
        )

    def memory_in_use(self) -> int:
        """Resident bytes of every worker and spare now."""
        pids = [pid for loaded in self.models.values() if loaded.pool for pid in loaded.pool.pids()]
        if self.spares is not None:
            pids += self.spares.pids()
        return resident_bytes(pids)

    def elastic(self) -> list[Elastic]:
        """Every version serving now, for the autoscaler."""
        return [
            Elastic(loaded.key, loaded.serving.scaling, loaded.pool)
            for loaded in list(self.models.values())
            if loaded.state == "ready" and loaded.pool is not None
        ]

    def room_for(self, key: ModelKey, workers: int) -> int:
        """How many of `workers` more workers of `key` fit the budget and the cap now,
        without unloading anything (a scale-up does not evict other versions)."""
        loaded = self.models.get(key)
        if loaded is None:
            return 0
        record = loaded.record
        fits = workers
        if self.max_workers is not None:
            fits = min(fits, self.max_workers - self.workers_running())
        if self.memory_budget is not None:
            free = self.memory_budget - self.memory_in_use()
            fits = min(fits, free // max(1, self._worker_bytes(record)))
        return max(0, fits)

    async def _make_room(self, loaded: LoadedModel) -> None:
        """Free what loading `loaded` needs, or refuse it (Overloaded, 503)."""
        needed = loaded.serving.workers
        size = self._worker_bytes(loaded.record)
        while True:
            short_of_workers = (
                self.max_workers is not None and self.workers_running() + needed > self.max_workers
            )
            short_of_memory = (
                self.memory_budget is not None
                and self.memory_in_use() + needed * size > self.memory_budget
            )
            if not (short_of_workers or short_of_memory):
                return
            spare = self.spares.shed() if short_of_memory and self.spares is not None else None
            if spare is not None:
                await asyncio.to_thread(spare.stop)
                continue
            victim = self._least_recently_used(loaded.key)
            if victim is None:
                what = "worker cap" if short_of_workers else "memory budget"
                raise Overloaded(
                    f"{loaded.key} cannot load: the server's {what} is in use by versions "
                    "that are busy or kept loaded by min_workers; retry later"
                )
            await self._park(victim, "memory" if short_of_memory else "workers")

    def _least_recently_used(self, but: ModelKey) -> LoadedModel | None:
        """The idle version unloaded first for room: nothing in flight, not pinned by
        min_workers, its last request the oldest."""
        idle = [
            loaded
            for loaded in self.models.values()
            if loaded.key != but
            and loaded.state == "ready"
            and loaded.pool is not None
            and loaded.pool.ongoing == 0
            and loaded.serving.scaling.min_workers == 0
        ]
        return min(idle, key=lambda m: m.pool.last_arrival if m.pool else 0.0, default=None)

    async def forget(self, key: ModelKey, reason: str) -> None:
        """Drop a version's pool even with requests in it, which fail with 503 (its workers
        are gone: the primary closed them); the next request loads it anew."""
        loaded = self.models.get(key)
        if loaded is None or loaded.pool is None:
            return
        pool, loaded.pool, loaded.state = loaded.pool, None, "idle"
        log.info("%s: %s", key, reason)
        await pool.close()

    async def park(self, key: ModelKey, reason: str) -> bool:
        """Unload an idle version but keep it servable: its next request loads it again
        (scale to zero, or room for another version). False if a request came first."""
        loaded = self.models.get(key)
        return loaded is not None and await self._park(loaded, reason)

    async def _park(self, loaded: LoadedModel, reason: str) -> bool:
        pool = loaded.pool
        if loaded.state != "ready" or pool is None or pool.ongoing:
            return False
        # Synchronously, before any await: from here a request sees "idle" and loads anew.
        loaded.state, loaded.pool = "idle", None
        self.record(
            loaded.key,
            ScalingDecision(time.time(), pool.desired, 0, "zero", reason),
        )
        log.info("unloaded idle %s (%s)", loaded.key, reason)
        await pool.close()
        return True

    def record(self, key: ModelKey, decision: ScalingDecision) -> None:
        """Keep a scaling decision for the API and the metrics."""
        history = self._history(key)
        history.decisions[decision.direction, decision.reason] += 1
        history.recent.append(decision)

    def set_scaling(self, record: ModelVersion, options: ScalingOptions) -> ModelServing:
        """A deployer's scaling bounds for one version; they apply now if it is loaded
        (the autoscaler moves its workers into them) and at its every later load."""
        history = self._history(key_of(record))
        if history.scaling is not None:
            merged = history.scaling.model_dump(exclude_none=True)
            try:
                options = ScalingOptions(**{**merged, **options.model_dump(exclude_none=True)})
            except ValidationError as exc:  # with the bounds set before, min ends above max
                raise InvalidInput(
                    "invalid scaling with the bounds set before: "
                    + "; ".join(str(e["msg"]) for e in exc.errors())
                ) from None
        history.scaling = options
        serving = self._serving_of(record)
        loaded = self.models.get(key_of(record))
        if loaded is not None:
            loaded.serving = serving
            if loaded.pool is not None:
                self._clamp(loaded, loaded.pool)
        return serving

    def _clamp(self, loaded: LoadedModel, pool: WorkerPool) -> None:
        """Move a pool into new bounds now (a deployer's change), not at the next tick."""
        scaling = loaded.serving.scaling
        current = pool.desired
        desired = min(max(current, scaling.floor), scaling.max_workers)
        if desired > current:
            desired = current + self.room_for(loaded.key, desired - current)
        if desired == current:
            return
        direction = "up" if desired > current else "down"
        self.record(loaded.key, ScalingDecision(time.time(), current, desired, direction, "manual"))
        pool.wanted = desired
        pool.scale_to(desired)

    def is_loaded(self, record: ModelVersion) -> bool:
        """Loaded and warm now (not scaled to zero)."""
        loaded = self.models.get(key_of(record))
        return loaded is not None and loaded.state == "ready"

    async def load(self, name: str, version: str | None = None) -> LoadedModel:
        """Load a version on purpose (start-up, a deployer, a deployment): requests may
        then bring it back after a failure, until it is unloaded."""
        record = await self.resolve(name, version)
        self._placed.add(key_of(record))
        loaded = self.start_loading(record)
        await loaded.ready.wait()
        if loaded.state != "ready":
            raise ModelNotReady(f"{loaded.key} failed to load: {loaded.reason}")
        return loaded

    async def unload(self, name: str, version: str | None = None) -> ModelKey:
        record = await self.resolve(name, version)
        key = key_of(record)
        loaded = self.models.get(key)
        if loaded is None or loaded.state == "unloaded":
            raise NotFound(f"{key} is not loaded")
        self._placed.discard(key)
        await loaded.ready.wait()
        if loaded.pool is not None:
            await loaded.pool.close()
        loaded.pool, loaded.state = None, "unloaded"
        return key

    async def close(self) -> None:
        for loaded in list(self.models.values()):
            if loaded.pool is not None:
                await loaded.pool.close()
                loaded.pool, loaded.state = None, "unloaded"
        spares: list[Spare] = self.spares.close() if self.spares is not None else []
        for spare in spares:
            await asyncio.to_thread(spare.stop)

    def snapshot(self) -> list[VersionSnapshot]:
        """Every version this manager knows, with its pool's counters: what monitoring reads."""
        return [self._snapshot(loaded) for loaded in list(self.models.values())]

    def _snapshot(self, loaded: LoadedModel) -> VersionSnapshot:
        pool = loaded.pool
        history = self._history(loaded.key)
        return VersionSnapshot(
            key=loaded.key,
            state=loaded.state,
            reason=loaded.reason,
            load_seconds=loaded.load_seconds,
            pool=pool.snapshot() if pool is not None else None,
            cold_starts=tuple(history.cold_starts),
            cold_start_seconds=history.cold_start_seconds,
            decisions=tuple((d, r, n) for (d, r), n in sorted(history.decisions.items())),
            recent=tuple(history.recent),
            min_workers=loaded.serving.scaling.min_workers,
            max_workers=loaded.serving.scaling.max_workers,
        )
