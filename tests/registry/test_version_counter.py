"""The version counter under contention, in one process: threads registering versions of
one model at once get 1..N, no gaps, no duplicates, on SQLite and on PostgreSQL.

tests/registry/test_concurrency.py proves the same across processes; this one fails in
about a second instead of through a queue timeout when the counter is not atomic: every
thread's error comes back to the test as soon as the threads are joined.
"""

from __future__ import annotations

import threading

from shipyard.registry.repository import NewVersion
from shipyard.registry.service import Registry

THREADS = 8
VERSIONS_EACH = 5


def test_threads_registering_at_once_get_versions_one_to_n(registry: Registry) -> None:
    registry.models.create_version(
        "warm", NewVersion(flavor="sklearn", artifact_digest="0" * 64, artifact_size=1)
    )  # schema and connections ready, so the threads collide on the counter, not on setup
    start = threading.Barrier(THREADS)
    numbers: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def register(worker: int) -> None:
        try:
            start.wait(timeout=30)
            numbers[worker] = [
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
        except BaseException as exc:  # handed to the test thread, which fails with it
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(w,)) for w in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, f"{len(errors)} registrations failed; first: {errors[0]!r}"
    assert all(not thread.is_alive() for thread in threads)

    every = sorted(n for mine in numbers.values() for n in mine)
    assert every == list(range(1, THREADS * VERSIONS_EACH + 1))
    for mine in numbers.values():
        assert mine == sorted(mine)  # one thread's versions come out in its own order

    listed = registry.models.list_versions("contended", limit=1000).versions
    assert [v.version for v in listed] == every
    for worker, mine in numbers.items():
        for number in mine:  # each number holds the artifact of the thread that got it
            assert listed[number - 1].artifact.digest.startswith(f"{worker:032x}")
    assert registry.models.get_model("contended").latest_version == THREADS * VERSIONS_EACH
