"""Authentication, authorization and rate limits for every request, REST or gRPC.

Transports extract what the gate needs (the permission their route needs, the
`Authorization` value, the model named, if any, the peer's address) and await
`Gatekeeper.check`; it answers with the caller's identity or raises 401/403/429.

Whether the server is open (no authentication) is decided once, when it is built:
only with no active key and no JWT issuer, and `server.check_exposure` refuses that
beyond loopback unless told `--insecure`. A key made while it runs closes it for
good; nothing opens it again, not even revoking or expiring every key.

What a stranger can make the gate do costs little and is bounded: a token seen
before, good or refused, is answered from memory; a new one costs a scrypt, run off
the event loop by `_VERIFIERS` threads with at most `_WAITING` checks queued (past
that, 503 at once); with new tokens, each client address may fail `failure_burst`
times, then `failure_rate` times a second (past that, 429 before any scrypt); refused
logins are counted per address and minute, not written one by one (registry/audit.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NoReturn

from shipyard.errors import Forbidden, Overloaded, RateLimited, Unauthenticated
from shipyard.registry.audit import AuditLog, EventTally
from shipyard.security.keys import PREFIX, KeyStore, Principal
from shipyard.security.limits import Buckets, client_host
from shipyard.security.policy import Permission, allows
from shipyard.security.sessions import Session, SessionSigner
from shipyard.security.tokens import TokenVerifier

log = logging.getLogger("shipyard.security")
OPEN = Principal(name="anonymous (open server)", role="admin")
ANONYMOUS = Principal(name="anonymous", role="")
_CALLER: ContextVar[Principal | None] = ContextVar("shipyard_caller", default=None)
_VERIFIERS = 1 if (os.cpu_count() or 1) <= 4 else 2
"""Threads checking new keys: a scrypt takes ~50 ms of one core and 16 MiB, and the event
loop serving everyone else needs a core of its own."""
_WAITING = 8
"""New keys that may wait for a verifier: a legitimate one waits at most ~9 scrypts."""


@contextmanager
def calling_as(principal: Principal) -> Iterator[None]:
    """Who the request being handled comes from, for code the transport calls into."""
    token = _CALLER.set(principal)
    try:
        yield
    finally:
        _CALLER.reset(token)


def current_caller() -> Principal | None:
    """The admitted caller of the request being handled (None outside a request)."""
    return _CALLER.get()


def caller_models() -> frozenset[str] | None:
    """The models the current caller's key is limited to; None: any (or no caller)."""
    caller = _CALLER.get()
    return caller.models if caller is not None else None


def check_scope(allowed: frozenset[str] | None, *models: str, action: str = "use") -> None:
    """Forbidden unless a key limited to `allowed` models (None: any) may reach `models`."""
    if allowed is None:
        return
    for model in models:
        if model not in allowed:
            raise Forbidden(f"this key may not {action} model {model!r}")


def require_scope(*models: str, action: str = "use") -> None:
    """`check_scope` for the current caller (the one the transport admitted)."""
    check_scope(caller_models(), *models, action=action)


