"""The ASGI entry point: inference POSTs go straight to the data plane.

Everything else (registry, metadata, health, OpenAPI, /metrics) goes on to the HTTP
gate and FastAPI. Why not let FastAPI route inference too: a py-spy profile of
one-row requests put about 45% of the server's CPU in FastAPI/Starlette routing,
middleware and dependency solving, against 16% in our own handler (see
benchmarks/BENCHMARKS.md). The OpenAPI document still describes these endpoints
(rest.py publishes them).
"""

from __future__ import annotations

import time

from shipyard.errors import ShipyardError
from shipyard.monitoring.requests import RequestObserver
from shipyard.security.policy import LOAD_ON_DEMAND, PIN_VERSION, allows
from shipyard.serving.dataplane import DataPlane
from shipyard.serving.types import PIN_METADATA, RequestContext, RequestHints
from shipyard.transports.http import (
    REQUEST_ID_HEADER,
    ClientGone,
    Receive,
    Scope,
    Send,
    error_answer,
    failure,
    header,
    read_body,
    send_answer,
)
from shipyard.transports.http_gate import HttpGate
from shipyard.transports.rest import (
    INFERENCE,
    VERSION_HEADER,
    RestLimits,
    mlflow_invocations,
    v2_infer,
)
from shipyard.transports.routes import ROUTES, RouteMatch

# The only request headers the inference handlers look at (ASGI gives them lower-case).
_HEADERS_READ = frozenset({b"content-length", b"content-type", b"inference-header-content-length"})
_PIN = PIN_METADATA.encode()
_TRACEPARENT = b"traceparent"
_MATCHES_KEPT = 4096
"""Inference paths whose route match is remembered: a path repeats (one per model and
version), and matching costs ~2 µs against ~0.1 µs for the lookup."""


class FrontDoor:
    """Inference on the fast path; every other request through the gate to the framework."""

    def __init__(
        self,
        gate: HttpGate,
        dataplane: DataPlane,
        observer: RequestObserver,
        limits: RestLimits,
    ) -> None:
        self.gate = gate
        self.dataplane = dataplane
        self.observer = observer
        self.limits = limits
        self._matches: dict[str, RouteMatch | None] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            try:
                route = self._matches[path]
            except KeyError:
                route = self._match(path)
            if route is not None:
                await self._observed_infer(route, scope, receive, send)
                return
        await self.gate(scope, receive, send)

    def _match(self, path: str) -> RouteMatch | None:
        """The inference route a POST path falls under (None: not inference)."""
        route = ROUTES.match("POST", path)
        if route is not None and route.template not in INFERENCE:
            route = None
        if route is not None and len(self._matches) < _MATCHES_KEPT:
            self._matches[path] = route  # only real routes: strangers' paths are not kept
        return route

    async def _observed_infer(
        self, route: RouteMatch, scope: Scope, receive: Receive, send: Send
    ) -> None:
        # One pass over the headers for everything the fast path reads; the first of a
        # repeated header counts, as http.header() has it.
        request_id = traceparent = pinned = None
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            if key in _HEADERS_READ:
                headers[key.decode("latin-1")] = value.decode("latin-1")
            elif key == REQUEST_ID_HEADER and request_id is None:
                request_id = value.decode("latin-1")
            elif key == _TRACEPARENT and traceparent is None:
                traceparent = value.decode("latin-1")
            elif key == _PIN and pinned is None:
                pinned = value.decode("latin-1")
        context = self.observer.start(route.template, "rest", request_id, traceparent)
        try:
            await self._infer(route, scope, receive, send, context, headers, pinned)
        finally:
            self.observer.finish(context)

    async def _infer(
        self,
        route: RouteMatch,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: RequestContext,
        headers: dict[str, str],
        pinned: str | None,
    ) -> None:
        # Inference changes nothing, so it needs no actor for the audit trail: only
        # the gate, kept to dictionary lookups (see keys.py) on this hot path.
        name = route.params.get("name")
        deployment = route.params.get("deployment")
        models, may_deploy = None, True  # an open server's callers may do anything
        if not self.gate.open:
            needed = PIN_VERSION if pinned is not None else route.permission
            try:
                # The model scope is checked by the data plane on what the name resolves
                # to: a deployment's name is not its model's.
                principal = await self.gate.admit(needed, None, scope)
                models, may_deploy = principal.models, allows(principal.role, LOAD_ON_DEMAND)
            except ShipyardError as exc:
                status, message = int(exc.status), exc.message
                context.status, context.error = status, message
                await send_answer(send, status, error_answer(status, message), context.request_id)
                return
        limit, timeout = self.limits.max_body_bytes, self.limits.body_timeout

        async def body() -> bytes:
            return await read_body(receive, headers.get("content-length"), limit, timeout)

        hints = RequestHints(
            pinned, lambda key: header(scope, key.encode("latin-1")), context, models, may_deploy
        )
        status = 200
        try:
            if name is not None:
                answer = await v2_infer(
                    self.dataplane, self.limits, name, route.params.get("version"), headers,
                    body, hints,
                )  # fmt: skip
            else:
                answer = await mlflow_invocations(
                    self.dataplane, self.limits, headers, body, deployment, hints
                )
        except ClientGone:
            # Nobody to answer; counted and logged as nginx's 499, never sent.
            context.status, context.error = 499, "client closed the request"
            return
        except Exception as exc:
            status, message = failure(exc, "POST", scope["path"])
            context.error = message
            answer = error_answer(status, message)
            if context.model is not None and context.version is not None:
                # Which version failed matters most on an error (a canary's 500s).
                answer.headers[VERSION_HEADER] = f"{context.model}:{context.version}"
        context.status = status
        context.finished = time.perf_counter()
        await send_answer(send, status, answer, context.request_id)
