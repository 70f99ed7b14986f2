"""A front process's pool over the primary's workers (serving/attached.py), in one event
loop over a real pipe and real worker processes: it sends to every worker the primary
lists, a scale-down on the primary fails nothing the front holds, and the front's load
reaches the primary's autoscaler and batch counts."""

from __future__ import annotations

import asyncio
import multiprocessing

import numpy as np
import pytest

from shipyard.config import ModelServing
from shipyard.runtimes.base import VersionSpec
from shipyard.serving.attached import AttachedPool, Channel, FrontSide, PrimarySide
from shipyard.serving.types import ModelKey
from shipyard.serving.worker_process import WORKER_SOCKETS_ENV
from shipyard.serving.workers import WorkerPool
from tests.polling import eventually
from tests.serving.test_pool_scaling import one_row, running, slow_spec  # noqa: F401


async def _front_over(
    pool: WorkerPool, report_seconds: float = 60.0
) -> tuple[AttachedPool, FrontSide]:
    async def ready_pool(model: str, version: int) -> WorkerPool:
        return pool

    ours, theirs = multiprocessing.Pipe()
    hub = PrimarySide(ready_pool, lambda key: pool if key == ModelKey("slow", 1) else None)
    hub.add(Channel(ours))
    channel = Channel(theirs)
    front = FrontSide(channel, report_seconds, sharing=1)
    channel.start()
    attached = AttachedPool(pool.spec, ModelServing(max_batch_size=1), front)
    await attached.start()
    return attached, front


@pytest.fixture
def listening(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    monkeypatch.setenv(WORKER_SOCKETS_ENV, str(tmp_path_factory.mktemp("run")))


@pytest.mark.usefixtures("listening")
def test_a_scale_down_on_the_primary_fails_nothing_a_front_holds(
    slow_spec: VersionSpec,  # noqa: F811
) -> None:
    async def scenario() -> None:
        pool = WorkerPool(slow_spec, processes=2, max_batch_rows=1)
        await pool.start()
        try:
            pids = set(pool.pids())
            attached, _ = await _front_over(pool)
            assert len(attached.workers) == 2  # every worker the primary runs
            held = [asyncio.ensure_future(attached.predict(one_row(), None, 30)) for _ in range(2)]
            while sum(bool(w.pending) for w in attached.workers) < 2:
                await asyncio.sleep(0)  # until the front has a request at each worker
            pool.scale_to(1)  # the primary drains one; the front hears of it
            answers = await asyncio.gather(*held)  # both answered: none failed
            assert {int(a["pid"][0]) for a in answers} == pids
            (kept,) = pool.pids()
            (drained,) = pids - {kept}
            while running(drained):
                await asyncio.sleep(0.02)  # the drained worker exits once the front lets go
            assert len(attached.workers) == 1
            after = await attached.predict(one_row(), None, 30)
            assert int(after["pid"][0]) == kept
            await attached.close()
        finally:
            await pool.close()

    asyncio.run(scenario())


@pytest.mark.usefixtures("listening")
def test_a_fronts_load_counts_on_the_primary(slow_spec: VersionSpec) -> None:  # noqa: F811
    async def scenario() -> None:
        pool = WorkerPool(slow_spec, processes=1, max_batch_rows=1)
        await pool.start()
        try:
            attached, front = await _front_over(pool, report_seconds=0.05)
            reporting = asyncio.ensure_future(front.run())
            await asyncio.gather(*(attached.predict(one_row(), None, 30) for _ in range(3)))
            while pool.stats.batches < 3:
                await asyncio.sleep(0.02)  # the front reports every 0.05 s
            reporting.cancel()
            # Three one-row batches, all run by the front, none by the primary itself.
            assert (pool.stats.batches, pool.stats.rows) == (3, 3)
            sample = pool.observe(asyncio.get_running_loop().time())
            assert sample.arrivals == 3
            assert sample.p95_ms is not None and sample.p95_ms >= 400  # 0.4 s per predict
            await attached.close()
        finally:
            await pool.close()

    asyncio.run(scenario())


COUNTING = '''
import time

import numpy as np


class Counting:
    """Doubles its input after a pause, and says how many rows the call it ran in had."""

    def load(self):
        pass

    def predict(self, inputs):
        (values,) = inputs.values()
        open("MARKER_PATH", "a").close()  # tells the test a predict has begun
        time.sleep(0.3)
        return {"double": values * 2, "rows_in_call": np.full(len(values), len(values))}
'''


@pytest.mark.usefixtures("listening")
def test_batches_that_wait_together_run_as_one_predict(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    folder = tmp_path_factory.mktemp("counting")
    begun = folder / "begun"
    (folder / "counting.py").write_text(COUNTING.replace("MARKER_PATH", str(begun)))
    spec = VersionSpec(
        model="slow", version=1, flavor="python", path=str(folder),
        details={"module": "counting.py", "class": "Counting"},
    )  # fmt: skip

    async def scenario() -> None:
        pool = WorkerPool(spec, processes=1, max_batch_rows=8)
        await pool.start()
        try:
            first, _ = await _front_over(pool)
            second, _ = await _front_over(pool)
            busy = asyncio.ensure_future(pool.predict({"x": np.array([[1.0]])}, None, 30))
            # The worker is inside the primary's predict (not merely sent it: a worker that
            # has not read it yet would take the fronts' batches with it in one call).
            await asyncio.to_thread(eventually, lambda: begun.exists() or None,
                                    "the primary's batch being predicted")  # fmt: skip
            one = asyncio.ensure_future(first.predict({"x": np.array([[2.0], [3.0]])}, None, 30))
            two = asyncio.ensure_future(second.predict({"x": np.array([[4.0]])}, None, 30))
            answers = await asyncio.gather(busy, one, two)
            # Each front's own rows back, doubled...
            assert [a["double"].ravel().tolist() for a in answers] == [[2.0], [4.0, 6.0], [8.0]]
            # ...from one predict of the two fronts' batches (2 + 1 rows) that waited together.
            assert [a["rows_in_call"].tolist() for a in answers] == [[1], [3, 3], [3]]
            await first.close()
            await second.close()
        finally:
            await pool.close()

    asyncio.run(scenario())
