"""The rollout controller's lease: one holder at a time, on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures

from shipyard.registry.service import Registry


def test_one_holder_at_a_time_and_takeover_after_expiry(registry: Registry) -> None:
    leases = registry.rollouts
    assert leases.hold_lease("controller", "a", 60)
    assert not leases.hold_lease("controller", "b", 60)
    assert leases.hold_lease("controller", "a", 60)  # the holder renews
    assert leases.hold_lease("controller", "a", -1)  # ... and lets it lapse
    assert leases.hold_lease("controller", "b", 60)
    assert not leases.hold_lease("controller", "a", 60)


def test_racing_replicas_get_exactly_one_lease(registry: Registry) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: registry.rollouts.hold_lease("race", f"r{i}", 60), range(8)))
    assert won.count(True) == 1
