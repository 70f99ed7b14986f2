"""Worker processes that hold a loaded model and run its predict.

Model code never runs on the event loop: each worker is a process with one
pipe to the server. The event loop watches each pipe (`loop.add_reader`) and a
callback turns the replies waiting there into future results. A worker that
dies (segfault, OOM kill, os._exit) fails only the requests it held, with 503,
and is replaced.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shipyard.config import DEFAULT_SERVING
from shipyard.errors import (
    DeadlineExceeded,
    ModelFailed,
    ModelNotReady,
    ModelRefusedInput,
    Overloaded,
    ShipyardError,
    WorkerCrashed,
)
from shipyard.runtimes.base import Tensors, VersionSpec
from shipyard.serving.batching import Pending, concat, split, take_batch
from shipyard.serving.memory import resident_bytes
from shipyard.serving.shared_tensors import share, take, unlink
from shipyard.serving.spares import (
    ProcessHandle,
    Spare,
    Spares,
    hand_over,
    start_in_environment,
    start_process,
)
from shipyard.serving.types import (
    BATCH_SIZE_BOUNDS,
    LoadSample,
    PoolSnapshot,
    RequestContext,
)
from shipyard.serving.worker_process import worker_main

log = logging.getLogger("shipyard.workers")
_MAX_START_BACKOFF = 30.0
"""Longest wait, in seconds, before retrying a worker start that keeps failing."""
_DRAIN_SECONDS = 5.0
"""How long a stopping worker that other fronts reach may finish their batches."""
_SWEEP_SECONDS = 0.05
"""How often a pool with requests in it looks for ones past their deadline."""
_LATENCY_SAMPLES = 4096
"""Answers per observation interval whose latency is kept for the p95 (the first ones)."""


def model_error(key: str, report: tuple[bool, str], inputs: Tensors | None = None) -> ShipyardError:
    """The error a caller gets for a predict that raised: 400 when the model refused the
    input, else 500. It names the exception's type, never its text (kept as a note for
    the server log), and, given the request's `inputs`, one holding NaN or infinities:
    valid V2 values that many models refuse."""
    refused, words = report
    kind = words.partition(":")[0]
    log_note = "the server log has the model's message under this request's x-request-id"
    error: ShipyardError
    if refused:
        odd = [
            name
            for name, array in (inputs or {}).items()
            if array.dtype.kind in "fc" and not np.isfinite(array).all()
        ]
        why = f"{kind}; input {odd[0]!r} holds NaN or infinite values" if odd else kind
        error = ModelRefusedInput(f"model {key} refused the input ({why}); {log_note}")
    else:
        error = ModelFailed(f"model {key} failed ({kind}); {log_note}")
    error.add_note(words)
    return error


class Worker:
    """The server's handle on one worker process."""

    def __init__(
        self,
        spec: VersionSpec,
        loop: asyncio.AbstractEventLoop,
        spare: Spare | None = None,
        python: str | None = None,
    ) -> None:
        self.spec = spec
        self.loop = loop
        self.started = time.perf_counter()
        self.process: ProcessHandle
        if python is not None:  # the version's own environment: never a spare
            self.process, self.connection = start_in_environment(python, spec)
            spare = None
        elif spare is not None:
            try:
                hand_over(spare, spec)
                self.process, self.connection = spare.process, spare.connection
            except OSError:  # the spare died since it was taken: start afresh
                spare.connection.close()
                spare = None
        if spare is None and python is None:
            self.process, self.connection = start_process(
                worker_main, (spec, time.time()), f"shipyard-{spec.key}"
            )
        self.phases: dict[str, float] = {}
        """Where this worker's start went (seconds): spawn, imports or spare_wait, load,
        warm_up, as the worker measured them."""
        self.address: str | None = None
        """The Unix socket where other front processes reach it (None: pipe only)."""
        self.pending: dict[int, asyncio.Future[Tensors]] = {}
        self.segments: dict[int, list[str]] = {}
        """Shared-memory segments holding each pending request's inputs."""
        self.alive = False
        self._reading = False
        self.on_death: Any = None

    async def ready(self) -> None:
        """Wait until the model is loaded and warm; raise ModelNotReady if it failed.

        Waits on the event loop for the pipe to be readable (the worker's report, or EOF
        when it died), not in a thread: many workers starting at once must not hold the
        default executor the registry lookups need."""
        readable: asyncio.Future[None] = self.loop.create_future()
        descriptor = self.connection.fileno()

        def wake() -> None:
            if not readable.done():
                readable.set_result(None)

        self.loop.add_reader(descriptor, wake)
        try:
            await readable
        finally:
            self.loop.remove_reader(descriptor)
        try:
            state, detail, address = self.connection.recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            raise ModelNotReady(
                f"{self.spec.key}: worker died while loading (exit code {self.process.exitcode})"
            ) from None
        if state != "ready":
            self.process.join(timeout=5)
            # The loader's own words may hold server paths: they go to the log only.
            log.error("%s failed to load: %s", self.spec.key, detail)
            kind, _, words = str(detail).partition(": ")
            if kind == "MissingExtra":  # names a package to install, nothing of the server's
                raise ModelNotReady(f"{self.spec.key} failed to load: {words}")
            raise ModelNotReady(f"{self.spec.key} failed to load ({kind}; see the server log)")
        self.phases = dict(detail)
        self.address = address
        self.alive = True

    def detach(self) -> None:
        """Stop reading replies (call from the loop, before stop())."""
        self._stop_reading()
        self._release_segments()

    def _release_segments(self) -> None:
        """Unlink the inputs of requests that will get no reply."""
        for names in self.segments.values():
            unlink(names)
        self.segments.clear()

    def start_reading(self) -> None:
        """Read replies on the event loop itself (call from the loop).

        Replies are small (large tensors travel in shared memory), so reading
        them inline costs less than a reader thread handing each one over
        through call_soon_threadsafe and fighting the loop for the GIL.
        """
        self.loop.add_reader(self.connection.fileno(), self._on_readable)
        self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self.loop.remove_reader(self.connection.fileno())

    def _on_readable(self) -> None:
        try:
            while self.connection.poll():
                request_id, ok, payload = self.connection.recv()
                self._resolve(request_id, ok, payload)
        except (EOFError, OSError):
            self._stop_reading()
            self._died()

    def _resolve(self, request_id: int, ok: bool, payload: Any) -> None:
        unlink(self.segments.pop(request_id, []))
        result = take(payload) if ok else {}  # frees output segments even if unawaited
        future = self.pending.pop(request_id, None)
        if future is None or future.done():
            return  # its deadline passed; nobody is waiting
        if ok:
            future.set_result(result)
        else:
            future.set_exception(model_error(self.spec.key, payload))

    def _died(self) -> None:
        if not self.alive:
            return
        self.alive = False
        self.process.join(timeout=1)
        code = self.process.exitcode
        log.warning("worker for %s died (exit code %s)", self.spec.key, code)
        self._lost()

    def _lost(self) -> None:
        """Fail what it held (the worker is gone) and tell the pool."""
        for future in self.pending.values():
            if not future.done():
                future.set_exception(
                    WorkerCrashed(f"the worker serving {self.spec.key} crashed; retry the request")
                )
        self.pending.clear()
        self._release_segments()
        if self.on_death is not None:
            self.on_death(self)

    def submit(
        self, request_id: int, inputs: Tensors, outputs: list[str] | None
    ) -> asyncio.Future[Tensors]:
        future: asyncio.Future[Tensors] = self.loop.create_future()
        wire, segments = share(inputs)
        try:
            self.connection.send((request_id, wire, outputs))
        except (OSError, ValueError):
            unlink(segments)
            raise WorkerCrashed(f"the worker serving {self.spec.key} is gone") from None
        self.pending[request_id] = future
        if segments:
            self.segments[request_id] = segments
        return future

    def stop(self) -> None:
        """Stop the process (blocking: call in a thread, after detach() on the loop)."""
        self.alive = False
        self.connection.close()
        if self.address is not None:
            # Other fronts may still hold batches here: the worker answers them and
            # exits once each front lets go (worker_process._answer_all).
            self.process.join(timeout=_DRAIN_SECONDS)
        self.process.terminate()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


