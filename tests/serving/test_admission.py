"""Admission: a standing queue is held to a few batches, a burst onto an empty one is taken.

The decision reads only the pool's queue, its timed batch and the clock, so these tests
call it on a pool that starts no worker, with the time given.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest

from shipyard.errors import Overloaded
from shipyard.runtimes.base import VersionSpec
from shipyard.serving.batching import Pending
from shipyard.serving.workers import WorkerPool

SPEC = VersionSpec(model="m", version=1, flavor="python", path="/nowhere", details={})
NOW = 100.0
BATCH = 0.01
"""Seconds one batch took: a queue not empty for longer than two of them stands."""


def pending(rows: int) -> Pending:
    loop = asyncio.new_event_loop()
    try:
        return Pending({"x": np.zeros((rows, 3))}, None, loop.create_future(), NOW + 30, NOW)
    finally:
        loop.close()


def pool(queued: list[int], max_rows: int = 1, emptied: float = NOW - 1.0) -> WorkerPool:
    """A pool (no worker started) whose queue holds requests of these row counts, that
    timed its batches at BATCH and last found its queue empty at `emptied`."""
    made = WorkerPool(SPEC, max_batch_rows=max_rows, max_queue=256, max_queue_batches=2)
    made.queue.extend(pending(rows) for rows in queued)
    made.batch_seconds = BATCH
    made.emptied = emptied
    return made


def admitted(made: WorkerPool, live: int = 1) -> bool:
    try:
        made._check_admission(live, timeout=30.0, now=NOW)
    except Overloaded:
        return False
    return True


def test_a_standing_queue_takes_only_what_fits_in_two_batches_per_worker() -> None:
    # One row a batch: one queued plus the newcomer is two batches; two queued make three.
    assert admitted(pool([1]))
    assert not admitted(pool([1, 1]))
    # Two workers run two batches at a time: four rows fit, five do not.
    assert admitted(pool([1, 1, 1], max_rows=1), live=2)
    assert not admitted(pool([1, 1, 1, 1], max_rows=1), live=2)


def test_the_bound_counts_rows_not_requests() -> None:
    # Batches of 8 rows: 15 one-row requests and the newcomer fill two batches exactly.
    assert admitted(pool([1] * 15, max_rows=8))
    assert not admitted(pool([1] * 16, max_rows=8))
    # One request of 16 rows is two batches by itself: the newcomer would be the third.
    assert not admitted(pool([16], max_rows=8))


def test_a_burst_onto_a_recently_empty_queue_is_taken_up_to_max_queue() -> None:
    # Empty 15 ms ago, under the 20 ms two batches take: a burst, not a standing queue.
    assert admitted(pool([1] * 200, emptied=NOW - 0.015))
    assert not admitted(pool([1] * 256, emptied=NOW - 0.015))  # max_queue still holds
    # Empty 25 ms ago: it has stood longer than two batches take.
    assert not admitted(pool([1] * 2, emptied=NOW - 0.025))


def test_before_any_batch_is_timed_only_max_queue_bounds_the_queue() -> None:
    cold = pool([1] * 200)
    cold.batch_seconds = 0.0
    assert admitted(cold)


@pytest.mark.parametrize("rows", [None, 3])
def test_a_request_that_cannot_join_a_batch_counts_as_a_whole_one(rows: int | None) -> None:
    made = pool([], max_rows=8)
    odd = pending(1)
    odd.rows = rows  # None: inputs of different lengths, it runs alone
    made.queue.extend([odd, pending(1)])
    # None: 8 + 1 + the newcomer = 10 rows, two batches; 3 rows: 5 rows, one batch.
    assert admitted(made)
    made.queue.append(pending(8))
    assert admitted(made) is (rows == 3)


def test_a_full_standing_queue_refuses_before_a_body_is_read() -> None:
    """The early check (before decoding) refuses exactly when a one-row request would be."""

    async def scenario() -> None:
        now = asyncio.get_running_loop().time()
        live_worker = SimpleNamespace(alive=True)
        full = pool([1, 1], emptied=now - 1.0)  # two queued: a newcomer is the third batch
        full.workers.append(live_worker)  # type: ignore[arg-type]
        with pytest.raises(Overloaded):
            full.refuse_if_full()
        assert full.stats.refused == 1  # counted like any refusal
        room = pool([1], emptied=now - 1.0)  # one queued: a one-row newcomer still fits
        room.workers.append(live_worker)  # type: ignore[arg-type]
        room.refuse_if_full()
        burst = pool([1] * 200, emptied=now)  # a burst onto a queue empty just now
        burst.workers.append(live_worker)  # type: ignore[arg-type]
        burst.refuse_if_full()

    asyncio.run(scenario())
