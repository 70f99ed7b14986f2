"""Raw ASGI plumbing shared by the HTTP entry points: one body reader, one way to
send an answer, and the one mapping from exceptions to HTTP error answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from shipyard.errors import PayloadTooLarge, ShipyardError, http_error

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
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The whole body, refused (413) as soon as it is over `limit`, declared or sent."""
    check_declared_length(declared, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
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


async def send_answer(
    send: Send, status: int, answer: Answer, request_id: str | None = None
) -> None:
    raw_headers = [
        (b"content-type", answer.media_type.encode()),
        (b"content-length", str(len(answer.body)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in answer.headers.items()]
    if request_id is not None:
        raw_headers.append((REQUEST_ID_HEADER, request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": answer.body})
