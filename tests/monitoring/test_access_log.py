"""The batched access log writes the JSON lines the log formatter would, on the same
stream, every line taken before close() included."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shipyard.logs import JsonFormatter
from shipyard.monitoring.access_log import AccessLog


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """The root logger's one stream handler, as logs.configure_logging sets it up."""
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = [handler]
    try:
        yield captured
    finally:
        root.handlers[:] = saved


def test_every_line_taken_is_written_as_one_json_object(stream: io.StringIO) -> None:
    access = AccessLog(flush_seconds=60, batch=3)  # the third line wakes the writer
    fields = [{"request_id": f"r{i}", "status": 200, "latency_ms": 1.5} for i in range(5)]
    for one in fields:
        access.write(one)
    logging.getLogger("shipyard.test").warning("another line")
    access.close()  # the last two wait for close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    written = [line for line in lines if line["logger"] == "shipyard.access"]
    assert [line["request_id"] for line in written] == ["r0", "r1", "r2", "r3", "r4"]
    for line in written:
        assert line["level"] == "info" and line["message"] == "request"
        assert line["status"] == 200 and line["latency_ms"] == 1.5
        assert line["ts"].endswith("+00:00") and "T" in line["ts"]
    assert [line["message"] for line in lines].count("another line") == 1
