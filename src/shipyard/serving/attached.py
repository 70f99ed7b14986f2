"""Several HTTP front processes, one set of model workers per version.

`shipyard server --http-processes N` runs the server's own process (the primary) and
N-1 front processes that accept HTTP on the socket the primary bound. The primary keeps
everything that decides: the model manager, the worker pools, the autoscaler, the memory
budget. A front keeps its own queue and batcher per version (an `AttachedPool`) and
sends its batches straight to the primary's workers over their Unix sockets
(worker_process.py), so a prediction crosses no more processes than with one front.

Each front talks to the primary over one pipe (`Channel`):
- front → primary: `attach` (serve this version; which workers?), `load` (what its
  requests put on each version since the last report, for the autoscaler, and the
  batches it ran, for the metrics), and whatever else the composition adds (metrics).
- primary → front: `attached` (the answer), `workers` (a version's workers changed:
  started, drained, replaced, or the pool closed).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import defaultdict
from collections.abc import Callable
from multiprocessing.connection import Client, Connection
from typing import Any

from shipyard import errors
from shipyard.config import ModelServing
from shipyard.errors import ModelNotReady, ShipyardError
from shipyard.registry.records import ModelVersion
from shipyard.runtimes.base import VersionSpec
from shipyard.serving.types import LoadSample, ModelKey
from shipyard.serving.workers import PoolStats, Worker, WorkerPool

log = logging.getLogger("shipyard.fronts")
ATTACH_TIMEOUT_SECONDS = 600.0
"""How long the primary may take to load a version a front asked for (the front's
request keeps its own, shorter deadline)."""

Handler = Callable[..., None]


class Channel:
    """One end of the pipe between the primary and a front: tagged messages, read on the
    event loop as they arrive."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.handlers: dict[str, Handler] = {}
        self.on_close: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def on(self, kind: str, handler: Handler) -> None:
        self.handlers[kind] = handler

    def start(self) -> None:
        """Read messages on the running loop (call from it)."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.connection.fileno(), self._on_readable)

    def send(self, kind: str, *args: Any) -> bool:
        """Send a message; False when the other end is gone."""
        try:
            self.connection.send((kind, *args))
        except (OSError, ValueError):
            return False
        return True

    def _on_readable(self) -> None:
        try:
            while self.connection.poll():
                kind, *args = self.connection.recv()
                handler = self.handlers.get(kind)
                if handler is None:
                    log.warning("unknown message %r between front processes", kind)
                    continue
                handler(*args)
        except (EOFError, OSError):
            self.close()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.connection.fileno())
            self._loop = None
        self.connection.close()
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close()


# --- the front's side ---------------------------------------------------------------


class AttachedWorker(Worker):
    """A front's connection to a worker process the primary runs."""

    def __init__(self, spec: VersionSpec, loop: asyncio.AbstractEventLoop, address: str) -> None:
        self.spec = spec
        self.loop = loop
        self.address = address
        # A Unix socket connect to a listening worker returns at once.
        self.connection = Client(address, family="AF_UNIX")
        self.phases = {}
        self.pending = {}
        self.segments = {}
        self.alive = True
        self._reading = False
        self.on_death = None

    def _died(self) -> None:
        if not self.alive:
            return
        self.alive = False
        log.warning("lost the worker for %s at %s", self.spec.key, self.address)
        self._lost()

    def stop(self) -> None:
        """Let go of the worker (the primary stops it)."""
        self.alive = False
        self.connection.close()


