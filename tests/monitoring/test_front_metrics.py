"""Several HTTP processes' request metrics add up to one server's, and a front that dies
leaves its counts behind (counters never go back), not its gauges."""

from __future__ import annotations

import pickle

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shipyard.monitoring.fronts import FrontMetrics


def _process_metrics(
    served: dict[str, int], latencies: list[float], inflight: int
) -> CollectorRegistry:
    registry = CollectorRegistry()
    requests = Counter("req_total", "Requests.", ["status"], registry=registry)
    for status, count in served.items():
        requests.labels(status).inc(count)
    latency = Histogram("lat_seconds", "Latency.", buckets=[0.1, 1.0], registry=registry)
    for seconds in latencies:
        latency.observe(seconds)
    Gauge("inflight", "In flight.", registry=registry).set(inflight)
    return registry


def _samples(collector: FrontMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    exposed = CollectorRegistry(auto_describe=False)
    exposed.register(collector)
    text = generate_latest(exposed).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _sent(registry: CollectorRegistry) -> list:  # type: ignore[type-arg]
    return pickle.loads(pickle.dumps(list(registry.collect())))  # as it crosses the pipe


def test_fronts_add_up_series_by_series() -> None:
    primary = _process_metrics({"200": 3, "503": 1}, [0.05, 0.5], inflight=2)
    front = _process_metrics({"200": 4, "400": 2}, [0.05, 2.0, 3.0], inflight=1)
    metrics = FrontMetrics(primary)
    metrics.update(1, _sent(front))
    samples = _samples(metrics)
    # Hand-added: 3 + 4 answered 200, 1 refused 503 (primary), 2 rejected 400 (front).
    assert samples[("req_total", (("status", "200"),))] == 7
    assert samples[("req_total", (("status", "503"),))] == 1
    assert samples[("req_total", (("status", "400"),))] == 2
    # Latencies 0.05, 0.5 | 0.05, 2.0, 3.0: two under 0.1 s, three under 1 s, five in all.
    assert samples[("lat_seconds_bucket", (("le", "0.1"),))] == 2
    assert samples[("lat_seconds_bucket", (("le", "1.0"),))] == 3
    assert samples[("lat_seconds_bucket", (("le", "+Inf"),))] == 5
    assert samples[("lat_seconds_count", ())] == 5
    assert samples[("lat_seconds_sum", ())] == 0.05 + 0.5 + 0.05 + 2.0 + 3.0
    assert samples[("inflight", ())] == 3


def test_a_dead_front_keeps_its_counts_not_its_gauges() -> None:
    primary = _process_metrics({"200": 3}, [], inflight=0)
    metrics = FrontMetrics(primary)
    metrics.update(1, _sent(_process_metrics({"200": 5}, [0.5], inflight=4)))
    metrics.retire(1)
    # Its successor starts counting from zero.
    metrics.update(1, _sent(_process_metrics({"200": 2}, [], inflight=1)))
    samples = _samples(metrics)
    assert samples[("req_total", (("status", "200"),))] == 3 + 5 + 2
    assert samples[("lat_seconds_count", ())] == 1
    assert samples[("inflight", ())] == 0 + 1  # the dead front's 4 in flight died with it
