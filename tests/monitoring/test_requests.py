"""The request observer's own decisions: request ids and which requests are traced."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from shipyard.monitoring.requests import RequestObserver

SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NOT_SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def test_trace_sampling_keeps_callers_sampled_traces_whole() -> None:
    observer = RequestObserver(CollectorRegistry(), access_log=False, trace_sample=0.0)
    assert observer._traced(observer.start("/r", "rest", traceparent=SAMPLED))
    assert not observer._traced(observer.start("/r", "rest", traceparent=NOT_SAMPLED))
    assert not observer._traced(observer.start("/r", "rest"))
    everything = RequestObserver(CollectorRegistry(), access_log=False)
    assert everything._traced(everything.start("/r", "rest", traceparent=NOT_SAMPLED))
    half = RequestObserver(CollectorRegistry(), access_log=False, trace_sample=0.5)
    traced = sum(half._traced(half.start("/r", "rest")) for _ in range(4000))
    assert 1800 < traced < 2200  # 0.5 +- 6 sigma


def test_request_ids_are_unique_and_callers_usable_ones_are_kept() -> None:
    observer = RequestObserver(CollectorRegistry(), access_log=False)
    made = {observer.start("/r", "rest").request_id for _ in range(1000)}
    assert len(made) == 1000
    assert observer.start("/r", "rest", request_id="mine-1").request_id == "mine-1"
    assert observer.start("/r", "rest", request_id="x" * 129).request_id != "x" * 129
    assert observer.in_flight == 1002
