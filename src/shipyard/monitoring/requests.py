"""What happens to each inference request once answered: metrics, access log, trace.

Transports open a RequestContext when a request arrives (`start`) and hand it
back once the answer is sent (`finish`); everything here reads the stamps the
layers wrote, after the client has its answer.
"""

from __future__ import annotations

import logging
import os
import random
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shipyard.config import DEFAULT_TRACE_SAMPLE
from shipyard.monitoring.access_log import ACCESS, AccessLog, access_fields
from shipyard.monitoring.tracing import RequestTracer
from shipyard.serving.types import RequestContext

MAX_REQUEST_ID = 128
# Inference latencies span ~0.3 ms (cache hit) to seconds (a big batch, a deadline).
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1,
    0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
STAGES = ("queue", "batch_wait", "predict")


def _usable_request_id(value: str | None) -> bool:
    """A caller's id is echoed into logs and headers: short, printable ASCII only."""
    return (
        value is not None
        and 0 < len(value) <= MAX_REQUEST_ID
        and value.isascii()
        and value.isprintable()
    )


class RequestObserver:
    def __init__(
        self,
        registry: CollectorRegistry,
        tracer: RequestTracer | None = None,
        access_log: bool = True,
        trace_sample: float = DEFAULT_TRACE_SAMPLE,
        json_lines: bool = True,
    ) -> None:
        self.tracer = tracer
        self.trace_sample = trace_sample
        self.access_log = access_log
        # JSON lines are batched off the request path; text logs are for people reading
        # a terminal, and keep one logging call per request.
        self.batched = AccessLog() if access_log and json_lines else None
        self.in_flight = 0
        labels = ("deployment", "model", "version")
        self._requests = Counter(
            "shipyard_requests",
            "Inference requests answered, by status code.",
            (*labels, "status"),
            registry=registry,
        )
        self._latency = Histogram(
            "shipyard_request_duration_seconds",
            "Inference request latency, arrival to answer sent.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._stages = Histogram(
            "shipyard_stage_duration_seconds",
            "Time in each stage: queue (waiting for a worker), batch_wait (held for a "
            "fuller batch), predict (the worker's round trip).",
            ("model", "version", "stage"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        Gauge(
            "shipyard_inflight_requests",
            "Inference requests received and not yet answered.",
            registry=registry,
        ).set_function(lambda: self.in_flight)
        # Label lookups take a lock in prometheus-client; children are cached here.
        self._children: dict[tuple[str, str, str, int], tuple[Counter, Histogram]] = {}
        self._stage_children: dict[tuple[str, str], tuple[Histogram, Histogram, Histogram]] = {}

    def start(
        self,
        route: str,
        transport: str,
        request_id: str | None = None,
        traceparent: str | None = None,
    ) -> RequestContext:
        self.in_flight += 1
        if not _usable_request_id(request_id):
            # 128 random bits: an id names a prediction (feedback joins on it), so it must
            # not be guessable. ~0.3 µs, against ~0.15 µs for the counter it replaced.
            request_id = os.urandom(16).hex()
        return RequestContext(
            request_id=request_id,  # type: ignore[arg-type]  # checked above
            started=time.perf_counter(),
            wall=time.time(),
            transport=transport,
            route=route,
            traceparent=traceparent,
        )

    def finish(self, context: RequestContext) -> None:
        self.in_flight -= 1
        if not context.finished:
            context.finished = time.perf_counter()
        elapsed = context.finished - context.started
        deployment = context.deployment or ""
        model = context.model or ""
        version = context.version or ""
        key = (deployment, model, version, context.status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self._requests.labels(deployment, model, version, str(context.status)),
                self._latency.labels(deployment, model, version),
            )
        children[0].inc()
        children[1].observe(elapsed)
        if context.dispatched:
            stages = self._stage_children.get((model, version))
            if stages is None:
                queue, batch_wait, predict = (
                    self._stages.labels(model, version, s) for s in STAGES
                )
                stages = self._stage_children[(model, version)] = (queue, batch_wait, predict)
            stages[0].observe(context.dispatched - context.queued - context.batch_wait)
            stages[1].observe(context.batch_wait)
            if context.predicted:
                stages[2].observe(context.predicted - context.dispatched)
        if self.access_log and ACCESS.isEnabledFor(logging.INFO):
            if self.batched is not None:
                self.batched.write_request(context)
            else:
                ACCESS.info("request", extra={"fields": access_fields(context, elapsed)})
        if self.tracer is not None and self._traced(context):
            self.tracer.record(context)

    def _traced(self, context: RequestContext) -> bool:
        """Every request at rate 1; else a random share, plus those whose caller's trace
        is sampled (W3C traceparent flags ending in 1), so its trace stays whole."""
        if self.trace_sample >= 1.0:
            return True
        parent = context.traceparent
        if parent is not None and len(parent) == 55 and parent.endswith("1"):
            return True
        return random.random() < self.trace_sample

    def close(self) -> None:
        if self.batched is not None:
            self.batched.close()
        if self.tracer is not None:
            self.tracer.shutdown()
