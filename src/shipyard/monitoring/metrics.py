"""Prometheus metrics for the data plane, read at scrape time.

A collector asks the live objects (worker pools, result cache) for their
counters when Prometheus scrapes, so serving a request only bumps plain ints:
no label lookups or locks on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shipyard.serving.dataplane import DataPlane

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DataPlaneCollector(Collector):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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
        yield from (queued, workers, batches, rows, refused)
        yield from self._cache()
        yield from self._deployments()

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


def render(dataplane: DataPlane) -> bytes:
    """The exposition text for one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DataPlaneCollector(dataplane))
    return generate_latest(registry)


router = APIRouter(tags=["monitoring"])


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus exposition: queues, batches, admission refusals, cache hit ratio."""
    return Response(render(request.app.state.dataplane), media_type=CONTENT_TYPE)
