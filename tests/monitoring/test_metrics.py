"""The data-plane collector over hand-written snapshots: no processes, the exposition by hand."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from shipyard.monitoring.metrics import DataPlaneCollector, desired_capacity_ratio
from shipyard.serving.types import (
    BATCH_SIZE_BOUNDS,
    COLD_START_BOUNDS,
    CacheLookups,
    CacheSnapshot,
    DeploymentSnapshot,
    ModelKey,
    PoolSnapshot,
    ScalingDecision,
    VersionSnapshot,
)

FRAUD_2 = ModelKey("fraud", 2)
# Batch sizes by bucket, not cumulative: 3 single rows, 1 of 2, 2 of 3-4, 1 of 600 (+Inf).
SIZES = (3, 1, 2, 0, 0, 0, 0, 0, 0, 0, 1)
VERSIONS = [
    VersionSnapshot(
        key=FRAUD_2,
        state="ready",
        load_seconds=1.5,
        pool=PoolSnapshot(
            workers=2,
            pids=(101, 102),
            queued=4,
            batches=7,
            rows=613,
            refused=5,
            restarts=1,
            batch_sizes=SIZES,
        ),
    ),
    VersionSnapshot(key=ModelKey("fraud", 3), state="loading"),
    VersionSnapshot(key=ModelKey("churn", 1), state="failed", reason="ImportError: no"),
]
CACHE = CacheSnapshot(
    entries=12,
    bytes=4096,
    lookups=(CacheLookups(FRAUD_2, hits=3, misses=1), CacheLookups(ModelKey("churn", 1), 0, 0)),
)
DEPLOYMENTS = [
    DeploymentSnapshot(
        "fraud-api", 4, shadow_sent=10, shadow_agreed=8, shadow_failed=1, shadow_seconds=0.25
    )
]


def exposition(collector: DataPlaneCollector) -> list[str]:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode().splitlines()


def samples(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith("#")]


SCALING_FAMILIES = (
    "shipyard_workers",
    "shipyard_worker_memory_bytes",
    "shipyard_scaling_decisions_total",
    "shipyard_cold_start_seconds",
    "shipyard_desired_capacity_ratio",
)


def without_scaling(lines: list[str]) -> list[str]:
    """The samples of every family but the scaling ones (tested on their own below)."""
    return [line for line in samples(lines) if not line.startswith(SCALING_FAMILIES)]


def test_versions_cache_and_deployments_are_exposed_from_snapshots() -> None:
    collector = DataPlaneCollector(
        lambda: VERSIONS, cache=lambda: CACHE, deployments=lambda: DEPLOYMENTS
    )
    lines = exposition(collector)
    version = 'model="fraud",version="2"'
    assert without_scaling(lines) == [
        f"shipyard_queue_depth{{{version}}} 4.0",
        f"shipyard_batches_total{{{version}}} 7.0",
        f"shipyard_batch_rows_total{{{version}}} 613.0",
        f"shipyard_refused_total{{{version}}} 5.0",
        f"shipyard_worker_restarts_total{{{version}}} 1.0",
        f"shipyard_model_load_seconds{{{version}}} 1.5",
        # Cumulative: each bucket counts every batch at most its bound.
        f'shipyard_batch_size_bucket{{le="1",{version}}} 3.0',
        f'shipyard_batch_size_bucket{{le="2",{version}}} 4.0',
        f'shipyard_batch_size_bucket{{le="4",{version}}} 6.0',
        f'shipyard_batch_size_bucket{{le="8",{version}}} 6.0',
        f'shipyard_batch_size_bucket{{le="16",{version}}} 6.0',
        f'shipyard_batch_size_bucket{{le="32",{version}}} 6.0',
        f'shipyard_batch_size_bucket{{le="64",{version}}} 6.0',
        f'shipyard_batch_size_bucket{{le="128",{version}}} 6.0',
        f'shipyard_batch_size_bucket{{le="256",{version}}} 6.0',
        f'shipyard_batch_size_bucket{{le="512",{version}}} 6.0',
        f'shipyard_batch_size_bucket{{le="+Inf",{version}}} 7.0',
        f"shipyard_batch_size_count{{{version}}} 7.0",
        f"shipyard_batch_size_sum{{{version}}} 613.0",
        'shipyard_cache_lookups_total{model="fraud",result="hit",version="2"} 3.0',
        'shipyard_cache_lookups_total{model="fraud",result="miss",version="2"} 1.0',
        'shipyard_cache_lookups_total{model="churn",result="hit",version="1"} 0.0',
        'shipyard_cache_lookups_total{model="churn",result="miss",version="1"} 0.0',
        f"shipyard_cache_hit_ratio{{{version}}} 0.75",
        'shipyard_cache_hit_ratio{model="churn",version="1"} 0.0',
        "shipyard_cache_entries 12.0",
        "shipyard_cache_bytes 4096.0",
        'shipyard_deployment_revision{deployment="fraud-api"} 4.0',
        'shipyard_shadow_requests_total{deployment="fraud-api",revision="4"} 10.0',
        'shipyard_shadow_agreements_total{deployment="fraud-api",revision="4"} 8.0',
        'shipyard_shadow_failures_total{deployment="fraud-api",revision="4"} 1.0',
        'shipyard_shadow_seconds_total{deployment="fraud-api",revision="4"} 0.25',
    ]
    assert "# TYPE shipyard_batch_size histogram" in lines
    assert "# TYPE shipyard_cache_lookups_total counter" in lines
    assert "# TYPE shipyard_deployment_revision gauge" in lines
    assert len(SIZES) == len(BATCH_SIZE_BOUNDS) + 1


def test_sources_left_out_expose_no_families() -> None:
    lines = exposition(DataPlaneCollector(lambda: []))
    declared = {line.split(" ")[2] for line in lines if line.startswith("# TYPE ")}
    assert declared == {
        "shipyard_queue_depth",
        "shipyard_batches_total",
        "shipyard_batch_rows_total",
        "shipyard_refused_total",
        "shipyard_worker_restarts_total",
        "shipyard_model_load_seconds",
        "shipyard_batch_size",
        *SCALING_FAMILIES,
    }
    # Nothing loaded: no version series, and no capacity wanted that is not there.
    assert samples(lines) == ["shipyard_desired_capacity_ratio 1.0"]


def test_deployments_family_is_declared_even_before_any_deployment_is_live() -> None:
    lines = exposition(DataPlaneCollector(lambda: [], deployments=lambda: []))
    assert "# TYPE shipyard_deployment_revision gauge" in lines
    assert "# TYPE shipyard_shadow_requests_total counter" in lines
    assert without_scaling(lines) == []


# Cold starts by bucket, not cumulative: one of 0.1-0.25 s, two of 0.5-1 s, one over 60 s.
COLD = (0, 1, 0, 2, 0, 0, 0, 0, 0, 1)
SCALING_VERSIONS = [
    VersionSnapshot(
        key=FRAUD_2,
        state="ready",
        pool=PoolSnapshot(
            workers=2,
            pids=(101, 102),
            queued=0,
            batches=0,
            rows=0,
            refused=0,
            restarts=0,
            batch_sizes=(0,) * 11,
            desired=4,
            starting=2,
            draining=1,
            memory_bytes=300_000_000,
        ),
        cold_starts=COLD,
        cold_start_seconds=62.5,
        decisions=(("down", "load", 1), ("up", "load", 2)),
        recent=(ScalingDecision(1.0, 2, 4, "up", "load"),),
        min_workers=1,
        max_workers=4,
    ),
    # Scaled to zero: no pool, yet its workers read 0 and its decisions stay.
    VersionSnapshot(key=ModelKey("churn", 1), state="idle", decisions=(("zero", "idle", 1),)),
]


def test_scaling_families_cover_every_known_version() -> None:
    lines = exposition(DataPlaneCollector(lambda: SCALING_VERSIONS))
    fraud, churn = 'model="fraud",version="2"', 'model="churn",version="1"'
    assert [line for line in samples(lines) if line.startswith(SCALING_FAMILIES)] == [
        'shipyard_workers{model="fraud",state="desired",version="2"} 4.0',
        'shipyard_workers{model="fraud",state="ready",version="2"} 2.0',
        'shipyard_workers{model="fraud",state="starting",version="2"} 2.0',
        'shipyard_workers{model="fraud",state="draining",version="2"} 1.0',
        'shipyard_workers{model="churn",state="desired",version="1"} 0.0',
        'shipyard_workers{model="churn",state="ready",version="1"} 0.0',
        'shipyard_workers{model="churn",state="starting",version="1"} 0.0',
        'shipyard_workers{model="churn",state="draining",version="1"} 0.0',
        f"shipyard_worker_memory_bytes{{{fraud}}} 3e+08",
        f"shipyard_worker_memory_bytes{{{churn}}} 0.0",
        'shipyard_scaling_decisions_total{direction="down",model="fraud",reason="load",'
        'version="2"} 1.0',
        'shipyard_scaling_decisions_total{direction="up",model="fraud",reason="load",'
        'version="2"} 2.0',
        'shipyard_scaling_decisions_total{direction="zero",model="churn",reason="idle",'
        'version="1"} 1.0',
        # Cumulative: each bucket counts every cold start at most its bound.
        f'shipyard_cold_start_seconds_bucket{{le="0.1",{fraud}}} 0.0',
        f'shipyard_cold_start_seconds_bucket{{le="0.25",{fraud}}} 1.0',
        f'shipyard_cold_start_seconds_bucket{{le="0.5",{fraud}}} 1.0',
        f'shipyard_cold_start_seconds_bucket{{le="1.0",{fraud}}} 3.0',
        f'shipyard_cold_start_seconds_bucket{{le="2.5",{fraud}}} 3.0',
        f'shipyard_cold_start_seconds_bucket{{le="5.0",{fraud}}} 3.0',
        f'shipyard_cold_start_seconds_bucket{{le="10.0",{fraud}}} 3.0',
        f'shipyard_cold_start_seconds_bucket{{le="30.0",{fraud}}} 3.0',
        f'shipyard_cold_start_seconds_bucket{{le="60.0",{fraud}}} 3.0',
        f'shipyard_cold_start_seconds_bucket{{le="+Inf",{fraud}}} 4.0',
        f"shipyard_cold_start_seconds_count{{{fraud}}} 4.0",
        f"shipyard_cold_start_seconds_sum{{{fraud}}} 62.5",
        f'shipyard_cold_start_seconds_bucket{{le="0.1",{churn}}} 0.0',
        f'shipyard_cold_start_seconds_bucket{{le="0.25",{churn}}} 0.0',
        f'shipyard_cold_start_seconds_bucket{{le="0.5",{churn}}} 0.0',
        f'shipyard_cold_start_seconds_bucket{{le="1.0",{churn}}} 0.0',
        f'shipyard_cold_start_seconds_bucket{{le="2.5",{churn}}} 0.0',
        f'shipyard_cold_start_seconds_bucket{{le="5.0",{churn}}} 0.0',
        f'shipyard_cold_start_seconds_bucket{{le="10.0",{churn}}} 0.0',
        f'shipyard_cold_start_seconds_bucket{{le="30.0",{churn}}} 0.0',
        f'shipyard_cold_start_seconds_bucket{{le="60.0",{churn}}} 0.0',
        f'shipyard_cold_start_seconds_bucket{{le="+Inf",{churn}}} 0.0',
        f"shipyard_cold_start_seconds_count{{{churn}}} 0.0",
        f"shipyard_cold_start_seconds_sum{{{churn}}} 0.0",
        # 4 desired over 2 ready; the idle version has neither.
        "shipyard_desired_capacity_ratio 2.0",
    ]
    assert "# TYPE shipyard_cold_start_seconds histogram" in lines
    assert "# TYPE shipyard_scaling_decisions_total counter" in lines
    assert "# TYPE shipyard_workers gauge" in lines
    assert len(COLD) == len(COLD_START_BOUNDS) + 1


def _pool(desired: int, ready: int) -> VersionSnapshot:
    counts = PoolSnapshot(ready, (), 0, 0, 0, 0, 0, (), desired=desired)
    return VersionSnapshot(key=FRAUD_2, state="ready", pool=counts)


def test_desired_capacity_ratio() -> None:
    assert desired_capacity_ratio([]) == 1.0
    assert desired_capacity_ratio([VersionSnapshot(ModelKey("a", 1), "idle")]) == 1.0
    assert desired_capacity_ratio([_pool(2, 2), _pool(1, 1)]) == 1.0
    assert desired_capacity_ratio([_pool(4, 2), _pool(2, 2)]) == 1.5
    assert desired_capacity_ratio([_pool(1, 2)]) == 0.5  # draining down
    # None ready yet (every pool starting): the desired count itself.
    assert desired_capacity_ratio([_pool(3, 0)]) == 3.0
    # Held back by the budget: 2 desired and ready, the policy wanted 3.
    held = PoolSnapshot(2, (), 0, 0, 0, 0, 0, (), desired=2, wanted=3)
    assert desired_capacity_ratio([VersionSnapshot(FRAUD_2, "ready", pool=held)]) == 1.5
