"""The HTTP gate: authentication, roles and rate limits in front of every REST route.

An ASGI middleware over the web framework: it decides from the one route table
(routes.py) and `security.Gatekeeper`, and records who acts for the audit trail.
The inference fast path (front_door.py) asks it the same question per request.
"""

from __future__ import annotations

from shipyard.errors import ShipyardError
from shipyard.registry.audit import Actor, acting_as
from shipyard.security.gate import Gatekeeper
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

    def admit(self, permission: Permission, model: str | None, scope: Scope) -> Principal:
        """The caller, if the gate lets it through; else 401/403/429 is raised."""
        authorization = header(scope, b"authorization")
        return self.gatekeeper.admit(permission, authorization, model, client_address(scope))

    def refusal(
        self, permission: Permission, model: str | None, scope: Scope
    ) -> tuple[int, str] | None:
        """None when the caller may go on; else the status and message to refuse with."""
        try:
            self.admit(permission, model, scope)
        except ShipyardError as exc:
            return int(exc.status), exc.message
        return None

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
            principal = self.admit(route.permission, model, scope)
        except ShipyardError as exc:
            status = int(exc.status)
            await send_answer(send, status, error_answer(status, exc.message))
            return
        with acting_as(Actor(principal.name, principal.role, client_address(scope))):
            await self.app(scope, receive, send)
