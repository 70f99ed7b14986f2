"""The ASGI entry point: inference POSTs go straight to the data plane.

Everything else (registry, metadata, health, OpenAPI) goes on to FastAPI. Why
not let FastAPI route inference too: a py-spy profile of one-row requests put
about 45% of the server's CPU in FastAPI/Starlette routing, middleware and
dependency solving, against 16% in our own handler (see the issue 4 note and
benchmarks/BENCHMARKS.md). The handlers are the ones the FastAPI routes use
(rest.py), so behaviour and errors are identical on both paths.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from shipyard.errors import PayloadTooLarge, ShipyardError, http_error
from shipyard.monitoring.requests import REQUEST_ID_HEADER, RequestObserver
from shipyard.registry.audit import Actor, acting_as
from shipyard.routing.deployments import PIN_HEADER, RequestHints
from shipyard.security.gate import Gatekeeper
from shipyard.security.keys import Principal
from shipyard.security.policy import PIN_VERSION, Permission, match_rest, rest_rule
from shipyard.serving.types import RequestContext
from shipyard.transports.rest import (
    Answer,
    RestLimits,
    check_declared_length,
    mlflow_invocations,
    v2_infer,
)

log = logging.getLogger("shipyard.api")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# The only request headers the inference handlers look at (ASGI gives them lower-case).
_HEADERS_READ = frozenset({b"content-length", b"content-type", b"inference-header-content-length"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


class ClientGone(Exception):
    """The client hung up before sending its whole body: nobody to answer."""


@dataclass(frozen=True, slots=True)
class InferenceRoute:
    template: str
    """The path template, as named in security/policy.py's rules."""
    name: str | None = None
    """The model or deployment a V2 path names."""
    version: str | None = None
    deployment: str | None = None
    """The deployment /deployments/{deployment}/invocations names."""


_INVOCATIONS = InferenceRoute("/invocations")


def match_inference(path: str) -> InferenceRoute | None:
    """The inference endpoint a POST path is, or None (string checks: no regex, no router)."""
    if path == "/invocations":
        return _INVOCATIONS
    parts = path.split("/")
    if len(parts) == 4 and parts[1] == "deployments" and parts[3] == "invocations" and parts[2]:
        return InferenceRoute("/deployments/{deployment}/invocations", deployment=parts[2])
    # "", "v2", "models", name, "infer"  |  ..., name, "versions", version, "infer"
    if len(parts) < 5 or parts[1] != "v2" or parts[2] != "models" or parts[-1] != "infer":
        return None
    if len(parts) == 5 and parts[3]:
        return InferenceRoute("/v2/models/{name}/infer", name=parts[3])
    if len(parts) == 7 and parts[4] == "versions" and parts[3] and parts[5]:
        template = "/v2/models/{name}/versions/{version}/infer"
        return InferenceRoute(template, name=parts[3], version=parts[5])
    return None


