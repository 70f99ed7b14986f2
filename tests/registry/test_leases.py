"""Leases of singleton loops: one holder at a time, on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures

from shipyard.registry.service import Registry


def test_one_holder_at_a_time_and_takeover_after_expiry(registry: Registry) -> None:
    leases = registry.leases
    assert leases.hold("controller", "a", 60)
    assert not leases.hold("controller", "b", 60)
    assert leases.hold("controller", "a", 60)  # the holder renews
    assert leases.hold("controller", "a", -1)  # ... and lets it lapse
    assert leases.hold("controller", "b", 60)
    assert not leases.hold("controller", "a", 60)


def test_racing_replicas_get_exactly_one_lease(registry: Registry) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        won = list(pool.map(lambda i: registry.leases.hold("race", f"r{i}", 60), range(8)))
    assert won.count(True) == 1


def test_each_loop_has_its_own_lease(registry: Registry) -> None:
    """The rollout controller and the drift scheduler may run on different replicas."""
    from shipyard.monitoring.drift_monitor import LEASE as DRIFT_LEASE
    from shipyard.routing.rollouts import LEASE as ROLLOUT_LEASE

    assert DRIFT_LEASE != ROLLOUT_LEASE
    assert registry.leases.hold(ROLLOUT_LEASE, "replica-a", 60)
    assert registry.leases.hold(DRIFT_LEASE, "replica-b", 60)
    assert not registry.leases.hold(DRIFT_LEASE, "replica-a", 60)
