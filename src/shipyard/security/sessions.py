"""Console sessions: a signed, expiring cookie naming who signed in, and its CSRF token.

Signing in with an API key (or a JWT) gives an HttpOnly, SameSite=Strict cookie; the
key itself never goes into it. The cookie is a JWT (pyjwt, HS256 over the server's
session secret) holding the principal's name and role, its key id when it came from a
key (so that revoking the key ends the session at the next request), an expiry, and a
random CSRF token the console sends back in `x-csrf-token` with every state-changing
request: a cookie alone never changes anything.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt

from shipyard.security.keys import Principal

COOKIE = "shipyard_session"
CSRF_HEADER = b"x-csrf-token"
_ALGORITHM = "HS256"
_AUDIENCE = "shipyard-console"


@dataclass(frozen=True, slots=True)
class Session:
    name: str
    role: str
    key_id: str | None
    expires: float
    csrf: str

    def principal(self) -> Principal:
        return Principal(name=self.name, role=self.role, key_id=self.key_id)


class SessionSigner:
    def __init__(self, secret: str, lifetime_seconds: float) -> None:
        if len(secret) < 32:
            raise ValueError("the session secret needs at least 32 characters")
        self._secret = secret
        self.lifetime_seconds = lifetime_seconds

    def issue(self, principal: Principal, not_after: float | None = None) -> tuple[str, Session]:
        """A cookie value for `principal`, and what it says (ends at `not_after` if sooner,
        e.g. the JWT it was made from)."""
        expires = time.time() + self.lifetime_seconds
        if not_after is not None:
            expires = min(expires, not_after)
        session = Session(principal.name, principal.role, principal.key_id, expires,
                          secrets.token_urlsafe(24))  # fmt: skip
        claims = {"sub": session.name, "role": session.role, "kid": session.key_id,
                  "exp": int(session.expires), "csrf": session.csrf, "aud": _AUDIENCE}  # fmt: skip
        return jwt.encode(claims, self._secret, algorithm=_ALGORITHM), session

    def verify(self, value: str) -> Session | None:
        """What a cookie says, if this server signed it and it has not expired."""
        try:
            claims = jwt.decode(value, self._secret, algorithms=[_ALGORITHM], audience=_AUDIENCE,
                                options={"require": ["exp", "sub", "role", "csrf"]})  # fmt: skip
        except jwt.PyJWTError:
            return None
        key_id = claims.get("kid")
        return Session(str(claims["sub"]), str(claims["role"]),
                       str(key_id) if key_id else None, float(claims["exp"]),
                       str(claims["csrf"]))  # fmt: skip


def cookie_value(cookie_header: str | None) -> str | None:
    """The session cookie's value in a Cookie header, if any."""
    if not cookie_header:
        return None
    for part in cookie_header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None
