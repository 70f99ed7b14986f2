"""Bounds on the request bodies the web framework reads: how big, and how slow.

The inference fast path reads its own bodies (http.read_body, under
`max_body_bytes`); every other route comes through here. A declared Content-Length
over the limit is refused before a byte of the body is read; a chunked or lying body
is counted as it streams and refused as soon as it crosses the limit (413); a body
that pauses too long between chunks is refused too (408). Model uploads have their
own, larger limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from shipyard.errors import PayloadTooLarge, ShipyardError
from shipyard.transports.http import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    check_declared_length,
    error_answer,
    header,
    receive_within,
    send_answer,
)
from shipyard.transports.routes import ROUTES

UPLOAD = "/api/models/{name}/versions"
"""The one route that takes model files (POST): it gets `max_upload_bytes`."""


@dataclass(frozen=True, slots=True)
class BodyLimits:
    max_bytes: int
    max_upload_bytes: int
    timeout: float
    """Longest pause between two chunks of a body, in seconds (408 after)."""


class BodyLimit:
    """Refuses a body over its route's limit (413) or stalled between chunks (408)."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_upload_bytes if _is_upload(scope) else self.limits.max_bytes
        try:
            check_declared_length(header(scope, b"content-length"), limit)
        except PayloadTooLarge as exc:
            await _refuse(send, exc)
            return
        body = _CountedBody(receive, send, limit, self.limits.timeout)
        try:
            await self.app(scope, body.receive, body.send)
        except Exception:
            if body.refusal is None:
                raise
        if body.refusal is not None and not body.answered:
            await _refuse(send, body.refusal)


class _CountedBody:
    """The app's view of one request: its body counted and timed, and once a limit is
    crossed, the app's own answer (FastAPI calls any failure while parsing a 400)
    dropped for ours."""

    def __init__(self, receive: Receive, send: Send, limit: int, timeout: float) -> None:
        self._receive = receive
        self._send = send
        self.limit = limit
        self.timeout = timeout
        self.size = 0
        self.complete = False
        self.answered = False
        self.refusal: ShipyardError | None = None

    async def receive(self) -> Message:
        if self.complete:  # the body is in; the app waits for a disconnect, no deadline
            return await self._receive()
        try:
            message = await receive_within(self._receive, self.timeout)
        except ShipyardError as exc:
            self.refusal = exc
            raise
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            if self.size > self.limit:
                self.refusal = PayloadTooLarge(
                    f"request body is over the limit of {self.limit} bytes"
                )
                raise self.refusal
            self.complete = not message.get("more_body", False)
        return message

    async def send(self, message: Message) -> None:
        if self.refusal is not None:
            return
        if message["type"] == "http.response.start":
            self.answered = True
        await self._send(message)


def _is_upload(scope: Scope) -> bool:
    if scope["method"] != "POST":
        return False
    route = ROUTES.match("POST", scope["path"])
    return route is not None and route.template == UPLOAD


async def _refuse(send: Send, exc: ShipyardError) -> None:
    status = int(exc.status)
    answer = error_answer(status, exc.message)
    # The rest of the body is not wanted: nothing more is read from this connection.
    answer.headers["connection"] = "close"
    await send_answer(send, status, answer)
