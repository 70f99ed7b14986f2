"""RequestTracer against a real OTLP/HTTP receiver: the spans that arrive over the wire."""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from shipyard.monitoring.tracing import RequestTracer
from shipyard.serving.types import RequestContext

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


@dataclass
class ReceivedSpan:
    span: Span
    resource: dict[str, Any]


class OtlpReceiver:
    """A minimal OTLP/HTTP trace collector: decodes each export and keeps its spans."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        # A short poll interval so that shutdown() at teardown returns promptly.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.arrived:
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(ReceivedSpan(span, resource))
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.spans) >= count, timeout):
                pytest.fail(f"expected {count} spans, received {len(self.spans)}")
            return list(self.spans)


def _value(value: Any) -> Any:
    return getattr(value, value.WhichOneof("value"))


def _attributes(span: Span) -> dict[str, Any]:
    return {a.key: _value(a.value) for a in span.attributes}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    receiver.thread.join(timeout=5)


@pytest.fixture
def tracer(receiver: OtlpReceiver) -> Iterator[RequestTracer]:
    tracer = RequestTracer.from_endpoint(receiver.endpoint, service_name="shipyard-test")
    assert tracer is not None
    yield tracer
    tracer.shutdown()


def _context(**overrides: Any) -> RequestContext:
    """A finished REST infer request: 2 ms decode, 7 ms queue, 40 ms predict, 2 ms encode."""
    values: dict[str, Any] = {
        "request_id": "req-1",
        "started": 1000.0,
        "wall": time.time(),
        "route": "/v2/models/{name}/infer",
        "deployment": "fraud",
        "model": "fraud-model",
        "version": "3",
        "rows": 4,
        "batch_rows": 16,
        "decoded": 1000.002,
        "queued": 1000.003,
        "dispatched": 1000.010,
        "predicted": 1000.050,
        "finished": 1000.052,
    }
    values.update(overrides)
    return RequestContext(**values)


def _export(
    tracer: RequestTracer, receiver: OtlpReceiver, context: RequestContext, count: int
) -> list[ReceivedSpan]:
    tracer.record(context)
    assert tracer.force_flush(10_000)
    return receiver.wait_for(count)


def _by_name(received: list[ReceivedSpan]) -> dict[str, Span]:
    return {r.span.name: r.span for r in received}


def _duration_ms(span: Span) -> float:
    return (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6


def test_no_endpoint_means_no_tracer() -> None:
    assert RequestTracer.from_endpoint(None) is None
    assert RequestTracer.from_endpoint("") is None


def test_every_stage_becomes_a_child_of_the_request_span(
    tracer: RequestTracer, receiver: OtlpReceiver
) -> None:
    context = _context()
    received = _export(tracer, receiver, context, 5)

    assert len(received) == 5
    assert {r.resource["service.name"] for r in received} == {"shipyard-test"}
    spans = _by_name(received)
    root = spans["POST /v2/models/{name}/infer"]
    assert set(spans) == {root.name, "decode", "queue", "predict", "encode"}

    assert root.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert root.parent_span_id == b""
    assert root.status.code != Status.STATUS_CODE_ERROR
    for name in ("decode", "queue", "predict", "encode"):
        assert spans[name].trace_id == root.trace_id
        assert spans[name].parent_span_id == root.span_id

    assert root.start_time_unix_nano == pytest.approx(context.wall * 1e9, abs=1e6)
    expected_ms = {"decode": 2, "queue": 7, "predict": 40, "encode": 2, root.name: 52}
    for name, milliseconds in expected_ms.items():
        assert _duration_ms(spans[name]) == pytest.approx(milliseconds, abs=1)
    # The stages sit where they happened, not just with the right lengths.
    assert spans["predict"].start_time_unix_nano - root.start_time_unix_nano == pytest.approx(
        10e6, abs=1e6
    )

    attributes = _attributes(root)
    assert attributes["shipyard.request_id"] == "req-1"
    assert attributes["shipyard.deployment"] == "fraud"
    assert attributes["shipyard.model"] == "fraud-model"
    assert attributes["shipyard.version"] == "3"
    assert attributes["shipyard.rows"] == 4
    assert attributes["shipyard.batch_rows"] == 16
    assert attributes["shipyard.cached"] is False
    assert attributes["http.response.status_code"] == 200


def test_caller_traceparent_joins_its_trace(tracer: RequestTracer, receiver: OtlpReceiver) -> None:
    context = _context(traceparent=f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
    spans = _by_name(_export(tracer, receiver, context, 5))

    root = spans["POST /v2/models/{name}/infer"]
    assert root.trace_id.hex() == TRACE_ID
    assert root.parent_span_id.hex() == PARENT_SPAN_ID
    assert spans["predict"].trace_id.hex() == TRACE_ID


def test_invalid_traceparent_starts_a_new_trace(
    tracer: RequestTracer, receiver: OtlpReceiver
) -> None:
    spans = _by_name(_export(tracer, receiver, _context(traceparent="not-a-traceparent"), 5))

    root = spans["POST /v2/models/{name}/infer"]
    assert root.parent_span_id == b""
    assert len(root.trace_id) == 16


def test_server_error_marks_the_request_span(tracer: RequestTracer, receiver: OtlpReceiver) -> None:
    context = _context(status=500, error="worker crashed")
    spans = _by_name(_export(tracer, receiver, context, 5))

    root = spans["POST /v2/models/{name}/infer"]
    assert root.status.code == Status.STATUS_CODE_ERROR
    assert root.status.message == "worker crashed"
    assert _attributes(root)["http.response.status_code"] == 500


def test_only_the_stages_that_happened_become_spans(
    tracer: RequestTracer, receiver: OtlpReceiver
) -> None:
    context = _context(decoded=0.0, queued=0.0, dispatched=0.0, predicted=0.0, status=400)
    received = _export(tracer, receiver, context, 1)

    assert [r.span.name for r in received] == ["POST /v2/models/{name}/infer"]
    assert _duration_ms(received[0].span) == pytest.approx(52, abs=1)
    assert received[0].span.status.code != Status.STATUS_CODE_ERROR


def test_grpc_span_is_named_for_the_method(tracer: RequestTracer, receiver: OtlpReceiver) -> None:
    context = _context(transport="grpc", route="/inference.GRPCInferenceService/ModelInfer")
    spans = _by_name(_export(tracer, receiver, context, 5))

    root = spans["inference.GRPCInferenceService/ModelInfer"]
    assert root.kind == Span.SpanKind.SPAN_KIND_SERVER
    assert "http.response.status_code" not in _attributes(root)


def test_a_broken_context_is_logged_once_and_never_raised(
    tracer: RequestTracer, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _context(wall="not a time")
    with caplog.at_level(logging.DEBUG, logger="shipyard.tracing"):
        tracer.record(broken)
        tracer.record(broken)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "shipyard.tracing"
