"""Dynamic batching and admission: exact rows back, poison isolated, overflow refused fast."""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np
import pytest

from shipyard.errors import ModelRefusedInput, Overloaded
from shipyard.runtimes.base import VersionSpec
from shipyard.serving.batching import Pending, split, take_batch
from shipyard.serving.workers import WorkerPool

RECORDER = '''
import time

import numpy as np


class Recorder:
    """Doubles its input and reports how many rows the batch it ran in had."""

    def load(self):
        pass

    def predict(self, inputs):
        values = inputs["v"]
        if (values < 0).any():
            raise ValueError("poisoned row")
        time.sleep(0.3 if (values >= 1000).any() else 0.02)
        return {"double": values * 2, "batch_rows": np.full(len(values), len(values))}
'''


def pending(rows: int, width: int = 1, solo: bool = False) -> Pending:
    loop = asyncio.new_event_loop()
    try:
        item = Pending({"v": np.zeros((rows, width))}, None, loop.create_future(), 0.0)
    finally:
        loop.close()
    item.solo = solo
    return item


def test_take_batch_joins_compatible_requests_within_the_row_limit() -> None:
    a, b, odd, c, big = pending(2), pending(3), pending(1, width=2), pending(4), pending(60)
    queue = deque([a, b, odd, c, big])
    assert take_batch(queue, max_rows=10) == [a, b, c]
    assert list(queue) == [odd, big]  # skipped ones keep their order
    assert take_batch(queue, max_rows=10) == [odd]
    assert take_batch(queue, max_rows=10) == [big]  # alone, even over the limit


def test_solo_requests_run_alone() -> None:
    a, b = pending(1, solo=True), pending(1)
    queue = deque([a, b])
    assert take_batch(queue, max_rows=10) == [a]


def test_split_gives_each_request_its_rows() -> None:
    batch = [pending(2), pending(1)]
    parts = split({"y": np.array([1, 2, 3]), "p": np.eye(3)}, batch)
    assert parts is not None
    assert parts[0]["y"].tolist() == [1, 2] and parts[1]["y"].tolist() == [3]
    assert parts[1]["p"].tolist() == [[0, 0, 1]]
    assert split({"total": np.array(6)}, batch) is None


@pytest.fixture(scope="module")
def recorder_spec(tmp_path_factory: pytest.TempPathFactory) -> VersionSpec:
    folder = tmp_path_factory.mktemp("recorder")
    (folder / "recorder.py").write_text(RECORDER)
    return VersionSpec(
        model="recorder",
        version=1,
        flavor="python",
        path=str(folder),
        details={"module": "recorder.py", "class": "Recorder"},
    )


async def _with_pool(spec: VersionSpec, scenario, **options):  # type: ignore[no-untyped-def]
    pool = WorkerPool(spec, **options)
    await pool.start()
    try:
        return await scenario(pool)
    finally:
        await pool.close()


@pytest.mark.parametrize("max_rows", [64, 1])
def test_concurrent_mixed_sizes_get_exactly_their_rows(
    recorder_spec: VersionSpec, max_rows: int
) -> None:
    requests = [np.arange(i * 10, i * 10 + 1 + i % 4, dtype=np.float64) for i in range(40)]

    async def scenario(pool: WorkerPool) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(*(pool.predict({"v": r}, None, 30) for r in requests))

    results = asyncio.run(_with_pool(recorder_spec, scenario, max_batch_rows=max_rows))
    for sent, got in zip(requests, results, strict=True):
        np.testing.assert_array_equal(got["double"], sent * 2)
    batch_rows = [int(r["batch_rows"][0]) for r in results]
    own_rows = [len(r) for r in requests]
    if max_rows == 1:
        assert batch_rows == own_rows  # batching off: every request ran alone
    else:
        assert max(b - o for b, o in zip(batch_rows, own_rows, strict=True)) > 0
        assert max(batch_rows) <= max_rows


def test_a_poisoned_request_fails_alone(recorder_spec: VersionSpec) -> None:
    requests = [np.array([float(i)]) for i in range(12)]
    requests[5] = np.array([-1.0])

    async def scenario(pool: WorkerPool) -> list[object]:
        return await asyncio.gather(
            *(pool.predict({"v": r}, None, 30) for r in requests), return_exceptions=True
        )

    results = asyncio.run(_with_pool(recorder_spec, scenario))
    assert isinstance(results[5], ModelRefusedInput)  # a ValueError: the input's fault
    assert results[5].message.startswith("model recorder:1 refused the input (ValueError)")
    assert results[5].__notes__ == ["ValueError: poisoned row"]  # for the log, not the caller
    for index, result in enumerate(results):
        if index != 5:
            assert isinstance(result, dict)
            np.testing.assert_array_equal(result["double"], requests[index] * 2)


