"""Authentication, authorization and rate limits for every request, REST or gRPC.

Transports extract three things (the permission their route needs, the
`Authorization` value, the model named, if any) and call `Gatekeeper.admit`;
it answers with the caller's identity or raises 401/403/429.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from shipyard.errors import Forbidden, RateLimited, Unauthenticated
from shipyard.registry.audit import AuditLog
from shipyard.security.keys import KeyStore, Principal
from shipyard.security.policy import Permission, allows
from shipyard.security.tokens import TokenVerifier

log = logging.getLogger("shipyard.security")
OPEN = Principal(name="anonymous (open server)", role="admin")
_CALLER: ContextVar[Principal | None] = ContextVar("shipyard_caller", default=None)


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


@dataclass
class TokenBucket:
    """`rate` requests per second, bursts up to one second's worth.

    Written here rather than taken from a library: it is ten lines, lives in
    one process's memory, and must cost nanoseconds per request.
    """

    rate: float
    tokens: float = field(default=0.0)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = max(1.0, self.rate)

    def take(self) -> float:
        """0 if a request may go now, else the seconds until one may."""
        now = time.monotonic()
        capacity = max(1.0, self.rate)
        self.tokens = min(capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class Gatekeeper:
    def __init__(
        self,
        keys: KeyStore,
        audit: AuditLog,
        default_rate: float | None = None,
        tokens: TokenVerifier | None = None,
    ) -> None:
        self.keys = keys
        self.tokens = tokens
        self.audit = audit
        self.default_rate = default_rate
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def open(self) -> bool:
        """No active key and no JWT issuer: the server runs without authentication."""
        return self.tokens is None and not self.keys.any_active()

    async def check(
        self,
        permission: Permission,
        authorization: str | None,
        model: str | None = None,
        source: str = "",
    ) -> Principal:
        """`admit`, for transports on the event loop: what may block runs elsewhere."""
        return self.admit(permission, authorization, model, source)

    def admit(
        self,
        permission: Permission,
        authorization: str | None,
        model: str | None = None,
        source: str = "",
    ) -> Principal:
        if permission is Permission.PUBLIC:
            return OPEN if self.open else Principal(name="anonymous", role="")
        if self.open:
            return OPEN
        principal = self._authenticate(authorization, source)
        if not allows(principal.role, permission):
            raise Forbidden(f"role {principal.role!r} may not do this (needs {permission.value})")
        if model is not None and principal.models is not None and model not in principal.models:
            raise Forbidden(f"this key may not call model {model!r}")
        self._limit(principal)
        return principal

    def _authenticate(self, authorization: str | None, source: str) -> Principal:
        if not authorization:
            raise Unauthenticated("authentication required: send 'Authorization: Bearer <key>'")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("use 'Authorization: Bearer <key>'")
        token = token.strip()
        principal = self.keys.verify(token)
        if principal is None and self.tokens is not None and not token.startswith("sy_"):
            principal = self.tokens.verify(token)
        if principal is None:
            # Never the token itself: only the public id part, if it has the shape of one.
            parts = token.split("_")
            key_id = parts[1] if len(parts) >= 3 and parts[0] == "sy" else "?"
            log.info("refused a key (id %s) from %s", key_id[:32], source or "?")
            self.audit.record("auth.failed", f"key:{key_id[:32]}", source=source)
            raise Unauthenticated("the key is unknown, revoked or expired")
        return principal

    def _limit(self, principal: Principal) -> None:
        rate = principal.rate_per_second or self.default_rate
        if rate is None or principal.key_id is None:
            return
        bucket = self._buckets.get(principal.key_id)
        if bucket is None or bucket.rate != rate:
            bucket = self._buckets[principal.key_id] = TokenBucket(rate)
        wait = bucket.take()
        if wait:
            raise RateLimited(f"over this key's rate of {rate:g} requests/s; retry in {wait:.2f} s")
