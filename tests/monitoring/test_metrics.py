"""The data-plane collector over hand-written snapshots: no processes, the exposition by hand."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from shipyard.monitoring.metrics import DataPlaneCollector
from shipyard.serving.types import (
    BATCH_SIZE_BOUNDS,
    CacheLookups,
    CacheSnapshot,
    DeploymentSnapshot,
    ModelKey,
    PoolSnapshot,
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


def test_versions_cache_and_deployments_are_exposed_from_snapshots() -> None:
    collector = DataPlaneCollector(
        lambda: VERSIONS, cache=lambda: CACHE, deployments=lambda: DEPLOYMENTS
    )
    lines = exposition(collector)
    version = 'model="fraud",version="2"'
    assert samples(lines) == [
        f"shipyard_queue_depth{{{version}}} 4.0",
        f"shipyard_workers{{{version}}} 2.0",
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
        "shipyard_workers",
        "shipyard_batches_total",
        "shipyard_batch_rows_total",
        "shipyard_refused_total",
        "shipyard_worker_restarts_total",
        "shipyard_model_load_seconds",
        "shipyard_batch_size",
    }
    assert samples(lines) == []


def test_deployments_family_is_declared_even_before_any_deployment_is_live() -> None:
    lines = exposition(DataPlaneCollector(lambda: [], deployments=lambda: []))
    assert "# TYPE shipyard_deployment_revision gauge" in lines
    assert "# TYPE shipyard_shadow_requests_total counter" in lines
    assert samples(lines) == []
