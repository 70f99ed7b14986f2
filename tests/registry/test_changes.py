"""The change counter servers poll: every audited change moves it, reads never do."""

from __future__ import annotations

import asyncio
import concurrent.futures
from pathlib import Path

import pytest

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from shipyard.serving import manager as manager_module
from shipyard.serving.manager import ModelManager
from tests import fixtures

MANIFEST = "name: api\nmodel: fraud\nroutes: [{version: 1}]"


def _register(registry: Registry, tmp_path: Path, seeds: tuple[int, ...]) -> None:
    for seed in seeds:
        model = fixtures.write_sklearn_model(tmp_path / f"v{seed}", seed=seed)
        registry.register(model, RegistrationOptions(name="fraud"))


def test_each_audited_change_moves_the_sequence_for_every_replica(
    registry: Registry, settings: Settings, tmp_path: Path
) -> None:
    replica = Registry.open(settings)  # another server on the same database
    try:
        start = replica.changes.current()
        _register(registry, tmp_path, (0, 1))
        assert replica.changes.current() == start + 2  # one audit event per version
        registry.models.set_alias("fraud", "production", 1)
        registry.deployments.apply(parse_manifest(MANIFEST))
        registry.rollouts.start("api", 1, 2, [50], 0.0, 1)
        assert replica.changes.current() == start + 5
        registry.models.serving_version(ModelRef("fraud"))
        registry.deployments.find("api")
        registry.rollouts.running()
        assert replica.changes.current() == start + 5  # reads change nothing
    finally:
        replica.close()


def test_concurrent_changes_are_each_counted(registry: Registry, tmp_path: Path) -> None:
    _register(registry, tmp_path, (0,))
    start = registry.changes.current()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: registry.models.set_model_tag("fraud", f"k{i}", "v"), range(8)))
    assert registry.changes.current() == start + 8


def test_a_cached_read_answers_without_a_query(registry: Registry) -> None:
    changes = registry.changes
    assert changes.cached(60.0) is None  # never read
    read = changes.current(60.0)
    assert changes.cached(60.0) == read
    assert changes.cached(0.0) is None  # too old for a caller that allows no age


def test_a_name_is_read_again_only_after_the_registry_changed(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(registry, tmp_path, (0, 1))
    registry.models.set_alias("fraud", "production", 1)
    monkeypatch.setattr(manager_module, "RESOLVE_TTL_SECONDS", 0.0)  # every answer is stale
    monkeypatch.setattr(manager_module, "CHANGES_MAX_AGE", 0.0)  # and the sequence re-read
    reads: list[str] = []
    serving_version = registry.models.serving_version

    def counted(ref: ModelRef) -> object:
        reads.append(ref.name)
        return serving_version(ref)

    monkeypatch.setattr(registry.models, "serving_version", counted)
    manager = ModelManager(registry)

    async def resolve_settled() -> int:
        record = await manager.resolve("fraud")
        await asyncio.sleep(0)  # a refresh the stale answer scheduled starts first
        while manager._refreshing:  # ... and is waited for
            await asyncio.sleep(0)
        return record.version

    async def scenario() -> None:
        assert await resolve_settled() == 1
        assert len(reads) == 1
        for _ in range(5):
            assert await resolve_settled() == 1
        assert len(reads) == 1  # unchanged registry: no query for the name
        await asyncio.to_thread(registry.models.set_alias, "fraud", "production", 2)
        assert await resolve_settled() == 1  # the stale answer, while it is re-read
        assert len(reads) == 2
        assert await resolve_settled() == 2

    asyncio.run(scenario())
