"""OpenTelemetry spans for the stages of an inference request, built after the answer is sent.

The layers only write `perf_counter()` stamps into a `RequestContext`; `RequestTracer.record`
turns a finished context into one SERVER span with a child per stage (decode, queue, predict,
encode), so tracing adds nothing to the hot path. Without an endpoint the server holds `None`
instead of a tracer and pays nothing at all.
"""

from __future__ import annotations

import logging
import time

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from shipyard.serving.types import RequestContext

logger = logging.getLogger("shipyard.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()


class RequestTracer:
    """Exports one trace per request over OTLP/HTTP through a private `TracerProvider`.

    The provider is never installed globally, so a host application's own tracing setup (or
    a second server in the same process) is left alone.
    """

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("shipyard.serving")
        self._warned = False
        self._closed = False

    @classmethod
    def from_endpoint(
        cls,
        endpoint: str | None,
        service_name: str = "shipyard",
        headers: dict[str, str] | None = None,
    ) -> RequestTracer | None:
        """A tracer exporting to `endpoint`, or None when tracing is not configured.

        `endpoint` is the full OTLP/HTTP traces URL, path included, e.g.
        `http://127.0.0.1:4318/v1/traces` (the exporter does not append `/v1/traces`).
        `headers` are sent with every export (for example an API key of a hosted backend).
        """
        if not endpoint:
            return None
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        exporter = OTLPSpanExporter(endpoint=endpoint, headers=headers)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    def record(self, context: RequestContext) -> None:
        """Emit the spans of one finished request; never raises into the server."""
        try:
            self._record(context)
        except Exception:
            if not self._warned:
                self._warned = True
                logger.warning("could not record trace spans; tracing errors", exc_info=True)
            else:
                logger.debug("could not record trace spans", exc_info=True)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every span recorded so far; False if `timeout_millis` ran out first."""
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush pending spans and stop the export thread (on server exit; idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.provider.shutdown()

    def _record(self, context: RequestContext) -> None:
        wall_ns = int(context.wall * 1e9)
        started = context.started

        def ns(stamp: float) -> int:
            return wall_ns + int((stamp - started) * 1e9)

        finished = context.finished or time.perf_counter()
        parent = Context()
        if context.traceparent:
            # An invalid header yields an empty context: the span then starts a new trace.
            parent = _PROPAGATOR.extract({"traceparent": context.traceparent}, context=parent)

        root = self.tracer.start_span(
            _span_name(context),
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_attributes(context),
            start_time=wall_ns,
        )
        if context.status >= 500:
            root.set_status(Status(StatusCode.ERROR, context.error or f"status {context.status}"))
        in_root = trace.set_span_in_context(root, Context())
        encode_from = context.predicted or context.decoded
        stages = (
            ("decode", started if context.decoded else 0.0, context.decoded),
            ("queue", context.queued, context.dispatched),
            ("predict", context.dispatched, context.predicted),
            ("encode", encode_from, context.finished),
        )
        for name, begin, end in stages:
            if begin and end:
                child: Span = self.tracer.start_span(name, context=in_root, start_time=ns(begin))
                child.end(end_time=ns(end))
        root.end(end_time=ns(finished))


def _span_name(context: RequestContext) -> str:
    """`POST /v2/models/{name}/infer` for REST, the method (`package.Service/Method`) for gRPC."""
    if context.transport == "rest":
        method, path = _rest_route(context.route)
        return f"{method} {path}" if path else method
    return context.route.lstrip("/") or context.transport


def _rest_route(route: str) -> tuple[str, str]:
    """The HTTP method and path template of a REST route.

    Routes are path templates and every traced REST request is an inference POST, but a route
    that already names its method (`GET /v2/models/{name}`) keeps it.
    """
    method, _, path = route.partition(" ")
    if path:
        return method, path
    return "POST", route


def _attributes(context: RequestContext) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {
        "shipyard.request_id": context.request_id,
        "shipyard.transport": context.transport,
        "shipyard.rows": context.rows,
        "shipyard.batch_rows": context.batch_rows,
        "shipyard.cached": context.cached,
    }
    # OpenTelemetry drops None-valued attributes with a log line: leave them out instead.
    for key, value in (
        ("shipyard.deployment", context.deployment),
        ("shipyard.model", context.model),
        ("shipyard.version", context.version),
    ):
        if value is not None:
            attributes[key] = value
    if context.transport == "rest":
        method, path = _rest_route(context.route)
        attributes["http.request.method"] = method
        attributes["http.response.status_code"] = context.status
        if path:
            attributes["http.route"] = path
    elif context.transport == "grpc":
        attributes["rpc.system"] = "grpc"
    return attributes
