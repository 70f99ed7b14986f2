"""Prometheus metrics for the data plane, read at scrape time.

A collector asks the live objects (worker pools, result cache) for their
counters when Prometheus scrapes, so serving a request only bumps plain ints:
no label lookups or locks on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
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
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.workers import BATCH_SIZE_BOUNDS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DataPlaneCollector(Collector):
    def __init__(
        self,
        dataplane: DataPlane,
        predictions: PredictionLog | None = None,
        drift: DriftMonitor | None = None,
        cost: CostMeter | None = None,
    ) -> None:
        self.dataplane = dataplane
        self.predictions = predictions
        self.drift = drift
        self.cost = cost

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        queued = GaugeMetricFamily(
            "shipyard_queue_depth", "Requests waiting for a worker.", labels=labels
        )
        workers = GaugeMetricFamily(
            "shipyard_workers", "Live worker processes per model version.", labels=labels
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
        for loaded in list(self.dataplane.manager.models.values()):
            pool = loaded.pool
            if pool is None:
                continue
            values = [loaded.record.model, str(loaded.record.version)]
            queued.add_metric(values, len(pool.queue))
            workers.add_metric(values, sum(1 for w in pool.workers if w.alive))
            batches.add_metric(values, pool.stats.batches)
            rows.add_metric(values, pool.stats.rows)
            refused.add_metric(values, pool.stats.refused)
            restarts.add_metric(values, pool.stats.restarts)
            load_time.add_metric(values, loaded.load_seconds)
            cumulative, buckets = 0, []
            for bound, count in zip(
                (*map(str, BATCH_SIZE_BOUNDS), "+Inf"), pool.stats.batch_sizes, strict=True
            ):
                cumulative += count
                buckets.append((bound, cumulative))
            sizes.add_metric(values, buckets, sum_value=pool.stats.rows)
        yield from (queued, workers, batches, rows, refused, restarts, load_time, sizes)
        yield from self._cache()
        yield from self._deployments()
        yield from self._prediction_log()
        yield from self._drift()
        yield from self._cost()

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
        router = self.dataplane.router
        if router is None:
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
        for name, entry in list(router.entries.items()):
            live = entry.live
            if live is None:
                continue
            revision.add_metric([name], live.revision)
            values = [name, str(live.revision)]
            sent.add_metric(values, live.shadow.sent)
            agreed.add_metric(values, live.shadow.agreed)
            failed.add_metric(values, live.shadow.failed)
            seconds.add_metric(values, live.shadow.seconds)
        yield from (revision, sent, agreed, failed, seconds)

    def _cache(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        cache = self.dataplane.cache
        if cache is None:
            return
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
        for key, (hits, misses) in list(cache.lookups_by_model.items()):
            model, _, version = key.rpartition(":")
            lookups.add_metric([model, version, "hit"], hits)
            lookups.add_metric([model, version, "miss"], misses)
            ratio.add_metric([model, version], hits / (hits + misses) if hits + misses else 0.0)
        yield lookups
        yield ratio
        yield GaugeMetricFamily("shipyard_cache_entries", "Answers cached.", value=len(cache))
        yield GaugeMetricFamily("shipyard_cache_bytes", "Bytes cached.", value=cache.bytes)


router = APIRouter(tags=["monitoring"])


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus exposition: requests, latency by stage, queues, batches, cache, drift, cost."""
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE)
