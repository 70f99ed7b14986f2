"""Raw ASGI plumbing shared by the HTTP entry points: one body reader, one way to
send an answer, and the one mapping from exceptions to HTTP error answers."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from shipyard.errors import PayloadTooLarge, RequestTimeout, ShipyardError, http_error

log = logging.getLogger("shipyard.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID_HEADER = b"x-request-id"


@dataclass(slots=True)
class Answer:
    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


class ClientGone(Exception):
    """The client hung up before sending its whole body: nobody to answer."""


def header(scope: Scope, name: bytes) -> str | None:
    """One request header (ASGI gives names in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


def check_declared_length(declared: str | None, limit: int) -> None:
    """413 at once for a Content-Length over `limit`; anything not a count is left to
    the reader, which counts what arrives. ASCII digits only: str.isdigit() also passes
    '²', which int() refuses, and int() refuses more than 4,300 digits."""
    if declared is None or not (declared.isascii() and declared.isdigit()):
        return
    digits = declared.lstrip("0") or "0"
    if len(digits) > len(str(limit)) or int(digits) > limit:
        shown = digits if len(digits) <= 20 else f"a {len(digits)}-digit number of"
        raise PayloadTooLarge(f"request body is {shown} bytes; the limit is {limit}")


class _StallSweep:
    """Body-read deadlines of one event loop, checked by one periodic sweep.

    A timer per message (call_later, then cancel) cost ~4 µs of the loop per inference
    request on uvloop; an entry in a dict costs ~0.2 µs. The price: a stalled read is
    cancelled between `timeout` and `timeout + SWEEP_SECONDS` after it began."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.timer: asyncio.TimerHandle | None = None

    def watch(self, task: asyncio.Task[Any], timeout: float) -> None:
        self.waiting[task] = self.loop.time() + timeout
        if self.timer is None:
            self.timer = self.loop.call_later(SWEEP_SECONDS, self.sweep)

    def sweep(self) -> None:
        now = self.loop.time()
        late = [task for task, deadline in self.waiting.items() if deadline <= now]
        for task in late:
            del self.waiting[task]
            self.expired.add(task)
            task.cancel()
        self.timer = self.loop.call_later(SWEEP_SECONDS, self.sweep) if self.waiting else None


SWEEP_SECONDS = 0.1
"""How often stalled body reads are looked for (their 408 comes up to this much late)."""
_sweeps: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _StallSweep] = (
    weakref.WeakKeyDictionary()
)


async def receive_within(receive: Receive, timeout: float) -> Message:
    """The next message, refused (408) when the client sends nothing for `timeout` seconds."""
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    sweep = _sweeps.get(loop)
    if sweep is None:
        sweep = _sweeps[loop] = _StallSweep(loop)
    sweep.watch(task, timeout)
    try:
        return await receive()
    except asyncio.CancelledError:
        if task not in sweep.expired:  # cancelled by someone else: theirs to handle
            raise
        task.uncancel()
        raise RequestTimeout(f"the request body stalled for over {timeout:g} s") from None
    finally:
        sweep.waiting.pop(task, None)
        sweep.expired.discard(task)


async def read_body(
    receive: Receive, declared: str | None, limit: int, timeout: float | None = None
) -> bytes:
    """The whole body, refused (413) as soon as it is over `limit`, declared or sent, or
    (408) when the client pauses longer than `timeout` seconds between chunks."""
    check_declared_length(declared, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await (receive() if timeout is None else receive_within(receive, timeout))
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def error_answer(status: int, message: str) -> Answer:
    body, headers = http_error(status, message)
    return Answer(body, "application/json", headers)


def failure(exc: BaseException, method: str, path: str) -> tuple[int, str]:
    """The status and client-facing message for an exception a handler raised.

    Internals of unexpected failures stay in the server log; the client learns only
    that it failed. 503s and 504s are load, counted in /metrics, not logged as news.
    """
    if isinstance(exc, ShipyardError):
        if exc.status == 500:
            log.error("%s %s failed: %s", method, path, exc.message)
        return int(exc.status), exc.message
    log.error("%s %s failed", method, path, exc_info=exc)
    return 500, "internal server error"


_MEDIA_TYPES = {
    "application/json": b"application/json",
    "application/octet-stream": b"application/octet-stream",
}


async def send_answer(
    send: Send, status: int, answer: Answer, request_id: str | None = None
) -> None:
    media = _MEDIA_TYPES.get(answer.media_type) or answer.media_type.encode()
    raw_headers = [(b"content-type", media), (b"content-length", b"%d" % len(answer.body))]
    for key, value in answer.headers.items():
        raw_headers.append((key.encode(), value.encode()))
    if request_id is not None:
        raw_headers.append((REQUEST_ID_HEADER, request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": answer.body})
