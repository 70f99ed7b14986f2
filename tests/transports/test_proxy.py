"""The primary believes a front's word for the caller's address only on its private
socket (an ASGI scope with no client address); a TCP caller cannot claim another's."""

from __future__ import annotations

import asyncio
from typing import Any

from shipyard.transports.proxy import CLIENT_HEADER, FromFronts


def _seen_client(scope: dict[str, Any]) -> Any:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope.get("client"))

    async def nothing() -> dict[str, Any]:
        return {}

    async def ignore(message: dict[str, Any]) -> None:
        return None

    asyncio.run(FromFronts(app)(scope, nothing, ignore))
    return seen[0]


def _scope(client: tuple[str, int] | None, claimed: bytes | None) -> dict[str, Any]:
    headers = [(b"host", b"example")]
    if claimed is not None:
        headers.append((CLIENT_HEADER, claimed))
    return {"type": "http", "client": client, "headers": headers, "path": "/"}


def test_a_front_names_the_caller_on_the_private_socket() -> None:
    assert _seen_client(_scope(None, b"203.0.113.9:51234")) == ("203.0.113.9", 51234)
    assert _seen_client(_scope(None, b"::1:40000")) == ("::1", 40000)


def test_a_tcp_caller_cannot_claim_another_address() -> None:
    claimed = _scope(("198.51.100.7", 6000), b"203.0.113.9:51234")
    assert _seen_client(claimed) == ("198.51.100.7", 6000)


def test_a_malformed_claim_is_ignored() -> None:
    assert _seen_client(_scope(None, b"no-port")) is None