def test_full_queue_refuses_at_once_and_accepted_requests_succeed(
    recorder_spec: VersionSpec,
) -> None:
    async def scenario(pool: WorkerPool) -> list[object]:
        calls = [pool.predict({"v": np.array([1000.0 + i])}, None, 30) for i in range(8)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(_with_pool(recorder_spec, scenario, max_queue=2))
    refused = [r for r in results if isinstance(r, Overloaded)]
    accepted = [r for r in results if isinstance(r, dict)]
    assert len(accepted) == 3  # one running, two queued
    assert len(refused) == 5
    assert "overloaded" in refused[0].message


def test_a_deadline_that_cannot_be_met_is_refused_before_queueing(
    recorder_spec: VersionSpec,
) -> None:
    async def scenario(pool: WorkerPool) -> object:
        await pool.predict({"v": np.array([1000.0])}, None, 30)  # learn: ~0.3 s a batch
        slow = asyncio.ensure_future(pool.predict({"v": np.array([1001.0])}, None, 30))
        await asyncio.sleep(0)
        try:
            return await pool.predict({"v": np.array([1.0])}, None, 0.05)
        except Overloaded as refused:
            await slow
            return refused

    result = asyncio.run(_with_pool(recorder_spec, scenario))
    assert isinstance(result, Overloaded)
    assert "cannot answer within 0.05 s" in result.message


def test_overflow_over_http_is_503_with_retry_after(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import concurrent.futures

    import httpx

    from tests.server import running_shipyard

    folder = tmp_path_factory.mktemp("slow")
    (folder / "recorder.py").write_text(RECORDER)
    env = {"SHIPYARD_HOME": str(folder / "home"), "SHIPYARD_MAX_QUEUE": "1"}
    body = {"inputs": [{"name": "v", "shape": [1], "datatype": "FP64", "data": [1000.0]}]}
    with running_shipyard(env, "serve", str(folder / "recorder.py")) as server:
        url = f"{server.url}/v2/models/recorder/infer"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: httpx.post(url, json=body, timeout=30), range(8)))
    refused = [r for r in responses if r.status_code == 503]
    accepted = [r for r in responses if r.status_code == 200]
    assert refused and accepted
    assert len(refused) + len(accepted) == 8
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert "overloaded" in refused[0].json()["error"]
    assert all(r.json()["outputs"][0]["data"] == [2000.0] for r in accepted)


def test_batch_delay_gathers_requests_that_arrive_one_by_one(recorder_spec: VersionSpec) -> None:
    async def scenario(pool: WorkerPool) -> list[dict[str, np.ndarray]]:
        calls = []
        for i in range(3):
            calls.append(asyncio.ensure_future(pool.predict({"v": np.array([float(i)])}, None, 30)))
            await asyncio.sleep(0)  # let each one reach the queue before the next
        return await asyncio.gather(*calls)

    # The fourth row fills the batch, so it goes without waiting out the (long) delay.
    async def filled(pool: WorkerPool) -> list[dict[str, np.ndarray]]:
        calls = [pool.predict({"v": np.array([float(i)])}, None, 30) for i in range(4)]
        return await asyncio.wait_for(asyncio.gather(*calls), 20)

    delayed = asyncio.run(_with_pool(recorder_spec, scenario, max_batch_delay=0.2))
    assert [int(r["batch_rows"][0]) for r in delayed] == [3, 3, 3]
    adaptive = asyncio.run(_with_pool(recorder_spec, scenario))
    assert int(adaptive[0]["batch_rows"][0]) == 1  # idle worker, no delay: went at once
    full = asyncio.run(_with_pool(recorder_spec, filled, max_batch_delay=60, max_batch_rows=4))
    assert [int(r["batch_rows"][0]) for r in full] == [4, 4, 4, 4]


def test_large_tensors_travel_through_shared_memory_and_leave_nothing(
    recorder_spec: VersionSpec,
) -> None:
    from pathlib import Path

    from shipyard.serving.shared_tensors import SEGMENT_PREFIX, SHARED_MEMORY_MIN_BYTES

    big = np.random.default_rng(0).uniform(0, 100, size=SHARED_MEMORY_MIN_BYTES // 8 * 3)
    small = np.array([1.0, 2.0])

    async def scenario(pool: WorkerPool) -> list[dict[str, np.ndarray]]:
        return await asyncio.gather(
            pool.predict({"v": big}, None, 30), pool.predict({"v": small}, None, 30)
        )

    large, little = asyncio.run(_with_pool(recorder_spec, scenario, max_batch_rows=1))
    np.testing.assert_array_equal(large["double"], big * 2)
    np.testing.assert_array_equal(little["double"], small * 2)
    assert large["double"].flags.writeable  # a private copy, not a view of a freed segment
    shm = Path("/dev/shm")
    if shm.is_dir():
        assert not [p.name for p in shm.iterdir() if p.name.startswith(SEGMENT_PREFIX)]


def test_share_sends_handles_for_large_arrays_and_take_frees_them() -> None:
    from shipyard.serving.shared_tensors import SharedArray, share, take

    big, small = np.arange(300_000, dtype=np.float64), np.arange(3)
    wire, segments = share({"big": big, "small": small})
    assert isinstance(wire["big"], SharedArray) and wire["small"] is small
    assert len(segments) == 1
    back = take(wire)
    np.testing.assert_array_equal(back["big"], big)
    with pytest.raises(FileNotFoundError):
        take(wire)  # unlinked: a second reader finds nothing


def test_requests_arriving_together_while_a_worker_runs_leave_as_one_batch(
    recorder_spec: VersionSpec,
) -> None:
    async def scenario(pool: WorkerPool) -> list[dict[str, np.ndarray]]:
        # The first finds both workers idle and goes at once; the next three arrive in the
        # same loop turn while it runs and go to the other worker together, not one alone
        # and two after it.
        values = [1000.0, 1.0, 2.0, 3.0]
        return await asyncio.gather(*(pool.predict({"v": np.array([v])}, None, 30) for v in values))

    results = asyncio.run(_with_pool(recorder_spec, scenario, processes=2))
    assert [int(r["batch_rows"][0]) for r in results] == [1, 3, 3, 3]
    assert [float(r["double"][0]) for r in results] == [2000.0, 2.0, 4.0, 6.0]
