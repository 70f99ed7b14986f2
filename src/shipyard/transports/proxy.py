"""A front process passes every request it does not answer itself to the primary.

With `--http-processes N`, any front may accept any connection on the shared port. A
front answers inference itself (front_door.py, over the primary's workers); the control
plane, metadata, health, /metrics and the console have one home, the primary process,
reached over its private Unix socket. They are rare next to predictions, so the extra
hop costs little, and one process keeps every piece of state that decides.

The primary learns the caller's address from `x-shipyard-client`, which it believes only
on that socket (`FromFronts`): only this user's processes can open it (0700 folder).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from shipyard.transports.http import ASGIApp, Receive, Scope, Send
from shipyard.transports.http_gate import HttpGate

CLIENT_HEADER = b"x-shipyard-client"
# Headers about one connection, not the request (RFC 9110, 7.6.1).
_HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
        b"trailer", b"transfer-encoding", b"upgrade", CLIENT_HEADER,
    }
)  # fmt: skip


class PrimaryProxy:
    """An ASGI app that forwards each HTTP request to the primary and streams back its
    answer, bodies in both directions streamed, never held whole."""

    def __init__(self, socket_path: str, tls: bool) -> None:
        # The socket is the primary's own and private; with TLS on, it speaks TLS with
        # the server's certificate, whose name is the public host's, not this socket's.
        transport = httpx.AsyncHTTPTransport(uds=socket_path, verify=False)
        scheme = "https" if tls else "http"
        self.client = httpx.AsyncClient(
            transport=transport, base_url=f"{scheme}://primary", timeout=None
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # lifespan is the front's own (server.py); nothing else is served
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_BY_HOP]
        client = scope.get("client")
        if client:
            headers.append((CLIENT_HEADER, f"{client[0]}:{client[1]}".encode("latin-1")))
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        request = self.client.build_request(
            scope["method"], target.decode("latin-1"), headers=headers, content=_body(receive)
        )
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError:
            await _unavailable(send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [
                        (k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP
                    ],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def close(self) -> None:
        await self.client.aclose()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _unavailable(send: Send) -> None:
    body = b'{"error": "the server is restarting; retry shortly"}'
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class PassingGate(HttpGate):
    """A front's gate: the inference fast path asks it who calls (`admit`); every other
    request goes on to the primary untouched, whose own gate decides and logs it once."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class FromFronts:
    """The primary's side: a request that came from a front over the private socket (an
    ASGI scope with no client address) carries its caller's address in a header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("client"):
            for key, value in scope["headers"]:
                if key == CLIENT_HEADER:
                    host, _, port = value.decode("latin-1").rpartition(":")
                    if port.isdigit():
                        scope = {**scope, "client": (host, int(port))}
                    break
        await self.app(scope, receive, send)
