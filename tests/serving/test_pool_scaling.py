"""A worker pool moves to the count it is given: new workers take requests only once
warm, a drained worker finishes what it holds before it stops, a spare is used."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import psutil
import pytest

from shipyard.runtimes.base import VersionSpec
from shipyard.serving.spares import Spares
from shipyard.serving.workers import WorkerPool

SLOW = '''
import os
import time


class Slow:
    """Answers with its worker's process id after a pause, so a test sees who answered."""

    def load(self):
        pass

    def predict(self, inputs):
        (values,) = inputs.values()
        time.sleep(0.4)
        return {"pid": [os.getpid()] * len(values)}
'''


@pytest.fixture(scope="module")
def slow_spec(tmp_path_factory: pytest.TempPathFactory) -> VersionSpec:
    folder: Path = tmp_path_factory.mktemp("slow")
    (folder / "slow.py").write_text(SLOW)
    return VersionSpec(
        model="slow", version=1, flavor="python", path=str(folder),
        details={"module": "slow.py", "class": "Slow"},
    )  # fmt: skip


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def one_row() -> dict[str, np.ndarray]:
    return {"x": np.zeros((1, 1))}


def test_a_scale_down_drains_workers_without_failing_what_they_hold(
    slow_spec: VersionSpec,
) -> None:
    async def scenario() -> None:
        pool = WorkerPool(slow_spec, processes=2, max_batch_rows=1)
        await pool.start()
        try:
            pids = set(pool.pids())
            assert len(pids) == 2
            held = [asyncio.ensure_future(pool.predict(one_row(), None, 30)) for _ in range(2)]
            while sum(bool(w.pending) for w in pool.workers) < 2:
                await asyncio.sleep(0)  # until both workers hold a request
            pool.scale_to(1)
            assert (len(pool.workers), len(pool.draining)) == (1, 1)
            answers = await asyncio.gather(*held)  # both answered: none failed
            answered_by = {int(a["pid"][0]) for a in answers}
            assert answered_by == pids
            (kept,) = pool.pids()
            (drained,) = pids - {kept}
            while running(drained):
                await asyncio.sleep(0.02)  # the drained worker is stopped in a thread
            after = await pool.predict(one_row(), None, 30)
            assert int(after["pid"][0]) == kept
            assert pool.snapshot().draining == 0
        finally:
            await pool.close()

    asyncio.run(scenario())


def test_a_scale_up_takes_a_spare_and_the_new_worker_serves_once_warm(
    slow_spec: VersionSpec,
) -> None:
    async def scenario() -> None:
        spares = Spares(1)
        spares.keep("python")
        (spare_pid,) = spares.pids()
        pool = WorkerPool(slow_spec, processes=1, max_batch_rows=1, spares=spares)
        await pool.start()  # the first worker is the spare
        try:
            assert pool.pids() == [spare_pid]
            assert "spare_wait" in pool.phases and "spawn" not in pool.phases
            pool.scale_to(2)
            assert pool.snapshot().starting == 1 and pool.snapshot().desired == 2
            while len(pool.workers) < 2:
                await asyncio.sleep(0.02)  # the second worker loads and warms
            answers = await asyncio.gather(*(pool.predict(one_row(), None, 30) for _ in range(2)))
            assert {int(a["pid"][0]) for a in answers} == set(pool.pids())
        finally:
            await pool.close()
            for spare in spares.close():
                spare.stop()

    asyncio.run(scenario())


FLAKY = '''
import pathlib


class Flaky:
    """Refuses to load while a flag file sits next to it."""

    def load(self):
        if (pathlib.Path(__file__).parent / "refuse").exists():
            raise RuntimeError("not now")

    def predict(self, inputs):
        (values,) = inputs.values()
        return values
'''


def test_a_worker_start_that_failed_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    spec = VersionSpec(
        model="flaky", version=1, flavor="python", path=str(tmp_path),
        details={"module": "flaky.py", "class": "Flaky"},
    )  # fmt: skip
    flag = tmp_path / "refuse"

    async def scenario() -> None:
        pool = WorkerPool(spec, processes=1)
        await pool.start()
        try:
            flag.touch()
            pool.scale_to(2)
            while pool.starting:
                await asyncio.sleep(0.02)  # the second worker fails to load
            assert len(pool.workers) == 1 and pool.desired == 2
            flag.unlink()
            while len(pool.workers) < 2:
                await asyncio.sleep(0.02)  # retried after a back-off, without a new decision
        finally:
            await pool.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))
