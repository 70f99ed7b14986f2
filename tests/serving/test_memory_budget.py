"""The memory budget: a load that does not fit unloads the least recently used idle
version first, and is refused at once when nothing can be freed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest

from shipyard.config import ModelServing, ScalingOptions, ScalingPolicy, Settings
from shipyard.errors import ModelNotReady
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from shipyard.serving.manager import ModelManager
from tests import fixtures

ROWS, _ = fixtures.training_data(rows=2, seed=1)
UNPINNED = ModelServing(scaling=ScalingPolicy(min_workers=0, max_workers=1))


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    opened = Registry.open(Settings(home=tmp_path / "home"))
    for seed, name in enumerate(("a", "b", "c", "d")):
        model = fixtures.write_sklearn_model(tmp_path / name, seed=seed)
        opened.register(model, RegistrationOptions(name=name))
    return opened


def test_a_load_over_budget_unloads_the_lru_idle_version_or_is_refused(
    registry: Registry,
) -> None:
    async def scenario() -> None:
        manager = ModelManager(registry, serving_for=lambda _: UNPINNED)
        try:
            a = await manager.load("a")
            assert a.pool is not None
            (pid,) = a.pool.pids()
            one_worker = psutil.Process(pid).memory_info().rss  # measured here, not by Shipyard
            manager.memory_budget = int(2.5 * one_worker)  # room for two workers, not three
            b = await manager.load("b")
            assert b.pool is not None
            await a.pool.predict({"input-0": ROWS}, None, 30)  # a is used, then b: a is LRU
            await b.pool.predict({"input-0": ROWS}, None, 30)

            c_record = await manager.resolve("c")
            c = await manager.get_ready(c_record, 60, deployed=True)
            assert (a.state, b.state, c.state) == ("idle", "ready", "ready")
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"

            # b and c pinned by min_workers: nothing may be unloaded for d.
            for record in (b.record, c.record):
                manager.set_scaling(record, ScalingOptions(min_workers=1))
            d_record = await manager.resolve("d")
            with pytest.raises(ModelNotReady) as refused:
                await manager.get_ready(d_record, 60, deployed=True)
            assert refused.value.status == 503
            assert "memory budget" in refused.value.message
            d = manager.models[d_record.model, d_record.version]
            assert d.pool is None and d.state == "failed"
            assert (b.state, c.state) == ("ready", "ready")

            # a was unloaded, not forgotten: its next request loads it again (c is LRU
            # now but pinned, b too, so a's return is refused in turn until one is freed).
            manager.set_scaling(c.record, ScalingOptions(min_workers=0))
            back = await manager.get_ready(a.record, 60, deployed=True)
            assert back.state == "ready" and c.state == "idle"
        finally:
            await manager.close()

    try:
        asyncio.run(scenario())
    finally:
        registry.close()
