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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from shipyard.config import ModelServing, ServingOptions
from shipyard.errors import Conflict, ModelNotReady, NotFound, ShipyardError
from shipyard.registry.records import ModelVersion
from shipyard.registry.refs import ModelRef, check_model_name, parse_version_or_alias
from shipyard.registry.service import Registry
from shipyard.runtimes.base import VersionSpec
from shipyard.serving.types import ModelKey, VersionSnapshot
from shipyard.serving.workers import WorkerPool

log = logging.getLogger("shipyard.models")
RESOLVE_TTL_SECONDS = 1.0

State = Literal["loading", "ready", "failed", "unloaded"]


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
    key: ModelKey = field(init=False)

    def __post_init__(self) -> None:
        self.key = key_of(self.record)


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
    ) -> None:
        self.registry = registry
        self.serving_for = serving_for
        """Options for a model name: worker count, batching, queue, cache."""
        self._serving_overrides: dict[str, ServingOptions] = {}
        self.models: dict[ModelKey, LoadedModel] = {}
        self._placed: set[ModelKey] = set()
        """Versions loaded on purpose (`load`: start-up, a deployer, a deployment's arms)."""
        self._resolved: dict[tuple[str, str | None], tuple[float, ModelVersion]] = {}
        self._refreshing: dict[tuple[str, str | None], asyncio.Future[ModelVersion]] = {}
        self._load_lock = asyncio.Lock()

    def _resolve_now(self, name: str, version: str | None) -> ModelVersion:
        check_model_name(name)
        if version is None:
            return self.registry.models.serving_version(ModelRef(name))
        parsed = parse_version_or_alias(version)
        if isinstance(parsed, int):
            return self.registry.models.get_version(ModelRef(name, version=parsed))
        return self.registry.models.get_version(ModelRef(name, alias=parsed))

    async def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The version a name addresses, kept off the hot path.

        A fresh answer comes from memory. A stale one (older than the TTL) is
        still returned at once while a single background query refreshes it, so
        no request waits on the database after the first, and a burst of
        requests never sends a burst of queries.
        """
        key = (name, version)
        cached = self._resolved.get(key)
        if cached is None:
            return await self._refresh(key)
        if time.monotonic() - cached[0] >= RESOLVE_TTL_SECONDS and key not in self._refreshing:
            task = asyncio.get_running_loop().create_task(self._refresh(key))
            task.add_done_callback(_ignore_refresh_errors)
        return cached[1]

    async def _refresh(self, key: tuple[str, str | None]) -> ModelVersion:
        running = self._refreshing.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[ModelVersion] = asyncio.get_running_loop().create_future()
        self._refreshing[key] = future
        try:
            record = await asyncio.to_thread(self._resolve_now, *key)
        except BaseException as exc:
            self._resolved.pop(key, None)  # a vanished model or alias stops resolving
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        else:
            self._resolved[key] = (time.monotonic(), record)
            future.set_result(record)
            return record
        finally:
            del self._refreshing[key]

    def override_serving(self, model: str, options: ServingOptions | None) -> None:
        """Options a deployment's manifest sets for its model (None: none); they apply to
        versions loaded from now on."""
        if options is None:
            self._serving_overrides.pop(model, None)
        else:
            self._serving_overrides[model] = options

    def is_ready(self, record: ModelVersion) -> bool:
        """Loaded and warm."""
        loaded = self.models.get(key_of(record))
        return loaded is not None and loaded.state == "ready"

    async def get_ready(
        self, record: ModelVersion, timeout: float, *, deployed: bool = False
    ) -> LoadedModel:
        """The loaded model for a resolved version, loading it first if a request may.

        `deployed`: a deployment's live revision routes to (or shadows) the version, or
        the caller may deploy (a deployer loads on demand); otherwise the version must be
        one any request may load (see above)."""
        loaded = self.models.get(key_of(record))
        if loaded is None or loaded.state in ("failed", "unloaded"):
            await self._check_demand(record, deployed)
            loaded = self.start_loading(record)
        if loaded.state != "ready":
            try:
                await asyncio.wait_for(loaded.ready.wait(), timeout)
            except TimeoutError:
                raise ModelNotReady(f"{loaded.key} is still loading; retry shortly") from None
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

    def start_loading(self, record: ModelVersion) -> LoadedModel:
        key = key_of(record)
        existing = self.models.get(key)
        if existing is not None and existing.state in ("loading", "ready"):
            return existing
        serving = self.serving_for(record.model).overridden_by(
            self._serving_overrides.get(record.model)
        )
        loaded = LoadedModel(record, serving)
        self.models[key] = loaded
        asyncio.get_running_loop().create_task(self._load(loaded))
        return loaded

    async def _load(self, loaded: LoadedModel) -> None:
        async with self._load_lock:
            if loaded.state != "loading":
                return
            started = time.perf_counter()
            try:
                path = await asyncio.to_thread(
                    self.registry.artifacts.materialize, loaded.record.artifact.digest
                )
                pool = WorkerPool(
                    VersionSpec.of(loaded.record, path),
                    processes=loaded.serving.workers,
                    max_batch_rows=loaded.serving.max_batch_size,
                    max_batch_delay=loaded.serving.max_batch_delay,
                    max_queue=loaded.serving.max_queue,
                )
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
                log.info("loaded %s in %.2f s", loaded.key, loaded.load_seconds)
            finally:
                loaded.ready.set()

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

    def snapshot(self) -> list[VersionSnapshot]:
        """Every version this manager knows, with its pool's counters: what monitoring reads."""
        return [
            VersionSnapshot(
                key=loaded.key,
                state=loaded.state,
                reason=loaded.reason,
                load_seconds=loaded.load_seconds,
                pool=loaded.pool.snapshot() if loaded.pool is not None else None,
            )
            for loaded in list(self.models.values())
        ]
