"""Several processes registering versions of one model at once get distinct, gap-free numbers."""

from __future__ import annotations

import multiprocessing
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from shipyard.config import Settings
from shipyard.registry.repository import NewVersion
from shipyard.registry.service import Registry

PROCESSES = 4
VERSIONS_EACH = 6


def _register_many(
    settings_json: str, worker: int, barrier: Barrier, results: Queue[tuple[int, list[int]]]
) -> None:
    registry = Registry.open(Settings.model_validate_json(settings_json))
    try:
        barrier.wait(timeout=60)  # start together so the registrations collide
        numbers = [
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
        results.put((worker, numbers))
    finally:
        registry.close()


def _register_from_processes(settings: Settings) -> dict[int, list[int]]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES)
    results: Queue[tuple[int, list[int]]] = context.Queue()
    processes = [
        context.Process(
            target=_register_many, args=(settings.model_dump_json(), worker, barrier, results)
        )
        for worker in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    collected = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    results.close()
    results.join_thread()
    return collected


def test_concurrent_registrations_get_distinct_gap_free_versions(settings: Settings) -> None:
    Registry.open(settings).close()  # migrate once, like a server that started first
    results = _register_from_processes(settings)
    numbers = sorted(n for numbers in results.values() for n in numbers)
    assert numbers == list(range(1, PROCESSES * VERSIONS_EACH + 1))

    registry = Registry.open(settings)
    try:
        listed = registry.models.list_versions("contended", limit=1000).versions
        assert [v.version for v in listed] == numbers
        # Each worker's versions carry its own artifacts: nothing was crossed over.
        for worker, worker_numbers in results.items():
            for number in worker_numbers:
                assert listed[number - 1].artifact.digest.startswith(f"{worker:032x}")
    finally:
        registry.close()


def test_concurrent_first_migrations_do_not_collide(settings: Settings) -> None:
    results = _register_from_processes(settings)  # every process migrates an empty database
    numbers = sorted(n for numbers in results.values() for n in numbers)
    assert numbers == list(range(1, PROCESSES * VERSIONS_EACH + 1))