class AttachedPool(WorkerPool):
    """A front's queue and batcher for a version whose workers the primary runs."""

    def __init__(self, spec: VersionSpec, serving: ModelServing, front: FrontSide) -> None:
        super().__init__(
            spec,
            processes=1,
            max_batch_rows=serving.max_batch_size,
            max_batch_delay=serving.max_batch_delay,
            max_queue=serving.max_queue,
            max_queue_batches=serving.max_queue_batches,
        )
        self.front = front
        self.key = ModelKey(spec.model, spec.version)

    async def start(self) -> None:
        now = asyncio.get_running_loop().time()
        self._marked = self._observed = self.last_arrival = now
        addresses = await self.front.attach(self)
        self.attach_to(addresses)
        if not self.workers:
            raise ModelNotReady(f"{self.spec.key} has no live worker right now; retry shortly")

    def attach_to(self, addresses: list[str]) -> None:
        """Send batches to exactly these workers from now on: connect to new ones, let go
        of the others once the batches they hold are answered."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        known = {worker.address for worker in self.workers}
        for address in addresses:
            if address in known:
                continue
            try:
                worker = AttachedWorker(self.spec, loop, address)
            except OSError as exc:  # it stopped since the primary listed it
                log.info("%s: worker at %s is gone: %s", self.spec.key, address, exc)
                continue
            worker.on_death = self._replace
            worker.start_reading()
            self.workers.append(worker)
        listed = set(addresses)
        for gone in [w for w in self.workers if w.address not in listed]:
            self.workers.remove(gone)
            self.draining.append(gone)
        self.desired = self.size = max(1, len(self.workers))
        self._retire_drained()
        self._dispatch()

    def _converge(self) -> None:
        """Nothing to start or stop here: the primary runs the workers."""

    def scale_to(self, desired: int) -> None:
        """The primary's autoscaler sizes the pool; a front only follows."""

    def _replace(self, dead: Worker) -> None:
        # The primary replaces a dead worker and says so with the new list.
        if dead in self.draining:
            self.draining.remove(dead)
        elif dead in self.workers:
            self.workers.remove(dead)

    async def close(self) -> None:
        self._closed = True
        if self._delayed is not None:
            self._delayed.cancel()
        for worker in [*self.workers, *self.draining]:
            worker.on_death = None
            worker.detach()
            worker.stop()
        self.workers, self.draining = [], []
        self._fail(list(self.queue), ModelNotReady(f"{self.spec.key} was unloaded"))
        self.queue.clear()

    def pids(self) -> list[int]:
        return []  # the primary's processes: it measures and reports them

    def report(self, now: float) -> tuple[LoadSample, PoolStats]:
        """The load and the batches since the last report, for the primary."""
        stats, self.stats = self.stats, PoolStats()
        return self.observe(now), stats


