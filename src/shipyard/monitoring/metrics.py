"""Prometheus metrics for the data plane, read at scrape time.

A collector asks the data plane for snapshots of its counters (versions and
their worker pools, result cache, deployments) when Prometheus scrapes, so
serving a request only bumps plain ints: no label lookups or locks on the hot
path. Monitoring sees serving only through the records in serving.types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from shipyard.monitoring.cost import CostMeter
from shipyard.monitoring.drift_monitor import DriftMonitor
from shipyard.monitoring.prediction_log import PredictionLog
from shipyard.serving.types import (
    BATCH_SIZE_BOUNDS,
    COLD_START_BOUNDS,
    CacheSnapshot,
    DeploymentSnapshot,
    PoolSnapshot,
    VersionSnapshot,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKET_BOUNDS = (*map(str, BATCH_SIZE_BOUNDS), "+Inf")
"""The batch-size histogram's `le` labels."""
_COLD_START_BOUNDS = (*map(str, COLD_START_BOUNDS), "+Inf")
"""The cold-start histogram's `le` labels."""
WORKER_STATES = ("desired", "ready", "starting", "draining")
"""The `state` label of `shipyard_workers`."""
_NO_POOL = PoolSnapshot(0, (), 0, 0, 0, 0, 0, ())
"""What a version without a worker pool (idle, loading, failed, unloaded) counts as."""


