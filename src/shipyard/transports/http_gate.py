"""The HTTP gate: authentication, roles and rate limits in front of every REST route.

An ASGI middleware over the web framework: it decides from the one route table
(routes.py) and `security.Gatekeeper`, and records who acts for the audit trail.
The inference fast path (front_door.py) asks it the same question per request.
Each request it passes or refuses leaves one access log line (inference has its own,
monitoring/requests.py).
"""

from __future__ import annotations

import hmac
import logging
import time

from shipyard.errors import Forbidden, ShipyardError, Unauthenticated
from shipyard.registry.audit import Actor, acting_as
from shipyard.security.gate import Gatekeeper, calling_as
from shipyard.security.keys import Principal
from shipyard.security.policy import Permission
from shipyard.security.sessions import CSRF_HEADER, cookie_value
from shipyard.transports.http import (
    Answer,
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    client_address,
    error_answer,
    header,
    send_answer,
)
from shipyard.transports.routes import ROUTES, RouteMatch

ACCESS = logging.getLogger("shipyard.access")
_SAFE = ("GET", "HEAD", "OPTIONS")
_TO_SIGN_IN = {"location": "/ui/login"}
_MODEL_NAMED = ("/api/models/{name}", "/v2/repository/models/{name}/", "/ui/models/{name}")
"""Routes whose `{name}` is a model's: the gate holds a key's model scope on them. A
name under /v2/models/ may be a deployment's, so the data plane checks the model it
resolves to instead."""


class HttpGate:
    def __init__(self, app: ASGIApp, gatekeeper: Gatekeeper) -> None:
        self.app = app
        self.gatekeeper = gatekeeper

    @property
    def open(self) -> bool:
        return self.gatekeeper.open

    async def admit(self, permission: Permission, model: str | None, scope: Scope) -> Principal:
        """The caller, if the gate lets it through; else 401/403/429 is raised. Without an
        Authorization header, a console session cookie may stand for one; then a request
        that changes anything must carry the session's CSRF token too."""
        authorization = header(scope, b"authorization")
        sessions = self.gatekeeper.sessions
        if authorization is None and sessions is not None and not self.open:
            cookie = cookie_value(header(scope, b"cookie"))
            if cookie is not None and permission is not Permission.PUBLIC:
                session = sessions.verify(cookie)
                if session is None:
                    raise Unauthenticated("the console session ended: sign in again")
                if scope["method"] not in _SAFE and not hmac.compare_digest(
                    header(scope, CSRF_HEADER) or "", session.csrf
                ):
                    raise Forbidden("a console request that changes something needs the "
                                    "session's CSRF token (x-csrf-token)")  # fmt: skip
                scope["shipyard.session"] = session
                return await self.gatekeeper.check_session(permission, session, model)
        source = client_address(scope)
        return await self.gatekeeper.check(permission, authorization, model, source)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        route = ROUTES.match(scope["method"], scope["path"])
        caller: Principal | None = None
        status = 500  # unless an answer starts

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            if route is None:
                await self.app(scope, receive, observed)  # the framework answers 404 or 405
                return
            model = route.params.get("name") if route.template.startswith(_MODEL_NAMED) else None
            try:
                caller = await self.admit(route.permission, model, scope)
            except ShipyardError as exc:
                status = int(exc.status)
                if status == 401 and route.template.startswith("/ui") and scope["method"] == "GET":
                    status = 303  # a person at the console: to the sign-in page
                    await send_answer(send, status, Answer(b"", "text/plain", _TO_SIGN_IN))
                    return
                await send_answer(send, status, error_answer(status, exc.message))
                return
            actor = Actor(caller.name, caller.role, client_address(scope))
            with acting_as(actor), calling_as(caller):
                await self.app(scope, receive, observed)
        finally:
            log_access(scope, route, caller, status, time.perf_counter() - started)


def log_access(
    scope: Scope, route: RouteMatch | None, caller: Principal | None, status: int, elapsed: float
) -> None:
    """The access log line of one control-plane request: who, which route (its template,
    never the path, query or body), status and latency."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    fields = {
        "plane": "control",
        "who": caller.name if caller is not None else None,
        "role": caller.role if caller is not None else None,
        "source": client_address(scope),
        "method": scope["method"],
        "route": route.template if route is not None else None,
        "status": status,
        "latency_ms": round(elapsed * 1000.0, 3),
    }
    ACCESS.info("request", extra={"fields": fields})