class FrontSide:
    """A front process's end: asks the primary for workers, follows its changes, and
    reports the load its requests put on them."""

    def __init__(self, channel: Channel, report_seconds: float, sharing: int) -> None:
        self.channel = channel
        self.report_seconds = report_seconds
        self.sharing = sharing
        """HTTP processes (fronts and the primary) sending to the same workers."""
        self.pools: dict[ModelKey, AttachedPool] = {}
        self.on_gone: Callable[[ModelKey], None] | None = None
        """Called when the primary closed a version's pool (unloaded, scaled to zero)."""
        self._tickets = itertools.count()
        self._waiting: dict[int, asyncio.Future[list[str]]] = {}
        channel.on("attached", self._attached)
        channel.on("workers", self._workers)
        channel.on_close = self._primary_gone

    def pool_for(self, record: ModelVersion, serving: ModelServing) -> AttachedPool:
        """The pool factory a front's model manager uses instead of starting workers."""
        spec = VersionSpec.of(record, "")  # the primary's workers hold the artifact
        pool = AttachedPool(spec, serving, self)
        pool.sharing = self.sharing
        return pool

    async def attach(self, pool: AttachedPool) -> list[str]:
        ticket = next(self._tickets)
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._waiting[ticket] = future
        if not self.channel.send("attach", ticket, pool.key.model, pool.key.version):
            del self._waiting[ticket]
            raise ModelNotReady("the server's primary process is gone")
        try:
            addresses = await future
        finally:
            self._waiting.pop(ticket, None)
        self.pools[pool.key] = pool
        return addresses

    def _attached(self, ticket: int, addresses: list[str] | None, error: Any) -> None:
        future = self._waiting.get(ticket)
        if future is None or future.done():
            return
        if addresses is not None:
            future.set_result(addresses)
            return
        kind, message = error
        cls = getattr(errors, kind, None)
        exc = cls(message) if isinstance(cls, type) and issubclass(cls, ShipyardError) else None
        future.set_exception(exc or ModelNotReady(message))

    def _workers(self, model: str, version: int, addresses: list[str], closed: bool) -> None:
        key = ModelKey(model, version)
        pool = self.pools.get(key)
        if pool is None:
            return
        if not closed:
            pool.attach_to(addresses)
            return
        del self.pools[key]
        if self.on_gone is not None:
            self.on_gone(key)

    def _primary_gone(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ModelNotReady("the server's primary process is gone"))

    async def run(self) -> None:
        """Report each pool's load and batches to the primary, every `report_seconds`."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.report_seconds)  # a reporting cadence, not a sync point
            now = loop.time()
            reports = [
                (key.model, key.version, *pool.report(now))
                for key, pool in self.pools.items()
                if not pool.closed
            ]
            if reports:
                self.channel.send("load", reports)


# --- the primary's side -------------------------------------------------------------


class PrimarySide:
    """The primary's end of every front's pipe: answers attach requests from its model
    manager and tells each front when a version's workers change."""

    def __init__(
        self,
        get_pool: Callable[[str, int], Any],
        find_pool: Callable[[ModelKey], WorkerPool | None],
        sharing: int = 1,
    ) -> None:
        self.sharing = sharing
        """HTTP processes sending to each pool's workers, the primary included."""
        self.get_pool = get_pool
        """Coroutine function: the ready pool of (model, version), loading it if needed."""
        self.find_pool = find_pool
        """The pool of a version if loaded now, else None."""
        self.channels: set[Channel] = set()
        self._subscribers: defaultdict[ModelKey, set[Channel]] = defaultdict(set)
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, channel: Channel) -> None:
        """Serve a front that just started (call from the loop)."""
        self.channels.add(channel)
        channel.on("attach", lambda *args: self._spawn(self._attach(channel, *args)))
        channel.on("load", self._load)
        channel.on_close = lambda: self._remove(channel)
        channel.start()

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _remove(self, channel: Channel) -> None:
        self.channels.discard(channel)
        for subscribers in self._subscribers.values():
            subscribers.discard(channel)

    async def _attach(self, channel: Channel, ticket: int, model: str, version: int) -> None:
        try:
            pool = await self.get_pool(model, version)
        except ShipyardError as exc:
            channel.send("attached", ticket, None, (type(exc).__name__, exc.message))
            return
        except Exception as exc:
            log.exception("attaching a front to %s:%s failed", model, version)
            channel.send("attached", ticket, None, ("ModelNotReady", type(exc).__name__))
            return
        pool.on_change = self._announce
        pool.sharing = self.sharing
        self._subscribers[ModelKey(model, version)].add(channel)
        channel.send("attached", ticket, _addresses(pool), None)

    def _announce(self, pool: WorkerPool) -> None:
        key = ModelKey(pool.spec.model, pool.spec.version)
        closed = pool.closed
        subscribers = self._subscribers.pop(key, set()) if closed else self._subscribers[key]
        addresses = [] if closed else _addresses(pool)
        for channel in list(subscribers):
            channel.send("workers", key.model, key.version, addresses, closed)

    def _load(self, reports: list[tuple[str, int, LoadSample, PoolStats]]) -> None:
        for model, version, sample, stats in reports:
            pool = self.find_pool(ModelKey(model, version))
            if pool is not None:
                pool.add_load(sample)
                pool.stats.merge(stats)

    def close(self) -> None:
        for channel in list(self.channels):
            channel.on_close = None
            channel.close()
        self.channels.clear()


def _addresses(pool: WorkerPool) -> list[str]:
    return [w.address for w in pool.workers if w.alive and w.address is not None]
