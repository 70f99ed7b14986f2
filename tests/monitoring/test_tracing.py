"""RequestTracer against a real OTLP/HTTP receiver: the spans that arrive over the wire."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from shipyard.monitoring.tracing import RequestTracer
from shipyard.serving.types import RequestContext
from tests.monitoring.otlp import OtlpReceiver, ReceivedSpan, receiving
from tests.monitoring.otlp import attributes as _attributes

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with receiving() as receiver:
        yield receiver


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
