"""A real OTLP/HTTP trace receiver for tests: an HTTP server thread on 127.0.0.1 that decodes
each export, so tests see the spans exactly as a collector would."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span


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
                resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(ReceivedSpan(span, resource))
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        """Every span received, once there are at least `count` (fails after `timeout` s)."""
        return self.wait_until(lambda spans: len(spans) >= count, f"{count} spans", timeout)

    def wait_until(
        self,
        done: Callable[[list[ReceivedSpan]], bool],
        expected: str,
        timeout: float = 10.0,
    ) -> list[ReceivedSpan]:
        """Every span received, once `done(spans)` holds (fails after `timeout` s)."""
        with self.arrived:
            if not self.arrived.wait_for(lambda: done(self.spans), timeout):
                pytest.fail(f"expected {expected}, received {len(self.spans)} spans")
            return list(self.spans)


@contextmanager
def receiving() -> Iterator[OtlpReceiver]:
    """An `OtlpReceiver` serving on a free port until the block ends."""
    receiver = OtlpReceiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        receiver.thread.join(timeout=5)


def value(any_value: Any) -> Any:
    """The Python value of an OTLP `AnyValue`."""
    return getattr(any_value, any_value.WhichOneof("value"))


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: value(a.value) for a in span.attributes}
