"""uvicorn's HTTP/1.1 protocol with the bounds a slow or hostile client needs.

Hand-written because uvicorn (0.54) has none of them: `timeout_keep_alive` runs only
between requests, so a connection that sends nothing, or half a request line, or
headers one byte at a time, is kept for ever; httptools (llhttp) collects headers with
no size bound (`h11_max_incomplete_event_size` is for the h11 parser only); and after
answering a request whose body has not all arrived (413, 401, 408), uvicorn goes on
reading and dropping that body for as long as the client sends it.

It also sends each response's head and body in one write where it can: uvicorn writes
the head at `http.response.start` and the body at `http.response.body`, two send()
system calls per answer, which a profile of one-row requests put at ~28% of the front
process's CPU (`CorkedTransport`).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from shipyard.errors import HeadersTooLarge, RequestTimeout, ShipyardError, http_error

MAX_HEADER_BYTES = 64 * 1024
"""Request line and headers of one request (nginx allows 32 KiB, h11 16 KiB)."""


class CorkedTransport:
    """A transport that holds a response head until the next write (its body, as a rule)
    or the end of the event loop's turn, whichever comes first, and then writes both at
    once. Holding one write and flushing before any other keeps every byte in order."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif data[:5] == b"HTTP/":  # a response head: its body follows, usually at once
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    """Closes a connection whose request headers are late or too large.

    The rest of a body answered early (413, 401, 408) is held to the same deadline and
    size: read and dropped when it is small (a short body that merely raced the answer,
    the connection kept), the connection closed when it is not."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None
    _header_bytes = 0
    _dropping = False
    """Reading the rest of a body that was answered before it was all in."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        corked = cast(asyncio.Transport, CorkedTransport(transport, self.loop))
        super().connection_made(corked)
        self._expect_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._header_timer is None or self.transport.is_closing():
            return
        self._header_bytes += len(data)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._refuse(HeadersTooLarge(f"request headers are over {MAX_HEADER_BYTES} bytes"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # the next request on a kept-alive connection
            self._expect_headers()

    def on_headers_complete(self) -> None:
        self._headers_done()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        if self._dropping:
            self._dropping = False
            self._headers_done()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # With nothing pipelined, `cycle` is the request just answered.
        answered_early = self.cycle is not None and self.cycle.more_body
        if answered_early and not self.pipeline and not self.transport.is_closing():
            self._dropping = True
            self._expect_headers()
        super().on_response_complete()

    def _expect_headers(self) -> None:
        self._headers_done()
        self._header_bytes = 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _headers_done(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self._refuse(RequestTimeout(f"no request headers within {self.header_timeout:g} s"))

    def _refuse(self, exc: ShipyardError) -> None:
        """Answer the request being received (no app has it yet), then close. Behind an
        answered request (its body being dropped, or pipelined), close only."""
        self._headers_done()
        if not self._dropping and (self.cycle is None or self.cycle.response_complete):
            status = int(exc.status)
            body, _ = http_error(status, exc.message)
            head = b"content-type: application/json\r\nconnection: close\r\n"
            head += b"content-length: %d\r\n\r\n" % len(body)
            self.transport.write(STATUS_LINE[status] + head + body)
        self.transport.close()


def guarded_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn (`http=`), with this header deadline."""
    fields = {"header_timeout": header_timeout}
    return cast(type[asyncio.Protocol], type("GuardedHttpProtocol", (GuardedHttpProtocol,), fields))
