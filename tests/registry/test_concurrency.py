"""Several processes registering versions of one model at once get distinct, gap-free numbers."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier

from shipyard.config import Settings
from shipyard.registry.repository import NewVersion
from shipyard.registry.service import Registry

PROCESSES = 4
VERSIONS_EACH = 6


def _register_many(settings_json: str, worker: int, barrier: Barrier) -> list[int]:
    registry = Registry.open(Settings.model_validate_json(settings_json))
    try:
        barrier.wait(timeout=60)  # start together so the registrations collide
        return [
            registry.models.create_version(
                "contended",
                NewVersion(
                    flavor="sklearn",
                    artifact_digest=f"{worker:032x}{attempt:032x}",
                    artifact_size=1,
                ),
            ).version
            for attempt in range(VERSIONS_EACH)
        ]
    finally:
        registry.close()


def test_concurrent_registrations_get_distinct_gap_free_versions(settings: Settings) -> None:
    Registry.open(settings).close()  # migrate once, like a server that started first
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    with context.Pool(PROCESSES) as pool:
        results = pool.starmap(
            _register_many,
            [(settings.model_dump_json(), worker, barrier) for worker in range(PROCESSES)],
        )
    numbers = sorted(n for numbers in results for n in numbers)
    assert numbers == list(range(1, PROCESSES * VERSIONS_EACH + 1))

    registry = Registry.open(settings)
    try:
        listed = registry.models.list_versions("contended", limit=1000).versions
        assert [v.version for v in listed] == numbers
        # Each worker's versions carry its own artifacts: nothing was crossed over.
        for worker, worker_numbers in enumerate(results):
            for number in worker_numbers:
                assert listed[number - 1].artifact.digest.startswith(f"{worker:032x}")
    finally:
        registry.close()


def test_concurrent_first_migrations_do_not_collide(settings: Settings) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    with context.Pool(PROCESSES) as pool:
        results = pool.starmap(
            _register_many,
            [(settings.model_dump_json(), worker, barrier) for worker in range(PROCESSES)],
        )
    assert sorted(n for numbers in results for n in numbers) == list(
        range(1, PROCESSES * VERSIONS_EACH + 1)
    )