def _cumulative(bounds: Sequence[str], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets (each counts everything at most its bound) from
    per-bucket counts."""
    total, buckets = 0, []
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        buckets.append((bound, float(total)))
    return buckets


def desired_capacity_ratio(versions: Sequence[VersionSnapshot]) -> float:
    """Workers the scaling policies want over workers ready, across every loaded version.

    What the policy asked for counts even where the memory budget or the worker cap held
    a pool back, so a replica at its limits reads above 1. 1.0 with nothing loaded (no
    demand this server cannot meet); with none ready yet, the wanted count itself (so a
    replica whose pools are all starting reads above 1)."""
    pools = [v.pool for v in versions if v.pool is not None]
    desired = sum(max(pool.wanted, pool.desired) for pool in pools)
    ready = sum(pool.workers for pool in pools)
    if ready == 0:
        return float(desired) if desired else 1.0
    return desired / ready


class DataPlaneCollector(Collector):
    """Exposes the data plane's snapshots, the prediction log, drift and cost at scrape time.

    `versions` is ModelManager.snapshot, `cache` ResultCache.snapshot and `deployments`
    DeploymentRouter.snapshot; a family whose source is None is not exposed.
    """

    def __init__(
        self,
        versions: Callable[[], Sequence[VersionSnapshot]],
        cache: Callable[[], CacheSnapshot] | None = None,
        deployments: Callable[[], Sequence[DeploymentSnapshot]] | None = None,
        predictions: PredictionLog | None = None,
        drift: DriftMonitor | None = None,
        cost: CostMeter | None = None,
    ) -> None:
        self.versions = versions
        self.cache = cache
        self.deployments = deployments
        self.predictions = predictions
        self.drift = drift
        self.cost = cost

    def collect(self) -> Iterator[Metric]:
        versions = list(self.versions())
        labels = ["model", "version"]
        queued = GaugeMetricFamily(
            "shipyard_queue_depth", "Requests waiting for a worker.", labels=labels
        )
        batches = CounterMetricFamily(
            "shipyard_batches", "Predict calls sent to workers.", labels=labels
        )
        rows = CounterMetricFamily("shipyard_batch_rows", "Rows sent to workers.", labels=labels)
        refused = CounterMetricFamily(
            "shipyard_refused", "Requests refused by admission control (503).", labels=labels
        )
        restarts = CounterMetricFamily(
            "shipyard_worker_restarts", "Workers replaced after dying.", labels=labels
        )
        load_time = GaugeMetricFamily(
            "shipyard_model_load_seconds",
            "Time to fetch, load and warm a version in every worker.",
            labels=labels,
        )
        sizes = HistogramMetricFamily(
            "shipyard_batch_size", "Rows per predict call sent to a worker.", labels=labels
        )
        for version in versions:
            pool = version.pool
            if pool is None:
                continue
            values = [version.key.model, str(version.key.version)]
            queued.add_metric(values, pool.queued)
            batches.add_metric(values, pool.batches)
            rows.add_metric(values, pool.rows)
            refused.add_metric(values, pool.refused)
            restarts.add_metric(values, pool.restarts)
            load_time.add_metric(values, version.load_seconds)
            buckets = _cumulative(_BUCKET_BOUNDS, pool.batch_sizes)
            sizes.add_metric(values, buckets, sum_value=pool.rows)
        yield from (queued, batches, rows, refused, restarts, load_time, sizes)
        yield from self._scaling(versions)
        yield from self._cache()
        yield from self._deployments()
        yield from self._prediction_log()
        yield from self._drift()
        yield from self._cost()

    @staticmethod
    def _scaling(versions: Sequence[VersionSnapshot]) -> Iterator[Metric]:
        """Worker counts, memory, scaling decisions and cold starts of every known version:
        one without a pool (scaled to zero, loading, failed, unloaded) counts zero workers,
        so its series stay and read 0 rather than vanish."""
        labels = ["model", "version"]
        workers = GaugeMetricFamily(
            "shipyard_workers",
            "Worker processes per model version: desired (the autoscaler's aim), ready, "
            "starting (spawned, not yet warm), draining (finishing before they stop).",
            labels=[*labels, "state"],
        )
        memory = GaugeMetricFamily(
            "shipyard_worker_memory_bytes",
            "Resident memory of a version's workers.",
            labels=labels,
        )
        decisions = CounterMetricFamily(
            "shipyard_scaling_decisions",
            "Changes of a version's desired worker count, by direction and reason.",
            labels=[*labels, "direction", "reason"],
        )
        cold_starts = HistogramMetricFamily(
            "shipyard_cold_start_seconds",
            "Loads a request waited for (cold starts): fetch, start and warm-up time.",
            labels=labels,
        )
        for version in versions:
            values = [version.key.model, str(version.key.version)]
            pool = version.pool or _NO_POOL
            counts = (pool.desired, pool.workers, pool.starting, pool.draining)
            for state, count in zip(WORKER_STATES, counts, strict=True):
                workers.add_metric([*values, state], count)
            memory.add_metric(values, pool.memory_bytes)
            for direction, reason, count in version.decisions:
                decisions.add_metric([*values, direction, reason], count)
            buckets = _cumulative(_COLD_START_BOUNDS, version.cold_starts)
            cold_starts.add_metric(values, buckets, sum_value=version.cold_start_seconds)
        yield from (workers, memory, decisions, cold_starts)
        yield GaugeMetricFamily(
            "shipyard_desired_capacity_ratio",
            "Desired over ready workers across loaded versions (1 when nothing is loaded; "
            "the desired count while none is ready): above 1, this replica wants capacity.",
            value=desired_capacity_ratio(versions),
        )

    def _prediction_log(self) -> Iterator[Metric]:
        if self.predictions is None:
            return
        stats = self.predictions.stats
        for name, value, text in (
            ("sampled", stats.sampled, "Requests sampled into the prediction log."),
            ("written", stats.written, "Prediction log records committed (durable)."),
            ("dropped", stats.dropped, "Sampled records dropped: writer behind or write failed."),
        ):
            yield CounterMetricFamily(f"shipyard_prediction_log_{name}", text, value=value)

    def _drift(self) -> Iterator[Metric]:
        if self.drift is None:
            return
        labels = ["deployment", "version"]
        detected = GaugeMetricFamily(
            "shipyard_drift_detected",
            "1 when the latest drift check found dataset drift.",
            labels=labels,
        )
        share = GaugeMetricFamily(
            "shipyard_drift_share", "Share of features drifted in the latest check.", labels=labels
        )
        p_values = GaugeMetricFamily(
            "shipyard_drift_feature_p_value",
            "Latest drift test p-value per feature (output: the predictions).",
            labels=[*labels, "feature"],
        )
        for (deployment, version), report in list(self.drift.latest.items()):
            values = [deployment, str(version)]
            detected.add_metric(values, 1.0 if report.drifted else 0.0)
            share.add_metric(values, report.share)
            features = list(report.result.get("features", []))
            output = report.result.get("output")
            for feature in [*features, *([output] if output else [])]:
                p_value = feature.get("p_value")
                if p_value is not None:
                    name = "output" if feature is output else str(feature.get("name"))
                    p_values.add_metric([*values, name], p_value)
        yield from (detected, share, p_values)
        yield CounterMetricFamily(
            "shipyard_drift_checks", "Drift checks run by this process.", value=self.drift.checks
        )
        yield CounterMetricFamily(
            "shipyard_drift_alerts", "Drift alerts sent to webhooks.", value=self.drift.alerts
        )

    def _cost(self) -> Iterator[Metric]:
        if self.cost is None:
            return
        labels = ["model", "version"]
        cpu = CounterMetricFamily(
            "shipyard_worker_cpu_seconds", "CPU time used by a version's workers.", labels=labels
        )
        per_1k = GaugeMetricFamily(
            "shipyard_cost_per_1k_predictions",
            "Price of 1,000 predictions from workers' CPU time and the replica-hour price.",
            labels=labels,
        )
        for usage in self.cost.read():
            values = [usage.model, usage.version]
            cpu.add_metric(values, usage.cpu_seconds)
            if usage.cost_per_1k is not None:
                per_1k.add_metric(values, usage.cost_per_1k)
        yield from (cpu, per_1k)

    def _deployments(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        if self.deployments is None:
            return
        revision = GaugeMetricFamily(
            "shipyard_deployment_revision", "Revision a deployment serves.", labels=["deployment"]
        )
        labels = ["deployment", "revision"]
        sent = CounterMetricFamily("shipyard_shadow_requests", "Shadow copies sent.", labels=labels)
        agreed = CounterMetricFamily(
            "shipyard_shadow_agreements", "Shadow answers equal to the live ones.", labels=labels
        )
        failed = CounterMetricFamily("shipyard_shadow_failures", "Shadow copies that failed.",
                                     labels=labels)  # fmt: skip
        seconds = CounterMetricFamily(
            "shipyard_shadow_seconds", "Time spent answering shadow copies.", labels=labels
        )
        for deployment in self.deployments():
            revision.add_metric([deployment.deployment], deployment.revision)
            values = [deployment.deployment, str(deployment.revision)]
            sent.add_metric(values, deployment.shadow_sent)
            agreed.add_metric(values, deployment.shadow_agreed)
            failed.add_metric(values, deployment.shadow_failed)
            seconds.add_metric(values, deployment.shadow_seconds)
        yield from (revision, sent, agreed, failed, seconds)

    def _cache(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        if self.cache is None:
            return
        cache = self.cache()
        lookups = CounterMetricFamily(
            "shipyard_cache_lookups",
            "Result cache lookups by outcome.",
            labels=["model", "version", "result"],
        )
        ratio = GaugeMetricFamily(
            "shipyard_cache_hit_ratio",
            "Share of result cache lookups answered from the cache since start.",
            labels=["model", "version"],
        )
        for looked_up in cache.lookups:
            model, version = looked_up.key.model, str(looked_up.key.version)
            hits, misses = looked_up.hits, looked_up.misses
            lookups.add_metric([model, version, "hit"], hits)
            lookups.add_metric([model, version, "miss"], misses)
            ratio.add_metric([model, version], hits / (hits + misses) if hits + misses else 0.0)
        yield lookups
        yield ratio
        yield GaugeMetricFamily("shipyard_cache_entries", "Answers cached.", value=cache.entries)
        yield GaugeMetricFamily("shipyard_cache_bytes", "Bytes cached.", value=cache.bytes)


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format of everything registered (served at GET /metrics)."""
    return generate_latest(registry)