class Gatekeeper:
    def __init__(
        self,
        keys: KeyStore,
        audit: AuditLog,
        default_rate: float | None = None,
        tokens: TokenVerifier | None = None,
        failure_rate: float = 1.0,
        failure_burst: int = 10,
        failure_window: float = 60.0,
    ) -> None:
        self.keys = keys
        self.tokens = tokens
        self.default_rate = default_rate
        self.failure_rate = failure_rate
        self.failure_burst = failure_burst
        self.failures = EventTally(audit, failure_window)
        """Refused logins, written by `flush` (a background task's job)."""
        self.sessions: SessionSigner | None = None
        """Signs and reads console session cookies (set by the composition)."""
        self._open = tokens is None and not keys.any_active()
        self.share = 1.0
        """This process's share of each key's rate: 1 / (live replicas * HTTP processes),
        kept current by the composition (scaling/membership.py `rate_share`)."""
        self._limits = Buckets()
        self._throttles = Buckets()
        self._slots = threading.BoundedSemaphore(_VERIFIERS + _WAITING)
        self._pool = ThreadPoolExecutor(
            _VERIFIERS, thread_name_prefix="shipyard-keys", initializer=_yield_to_serving
        )

    @property
    def open(self) -> bool:
        """Open since the start (see the module's doc) and no key made since."""
        if self._open and self.keys.any_active():
            self._open = False
            log.info("an API key exists now: authentication on until the server stops")
        return self._open

    async def check(
        self,
        permission: Permission,
        authorization: str | None,
        model: str | None = None,
        source: str = "",
    ) -> Principal:
        """The caller, if it may do this; else 401/403/429 (503: too many new keys at once)."""
        if permission is Permission.PUBLIC:
            return OPEN if self.open else ANONYMOUS
        if self.open:
            return OPEN
        token = _bearer(authorization)
        principal = self.keys.recall(token)  # the hot path: dictionary lookups
        if principal is None:
            principal = await self._authenticate(token, source)
        return self._admitted(principal, permission, model)

    async def check_session(
        self, permission: Permission, session: Session, model: str | None = None
    ) -> Principal:
        """The caller behind a console session, if it may do this. A session made from a
        key lasts only while the key does: revoked or expired, the session ends with it."""
        if permission is Permission.PUBLIC or self.open:
            return OPEN if self.open else ANONYMOUS
        principal = self.keys.active(session.key_id) if session.key_id else session.principal()
        if principal is None:
            raise Unauthenticated("the key this session was made from is revoked or expired")
        return self._admitted(principal, permission, model)

    async def sign_in(self, token: str, source: str) -> Principal:
        """Who a key or JWT belongs to, with every check a request's credentials get."""
        principal = self.keys.recall(token)
        if principal is None:
            principal = await self._authenticate(token, source)
        self._limit(principal)
        return principal

    def _admitted(self, principal: Principal, permission: Permission, model: str | None
                  ) -> Principal:  # fmt: skip
        if not allows(principal.role, permission):
            raise Forbidden(f"role {principal.role!r} may not do this (needs {permission.value})")
        if model is not None:
            check_scope(principal.models, model, action="call")
        self._limit(principal)
        return principal

    async def _authenticate(self, token: str, source: str) -> Principal:
        """A token not remembered as good. A good one never counts against its client
        address; a bad one does, and past the address's allowance, 429 comes before any
        costly check."""
        host = client_host(source)
        if self.keys.refused_before(token):  # answered from memory: nothing to throttle
            self._refused(token, host, jwt=False, first=False)
        throttle = self._throttles.get(host, self.failure_rate, self.failure_burst)
        jwt = self.tokens is not None and not token.startswith(f"{PREFIX}_")
        if jwt and self.tokens is not None:
            principal = self.tokens.verify(token)  # a signature check: microseconds
            if principal is not None:
                return principal
            self._throttle(throttle.take(), host)
        else:
            self._throttle(throttle.take(), host)
            principal = await self._verify_key(token)
            if principal is not None:
                throttle.give_back()
                return principal
        self._refused(token, host, jwt, first=True)

    def _throttle(self, wait: float, host: str) -> None:
        if wait:
            self.failures.add("auth.throttled", "", host)
            raise RateLimited(f"too many failed logins from {host}; retry in {math.ceil(wait)} s")

    def _refused(self, token: str, host: str, jwt: bool, first: bool) -> NoReturn:
        # Never the token itself: only the public id of a key that exists.
        key_id = self.keys.known_id(token)
        target = f"key:{key_id}" if key_id else "jwt" if jwt else "key:?"
        if first:
            log.info("refused a key (%s) from %s", target, host)
        self.failures.add("auth.failed", target, host)
        raise Unauthenticated("the key is unknown, revoked or expired")

    async def _verify_key(self, token: str) -> Principal | None:
        if not self.keys.costly(token):
            return self.keys.verify(token)  # answered from memory
        if not self._slots.acquire(blocking=False):
            raise Overloaded("too many new keys are being checked; retry shortly")
        try:
            future = self._pool.submit(self.keys.verify, token)
        except RuntimeError:  # the pool is shut down: the server is stopping
            self._slots.release()
            raise Overloaded("the server is stopping") from None
        # Released when the check ends or is cancelled unstarted, not when the caller
        # stops waiting: abandoned checks still hold their place in the bound.
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future[Principal | None]) -> None:
        self._slots.release()

    def _limit(self, principal: Principal) -> None:
        rate = principal.rate_per_second or self.default_rate
        if rate is None:
            return
        # A key by its id, a JWT caller by its subject (its name is `jwt:<sub>`). Each
        # process enforces its share, so that the fleet together holds the key's rate.
        bucket = self._limits.get(principal.key_id or principal.name, rate * self.share)
        wait = bucket.take()
        if wait:
            whose = "this key's" if principal.key_id else "this caller's"
            raise RateLimited(f"over {whose} rate of {rate:g} requests/s; retry in {wait:.2f} s")

    def flush(self) -> None:
        """Write the refused logins of windows that are over (a background task's job)."""
        self.failures.flush()

    def close(self) -> None:
        """Stop checking keys; write every count and key use still in memory."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.failures.flush(everything=True)
        self.keys.flush_last_used()


def _yield_to_serving() -> None:
    """A verifier thread runs at a lower priority than the event loop, so checking
    strangers' keys never slows answering known callers (Linux, where a thread has its
    own nice value; elsewhere, nothing)."""
    if sys.platform == "linux":
        thread = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(
                os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + 10)
            )


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthenticated("authentication required: send 'Authorization: Bearer <key>'")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("use 'Authorization: Bearer <key>'")
    return token.strip()
