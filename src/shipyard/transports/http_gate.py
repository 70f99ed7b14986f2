"""The HTTP gate: authentication, roles and rate limits in front of every REST route.

An ASGI middleware over the web framework: it decides from the one route table
(routes.py) and `security.Gatekeeper`, and records who acts for the audit trail.
The inference fast path (front_door.py) asks it the same question per request.
"""

from __future__ import annotations

from shipyard.errors import ShipyardError
from shipyard.registry.audit import Actor, acting_as
from shipyard.security.gate import Gatekeeper, calling_as
from shipyard.security.keys import Principal
from shipyard.security.policy import Permission
from shipyard.transports.http import (
    ASGIApp,
    Receive,
    Scope,
    Send,
    client_address,
    error_answer,
    header,
    send_answer,
)
from shipyard.transports.routes import ROUTES


class HttpGate:
    def __init__(self, app: ASGIApp, gatekeeper: Gatekeeper) -> None:
        self.app = app
        self.gatekeeper = gatekeeper

    @property
    def open(self) -> bool:
        return self.gatekeeper.open

    async def admit(self, permission: Permission, model: str | None, scope: Scope) -> Principal:
        """The caller, if the gate lets it through; else 401/403/429 is raised."""
        authorization = header(scope, b"authorization")
        source = client_address(scope)
        return await self.gatekeeper.check(permission, authorization, model, source)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = ROUTES.match(scope["method"], scope["path"])
        if route is None:
            await self.app(scope, receive, send)  # the framework answers 404 or 405 itself
            return
        model = route.params.get("name") if route.template.startswith("/v2/models/") else None
        try:
            principal = await self.admit(route.permission, model, scope)
        except ShipyardError as exc:
            status = int(exc.status)
            await send_answer(send, status, error_answer(status, exc.message))
            return
        actor = Actor(principal.name, principal.role, client_address(scope))
        with acting_as(actor), calling_as(principal):
            await self.app(scope, receive, send)
