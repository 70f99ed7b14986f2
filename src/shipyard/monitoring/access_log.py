"""The inference access log in JSON lines, written in batches off the request path.

One line per request through `logging` cost ~11 µs of the front process's CPU, all of it
on the event loop (a LogRecord, the caller lookup, a formatter, a write call per line;
measured in a loop on one core). Here the request path only appends the line's fields to
a deque (~1 µs); a thread formats what gathered with orjson and writes it in one call, every
`flush_seconds` or sooner when `batch` lines wait (~6 µs a line in all). An inference
request hands over its finished RequestContext, and the writer reads the fields from it:
building the dict on the loop cost another ~2 µs a request. The lines are the
ones logs.JsonFormatter writes (ts, level, logger, message, then the fields), on the same
stream, under the same handler lock, so they never interleave with other log lines. A
crash loses at most the last `flush_seconds` of access lines: a log, never a request or a
prediction.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

import orjson

from shipyard.serving.types import RequestContext

ACCESS = logging.getLogger("shipyard.access")


class AccessLog:
    """Buffered JSON access lines (see the module docstring)."""

    def __init__(self, flush_seconds: float = 0.2, batch: int = 512) -> None:
        self.flush_seconds = flush_seconds
        self.batch = batch
        self._lines: deque[tuple[float, dict[str, Any] | RequestContext]] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._writer = threading.Thread(target=self._run, name="shipyard-access-log", daemon=True)
        self._writer.start()

    def write(self, fields: dict[str, Any]) -> None:
        """Take one request's line (cheap: called on the event loop per request)."""
        self._lines.append((time.time(), fields))
        if len(self._lines) >= self.batch:
            self._wake.set()

    def write_request(self, context: RequestContext) -> None:
        """Take one inference request's line, its fields read from `context` later (by the
        writer): the context is finished, nothing writes to it any more."""
        self._lines.append((context.wall + (context.finished - context.started), context))
        if len(self._lines) >= self.batch:
            self._wake.set()

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write every line taken so far."""
        lines = []
        second, prefix = -1, ""
        while self._lines:
            stamp, taken = self._lines.popleft()
            fields = (
                taken
                if isinstance(taken, dict)
                else access_fields(taken, taken.finished - taken.started)
            )
            if int(stamp) != second:  # one datetime per second, not per line
                second = int(stamp)
                prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            millis = min(999, int((stamp - second) * 1000))
            entry = {
                "ts": f"{prefix}.{millis:03d}+00:00",
                "level": "info",
                "logger": ACCESS.name,
                "pid": _PID,
                "message": "request",
                **fields,
            }
            lines.append(orjson.dumps(entry, default=str))
        if lines:
            _write(b"\n".join(lines).decode() + "\n")

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._writer.join(timeout=5)
        self.flush()


_PID = os.getpid()  # a server with several HTTP processes logs from each


def access_fields(context: RequestContext, elapsed: float) -> dict[str, Any]:
    """The access log fields of one inference request."""
    fields: dict[str, Any] = {
        "request_id": context.request_id,
        "route": context.route,
        "transport": context.transport,
        "deployment": context.deployment,
        "model": context.model,
        "version": context.version,
        "status": context.status,
        "latency_ms": round(elapsed * 1000.0, 3),
        "rows": context.rows,
    }
    if context.cached:
        fields["cached"] = True
    if context.cold_start:
        fields["cold_start_ms"] = round(context.cold_start * 1000.0, 3)
    if context.error is not None:
        fields["error"] = context.error
    return fields


def _write(text: str) -> None:
    """Write under the lock of the stream handler every other log line goes through."""
    handler = _stream_handler()
    if handler is None:  # logging set up some other way: let it have the lines
        for line in text.splitlines():
            ACCESS.info(line)
        return
    handler.acquire()  # an RLock: flush() takes it again
    try:
        handler.stream.write(text)
        handler.flush()
    finally:
        handler.release()


def _stream_handler() -> logging.StreamHandler[Any] | None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            return handler
    return None