class FrontDoor:
    """Wraps the FastAPI app; `app.state` holds the data plane once lifespan has run."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = match_inference(scope["path"]) if scope["method"] == "POST" else None
        gate: Gatekeeper | None = getattr(self.app.state, "gate", None)
        if route is not None:
            observer: RequestObserver = self.app.state.observer
            context = observer.start(
                route.template,
                "rest",
                _header(scope, REQUEST_ID_HEADER),
                _header(scope, b"traceparent"),
            )
            try:
                await self._gated_infer(route, gate, scope, receive, send, context)
            finally:
                observer.finish(context)
            return
        template, model = self._route_of(scope)
        if gate is None or template is None:
            await self.app(scope, receive, send)  # FastAPI answers 404 or 405 itself
            return
        permission = rest_rule(scope["method"], template)
        if permission is None:  # fail closed: see security/policy.py
            await _send(
                send, 403, _error_answer(403, f"no access rule for {scope['method']} {template}")
            )
            return
        principal = await self._admitted(gate, permission, model, scope, send)
        if principal is None:
            return
        with acting_as(Actor(principal.name, principal.role, _client(scope))):
            await self.app(scope, receive, send)

    async def _gated_infer(
        self,
        route: InferenceRoute,
        gate: Gatekeeper | None,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
    ) -> None:
        # Inference changes nothing, so it needs no actor for the audit trail: only
        # the gate, kept to dictionary lookups (see keys.py) on this hot path.
        pinned = _header(scope, PIN_HEADER)
        if gate is not None and not gate.open:
            called = route.name or route.deployment or self.app.state.rest.default_model
            needed = rest_rule("POST", route.template) or Permission.ADMIN  # no rule: admin
            if pinned is not None:
                needed = PIN_VERSION  # testing a version behind a deployment's back
            if not await self._admitted(gate, needed, called, scope, send, context):
                return
        await self._infer(route, scope, receive, send, context, pinned)

    @staticmethod
    async def _admitted(
        gate: Gatekeeper,
        permission: Permission,
        model: str | None,
        scope: Scope,
        send: Send,
        context: RequestContext | None = None,
    ) -> Principal | None:
        """The caller if the gate lets it through; else the refusal is sent and None returned."""
        try:
            authorization = _header(scope, b"authorization")
            return gate.admit(permission, authorization, model, _client(scope))
        except ShipyardError as exc:
            status = int(exc.status)
            if context is not None:
                context.status, context.error = status, exc.message
            await _send(send, status, _error_answer(status, exc.message), context)
            return None

    @staticmethod
    def _route_of(scope: Scope) -> tuple[str | None, str | None]:
        """The access rule's path template and the model it names, if any."""
        found = match_rest(scope["method"], scope["path"])
        if found is None:
            return None, None  # FastAPI answers 404 or 405 itself
        template, params = found
        return template, params.get("name") if template.startswith("/v2/models/") else None

    async def _infer(
        self,
        route: InferenceRoute,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        pinned: str | None = None,
    ) -> None:
        state = self.app.state
        limits: RestLimits = state.rest
        headers = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope["headers"]
            if key in _HEADERS_READ
        }

        async def read_body() -> bytes:
            return await _read_body(receive, headers.get("content-length"), limits.max_body_bytes)

        hints = RequestHints(scope["headers"], pinned, context)
        status = 200
        try:
            if route.name is not None:
                answer = await v2_infer(
                    state.dataplane, limits, route.name, route.version, headers, read_body, hints
                )
            else:
                answer = await mlflow_invocations(
                    state.dataplane, limits, headers, read_body, route.deployment, hints
                )
        except ClientGone:
            # Nobody to answer; counted and logged as nginx's 499, never sent.
            context.status, context.error = 499, "client closed the request"
            return
        except ShipyardError as exc:
            status = int(exc.status)
            context.error = exc.message
            if status == 500:  # 503s and 504s are load, counted in /metrics, not news
                log.error("POST %s failed: %s", scope["path"], exc.message)
            answer = _error_answer(status, exc.message)
        except Exception:
            # Internals stay in the server log; the client learns only that it failed.
            log.exception("POST %s failed", scope["path"])
            status = 500
            context.error = "internal server error"
            answer = _error_answer(status, "internal server error")
        context.status = status
        context.finished = time.perf_counter()
        await _send(send, status, answer, context)


async def _send(
    send: Send, status: int, answer: Answer, context: RequestContext | None = None
) -> None:
    raw_headers = [
        (b"content-type", answer.media_type.encode()),
        (b"content-length", str(len(answer.body)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in answer.headers.items()]
    if context is not None:
        raw_headers.append((REQUEST_ID_HEADER, context.request_id.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": answer.body})


def _error_answer(status: int, message: str) -> Answer:
    body, headers = http_error(status, message)
    return Answer(body, "application/json", headers)


async def _read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
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