@dataclass
class PoolStats:
    """Counters a pool keeps for snapshot(); plain ints, nothing on the hot path.

    The batch-size histogram is counted here rather than in a prometheus-client
    Histogram so the pool (serving core) does not depend on monitoring; the
    collector exposes these counts as a histogram at scrape time.
    """

    batches: int = 0
    rows: int = 0
    refused: int = 0
    restarts: int = 0
    batch_sizes: list[int] = field(default_factory=lambda: [0] * (len(BATCH_SIZE_BOUNDS) + 1))

    def count_batch(self, rows: int) -> None:
        self.batches += 1
        self.rows += rows
        self.batch_sizes[bisect.bisect_left(BATCH_SIZE_BOUNDS, rows)] += 1

    def merge(self, other: PoolStats) -> None:
        """Add counts kept elsewhere (another front process's batches on these workers)."""
        self.batches += other.batches
        self.rows += other.rows
        self.refused += other.refused
        self.batch_sizes = [a + b for a, b in zip(self.batch_sizes, other.batch_sizes, strict=True)]


class WorkerPool:
    """Worker processes for one model version, fed by a bounded queue.

    A worker runs one batch at a time. Requests that arrive while every worker
    is busy wait in the queue and leave it together as one batch (see
    batching.py). Admission happens on arrival: a full queue, or a wait that
    cannot meet the request's deadline, is refused at once with 503.

    The pool holds `desired` workers: the autoscaler moves that number
    (`scale_to`), the pool starts workers (each loaded and warm before it takes
    a request) or drains them (a draining worker takes no new batch, finishes
    the one it holds, then stops), and replaces any that die. It also measures
    its load for the autoscaler (`observe`) without a timer: a time-weighted
    count of requests in flight plus queued, and each answer's queue wait plus
    predict time.
    """

    def __init__(
        self,
        spec: VersionSpec,
        processes: int = 1,
        max_batch_rows: int = DEFAULT_SERVING.max_batch_size,
        max_queue: int = DEFAULT_SERVING.max_queue,
        max_batch_delay: float = DEFAULT_SERVING.max_batch_delay,
        spares: Spares | None = None,
        max_queue_batches: int = DEFAULT_SERVING.max_queue_batches,
        python: str | None = None,
    ) -> None:
        self.spec = spec
        self.python = python
        """The interpreter of the version's own environment (None: the server's)."""
        self.size = max(1, processes)
        self.desired = self.size
        self.wanted = self.size
        """What the scaling policy asked for, before the memory budget or worker cap cut
        it to `desired`: the unmet demand a replica autoscaler should see."""
        self.max_batch_rows = max(1, max_batch_rows)
        self.max_queue = max(1, max_queue)
        self.max_queue_batches = max(1, max_queue_batches)
        """Most full batches per live worker that may wait, a newcomer's own included, once
        the queue stands: accepted requests then wait about that many batch times."""
        self.emptied = 0.0
        """loop.time() when the queue was last found empty (a standing queue has not been
        empty for longer than the wait admission promises)."""
        self.max_batch_delay = max(0.0, max_batch_delay)
        self.spares = spares
        self.stats = PoolStats()
        self.workers: list[Worker] = []
        self.draining: list[Worker] = []
        self.starting = 0
        self.queue: deque[Pending] = deque()
        self.batch_seconds = 0.0
        """Moving average of one batch's service time, for deadline admission."""
        self.phases: dict[str, float] = {}
        """Where the last worker start's time went (seconds), `total` included."""
        self.ongoing = 0
        """Requests in flight plus queued now."""
        self.last_arrival = 0.0
        """loop.time() of the last request (of the start, before any)."""
        self._ongoing_area = 0.0
        """Integral of `ongoing` over time since the last observe()."""
        self._marked = 0.0
        self._observed = 0.0
        self._arrivals = 0
        self._latencies: list[float] = []
        self._ids = itertools.count()
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._start_failures = 0
        """Worker starts that failed in a row (their retries back off)."""
        self._waiting: set[Pending] = set()
        """Requests queued or in a batch, whose deadlines `_sweep` watches."""
        self._sweeper: asyncio.TimerHandle | None = None
        self.sharing = 1
        """HTTP processes sending batches to these workers (`--http-processes`)."""
        self.on_change: Callable[[WorkerPool], None] | None = None
        """Called when the set of workers taking batches changes, or the pool closes
        (how other front processes learn which workers to send to)."""
        self._remote_area = 0.0
        self._remote_p95_ms: float | None = None
        """Load other front processes reported since the last observe()."""
        self._delayed: asyncio.TimerHandle | None = None
        self._dispatch_due = False
        """A dispatch is scheduled for the end of this event-loop turn."""
        self._held_since = 0.0
        """perf_counter() when a free worker began holding a short batch (0: not holding)."""

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Start the first workers together; return when each has loaded and warmed the
        model. If one fails, the others are stopped and the failure raised."""
        now = asyncio.get_running_loop().time()
        self._marked = self._observed = self.last_arrival = now
        self.starting += self.size
        started = await asyncio.gather(
            *(self._add_worker() for _ in range(self.size)), return_exceptions=True
        )
        failure = next((r for r in started if isinstance(r, BaseException)), None)
        if failure is not None:
            await self.close()
            raise failure

    async def _add_worker(self) -> None:
        """Start one worker (counted in `starting` by the caller, synchronously, so that
        two decisions in a row never start the same missing worker twice)."""
        loop = asyncio.get_running_loop()
        try:
            spare = None
            if self.spares is not None and self.python is None:
                spare = self.spares.take(self.spec.flavor)
            worker = Worker(self.spec, loop, spare, self.python)
        except BaseException:
            self.starting -= 1
            raise
        try:
            await worker.ready()
        except BaseException:
            await loop.run_in_executor(None, worker.stop)
            raise
        finally:
            self.starting -= 1
        self.phases = {**worker.phases, "total": time.perf_counter() - worker.started}
        if self._closed or len(self.workers) >= self.desired:
            await loop.run_in_executor(None, worker.stop)  # scaled down while it started
            return
        worker.on_death = self._replace
        worker.alive = True
        worker.start_reading()
        self.workers.append(worker)
        self._changed()
        self._dispatch()

    def scale_to(self, desired: int) -> None:
        """Aim at `desired` workers (at least one: zero is the manager unloading the
        pool); start or drain workers to get there."""
        self.desired = max(1, desired)
        self._converge()

    def _converge(self) -> None:
        if self._closed:
            return
        for _ in range(self.desired - len(self.workers) - self.starting):
            self.starting += 1
            self._run(self._start_worker(), "start a worker")
        surplus = len(self.workers) - self.desired
        if surplus > 0:
            # Idle workers go first: they stop at once, with nothing to finish.
            for worker in sorted(self.workers, key=lambda w: len(w.pending))[:surplus]:
                self.workers.remove(worker)
                self.draining.append(worker)
            self._changed()
            self._retire_drained()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)

    def _retire_drained(self) -> None:
        """Stop the draining workers that hold nothing any more."""
        for worker in [w for w in self.draining if not w.pending]:
            self.draining.remove(worker)
            worker.on_death = None
            worker.detach()
            self._run(asyncio.to_thread(worker.stop), "stop a worker")

    def _run(self, work: Coroutine[Any, Any, None], what: str) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._done, what))

    def _done(self, what: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: could not %s: %s", self.spec.key, what, task.exception())

    async def _start_worker(self) -> None:
        """A worker the pool is short of; if it fails, the pool tries again, backing off:
        a model whose load fails now may load later (a file back, memory freed), and the
        pool must not stay short for good."""
        try:
            await self._add_worker()
        except Exception:
            if not self._closed:
                self._start_failures += 1
                backoff = min(_MAX_START_BACKOFF, 0.5 * 2 ** (self._start_failures - 1))
                asyncio.get_running_loop().call_later(backoff, self._converge)
            raise
        self._start_failures = 0

    def _replace(self, dead: Worker) -> None:
        if dead in self.draining:
            self.draining.remove(dead)
            return
        if dead in self.workers:
            self.workers.remove(dead)
            self._changed()
        if self._closed:
            return
        self.stats.restarts += 1
        self._converge()

    def _count(self, now: float, change: int) -> None:
        """Move the ongoing count, integrating it over time for observe()."""
        self._ongoing_area += self.ongoing * (now - self._marked)
        self._marked = now
        self.ongoing += change

    def observe(self, now: float) -> LoadSample:
        """The load since the last call (`now` is loop.time()), for the autoscaler."""
        self._count(now, 0)
        seconds = now - self._observed
        latencies, self._latencies = self._latencies, []
        area = self._ongoing_area + self._remote_area
        p95_ms = float(np.percentile(latencies, 95)) * 1000 if latencies else None
        if self._remote_p95_ms is not None:
            # Fronts' p95s do not combine into one; the worst is what a target must meet.
            p95_ms = max(p95_ms or 0.0, self._remote_p95_ms)
        sample = LoadSample(
            at=now,
            seconds=seconds,
            ongoing=area / seconds if seconds > 0 else float(self.ongoing),
            arrivals=self._arrivals,
            p95_ms=p95_ms,
            workers=len(self.workers),
        )
        self._ongoing_area, self._observed, self._arrivals = 0.0, now, 0
        self._remote_area, self._remote_p95_ms = 0.0, None
        return sample

    def add_load(self, sample: LoadSample) -> None:
        """Count load another front process put on these workers (its own observe()), so
        that the autoscaler and scale to zero see every front's requests."""
        self._remote_area += sample.ongoing * sample.seconds
        self._arrivals += sample.arrivals
        if sample.arrivals:
            self.last_arrival = asyncio.get_running_loop().time()
        if sample.p95_ms is not None:
            self._remote_p95_ms = max(self._remote_p95_ms or 0.0, sample.p95_ms)

    def _admit(self, live: int, timeout: float, now: float) -> None:
        try:
            self._check_admission(live, timeout, now)
        except Overloaded:
            self.stats.refused += 1
            raise

    def _check_admission(self, live: int, timeout: float, now: float) -> None:
        """Refuse (Overloaded) what would wait too long, before it queues.

        A burst that finds the queue recently empty may fill it up to max_queue: it drains
        and the load is not more than the workers can do. A queue that has not been empty
        for longer than `max_queue_batches` batch times is standing (more arrives than the
        workers finish): then only what fits in `max_queue_batches` batches per worker is
        taken, so that accepted requests keep a latency near the unloaded one and the rest
        get a fast 503 (CoDel's idea, standing queue against burst, applied on arrival)."""
        if live == 0 and not self.starting:
            raise ModelNotReady(f"{self.spec.key} has no live worker right now; retry shortly")
        queued = len(self.queue)
        if queued >= self.max_queue:
            raise Overloaded(
                f"{self.spec.key} is overloaded ({queued} requests queued); retry shortly"
            )
        # Rows, not requests: a request of many rows fills a batch alone, and one that
        # cannot join a batch (rows None) runs as one. Summed only when the count of
        # requests alone does not refuse already (rows >= requests).
        # A worker that is starting (crash replacement) takes the queue when it is up.
        most, workers = self.max_batch_rows, max(live, 1)
        rows = queued + 1
        if queued and rows <= most * workers * self.max_queue_batches:
            rows = 1 + sum(p.rows or most for p in self.queue)
        batches_ahead = math.ceil(rows / most / workers)
        # Until a batch has been timed, no queue counts as standing (the old behaviour).
        standing = 0 < self.max_queue_batches * self.batch_seconds < now - self.emptied
        if batches_ahead > self.max_queue_batches and queued and standing:
            raise Overloaded(
                f"{self.spec.key} is overloaded ({queued} requests queued, about "
                f"{batches_ahead} batches per worker); retry shortly"
            )
        expected = batches_ahead * self.batch_seconds
        if expected > timeout:
            raise Overloaded(
                f"{self.spec.key} cannot answer within {timeout:g} s "
                f"(about {expected:.2f} s of work is queued); retry shortly"
            )

    def refuse_if_full(self) -> None:
        """Raise Overloaded now if even a one-row request would be refused: the caller
        asks before reading and decoding a body, so a refusal under overload costs little
        (every request has a row at least, so none that this refuses would be taken)."""
        live = sum(1 for w in self.workers if w.alive)
        if not live or not self.queue:
            return  # no worker (the full check says why), or nothing waits
        self._admit(live, math.inf, asyncio.get_running_loop().time())

    async def predict(
        self,
        inputs: Tensors,
        outputs: list[str] | None,
        timeout: float,
        context: RequestContext | None = None,
        stated_timeout: float | None = None,
    ) -> Tensors:
        live = sum(1 for w in self.workers if w.alive)
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self.queue:
            self.emptied = now
        self._admit(live, timeout, now)
        future: asyncio.Future[Tensors] = loop.create_future()
        self._count(now, 1)
        self._arrivals += 1
        self.last_arrival = now
        item = Pending(inputs, tuple(outputs) if outputs else None, future, now + timeout, now)
        # The 504 names the deadline the caller set, not what a cold start left of it.
        item.stated_timeout = stated_timeout or timeout
        if context is not None:
            item.context = context
            context.queued = time.perf_counter()
        self.queue.append(item)
        if not any(w.pending for w in self.workers):
            self._dispatch()  # nothing running: this request goes at once
        elif not self._dispatch_due:
            # Work is running, so requests are arriving faster than one at a time: the ones
            # the front parses in this loop turn (a client's burst after a batch's answers)
            # leave together, not the first alone and the rest after a whole batch time.
            self._dispatch_due = True
            loop.call_soon(self._dispatch_soon)
        # Deadlines are swept, not timed one by one: asyncio.wait_for wraps every request
        # in an extra task (~7% of the server's CPU in a profile), and a timer armed and
        # cancelled per request costs ~2 µs more than a place in a set.
        self._waiting.add(item)
        if self._sweeper is None:
            self._sweeper = loop.call_later(_SWEEP_SECONDS, self._sweep)
        try:
            return await future
        finally:
            self._waiting.discard(item)
            self._count(loop.time(), -1)

    def _sweep(self) -> None:
        """Fail the requests whose deadline passed (at most `_SWEEP_SECONDS` late)."""
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for item in [item for item in self._waiting if item.deadline <= now]:
            self._expire(item, item.stated_timeout)
        if self._waiting:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_SECONDS, self._sweep)

    def _expire(self, item: Pending, timeout: float) -> None:
        if item.future.done():
            return
        if item in self.queue:
            self.queue.remove(item)  # never start work nobody waits for
        item.future.set_exception(
            DeadlineExceeded(f"{self.spec.key} did not answer within {timeout:g} s")
        )

    def _dispatch(self) -> None:
        """Give every idle worker the next batch from the queue (with `sharing` HTTP
        processes, at most this process's share of the workers at a time)."""
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            if not self.queue:
                return
            if not worker.alive or worker.pending:
                continue
            if self.sharing > 1 and not self._may_send_another():
                return
            now = loop.time()
            while self.queue and (self.queue[0].future.done() or self.queue[0].deadline < now):
                self.queue.popleft()  # its caller has stopped waiting
            if not self.queue or self._wait_for_fuller_batch(now):
                return
            batch = take_batch(self.queue, self.max_batch_rows)
            wanted = list(batch[0].outputs) if batch[0].outputs else None
            try:
                result = worker.submit(next(self._ids), concat(batch), wanted)
            except WorkerCrashed as exc:
                self._fail(batch, exc)
                continue
            rows = sum(p.rows or 0 for p in batch)
            self.stats.count_batch(rows)
            self._stamp_dispatch(batch, rows)
            started = loop.time()
            result.add_done_callback(functools.partial(self._finish, batch, started))

    def _dispatch_soon(self) -> None:
        self._dispatch_due = False
        if not self._closed:
            self._dispatch()

    def _may_send_another(self) -> bool:
        """With several HTTP processes, each keeps at most its share of the workers busy:
        a process that sent to every free worker would split its queue into as many small
        batches, and the processes together would run twice the predicts for the rows
        (a worker merges only batches that wait for it together)."""
        busy = sum(1 for w in self.workers if w.pending)
        return busy < max(1, len(self.workers) // self.sharing)

    def _stamp_dispatch(self, batch: list[Pending], rows: int) -> None:
        stamp = time.perf_counter()
        held_since, self._held_since = self._held_since, 0.0
        for item in batch:
            context = item.context
            if context is not None:
                context.dispatched = stamp
                context.batch_rows = rows
                if held_since:
                    context.batch_wait = stamp - max(held_since, context.queued)

    def _wait_for_fuller_batch(self, now: float) -> bool:
        """With a batch delay set, hold a short batch until it fills or its oldest has waited."""
        if not self.max_batch_delay:
            return False
        send_at = self.queue[0].arrived + self.max_batch_delay
        if now >= send_at or sum(p.rows or 1 for p in self.queue) >= self.max_batch_rows:
            return False
        if not self._held_since:
            self._held_since = time.perf_counter()
        if self._delayed is None:
            self._delayed = asyncio.get_running_loop().call_at(send_at, self._delay_over)
        return True

    def _delay_over(self) -> None:
        self._delayed = None
        self._dispatch()

    def _finish(self, batch: list[Pending], started: float, done: asyncio.Future[Tensors]) -> None:
        now = asyncio.get_running_loop().time()
        elapsed = now - started
        if self.draining:
            self._retire_drained()
        if len(self._latencies) < _LATENCY_SAMPLES:
            self._latencies.extend(now - item.arrived for item in batch)
        self.batch_seconds = (
            elapsed if not self.batch_seconds else (0.8 * self.batch_seconds + 0.2 * elapsed)
        )
        error = done.exception()
        stamp = time.perf_counter()
        for item in batch:
            if item.context is not None:
                item.context.predicted = stamp
        if error is None:
            parts = split(done.result(), batch)
            if parts is not None:
                for item, part in zip(batch, parts, strict=True):
                    if not item.future.done():
                        item.future.set_result(part)
                self._dispatch()
                return
            error = ModelFailed("model outputs are not one row per input row")
        if len(batch) > 1 and isinstance(error, ModelFailed | ModelRefusedInput):
            # One request may have poisoned the batch: rerun each alone, first in line.
            for item in reversed(batch):
                item.solo = True
                self.queue.appendleft(item)
        else:
            notes = getattr(error, "__notes__", None)
            if isinstance(error, ModelRefusedInput) and notes:  # alone: say what it held
                error = model_error(self.spec.key, (True, notes[0]), batch[0].inputs)
            self._log_model_words(batch, error)
            self._fail(batch, error)
        self._dispatch()

    def _log_model_words(self, batch: list[Pending], error: BaseException | None) -> None:
        """Log what the model said, by request id: the caller got only its type."""
        notes = getattr(error, "__notes__", None)
        if not notes:
            return
        level = logging.INFO if isinstance(error, ModelRefusedInput) else logging.ERROR
        for item in batch:
            request_id = item.context.request_id if item.context is not None else "-"
            log.log(level, "%s raised on request %s: %s", self.spec.key, request_id, notes[0])

    @staticmethod
    def _fail(batch: list[Pending], error: BaseException) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)

    async def close(self) -> None:
        """Stop every worker now (a worker still starting stops when it is up)."""
        self._closed = True
        if self._delayed is not None:
            self._delayed.cancel()
        self._changed()
        workers, self.workers = [*self.workers, *self.draining], []
        self.draining = []
        loop = asyncio.get_running_loop()
        for worker in workers:
            worker.on_death = None
            worker.detach()
            await loop.run_in_executor(None, worker.stop)
        self._fail(list(self.queue), ModelNotReady(f"{self.spec.key} was unloaded"))
        self.queue.clear()

    def pids(self) -> list[int]:
        """Process ids of its ready and draining workers."""
        return [w.process.pid for w in (*self.workers, *self.draining) if w.process.pid]

    def snapshot(self) -> PoolSnapshot:
        """The pool's counters now, for monitoring (metrics, cost)."""
        stats = self.stats
        return PoolSnapshot(
            workers=sum(1 for w in self.workers if w.alive),
            pids=tuple(self.pids()),
            queued=len(self.queue),
            batches=stats.batches,
            rows=stats.rows,
            refused=stats.refused,
            restarts=stats.restarts,
            batch_sizes=tuple(stats.batch_sizes),
            desired=self.desired,
            wanted=max(self.wanted, self.desired),
            starting=self.starting,
            draining=len(self.draining),
            memory_bytes=resident_bytes(self.pids()),
        )
