"""JWT bearer tokens from an identity provider, checked with PyJWT.

Verified against a shared secret (HS256) or the public keys of a JWKS file
(RS256/ES256), with `exp` required and `aud`/`iss` checked when configured.
The role comes from a roles claim (a list or a string; the strongest known
role wins), the caller's name from `sub`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt

from shipyard.security.keys import ROLES, Principal

ASYMMETRIC = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
_FAMILY = {"RSA": ("RS", "PS"), "EC": ("ES",)}
"""The algorithms a JWKS key's type can check: a token naming another one is refused
before PyJWT sees it (given an RSA key for ES256 it raises TypeError, not a JWT error)."""


class TokenVerifier:
    def __init__(
        self,
        secret: str | None = None,
        jwks_file: Path | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        roles_claim: str = "roles",
    ) -> None:
        self.secret = secret
        self.jwks = jwt.PyJWKSet.from_dict(json.loads(jwks_file.read_text())) if jwks_file else None
        self.audience = audience
        self.issuer = issuer
        self.roles_claim = roles_claim

    def verify(self, token: str) -> Principal | None:
        """The token's principal, or None if it is not valid for us."""
        try:
            key, algorithms = self._key_for(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except (jwt.PyJWTError, KeyError, ValueError):
            return None
        granted = claims.get(self.roles_claim, [])
        granted = [granted] if isinstance(granted, str) else granted
        known = [role for role in ROLES if isinstance(granted, list) and role in granted]
        if not known:
            return None
        return Principal(name=f"jwt:{claims['sub']}", role=known[-1])  # ROLES go weak to strong

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        header = jwt.get_unverified_header(token)
        if header.get("alg") == "HS256" and self.secret:
            return self.secret, ["HS256"]
        if self.jwks is None:
            raise KeyError("no key for this token")
        kid, alg = header.get("kid"), header.get("alg")
        for candidate in self.jwks.keys:
            family = _FAMILY.get(candidate.key_type or "", ())
            usable = [a for a in ASYMMETRIC if a.startswith(family)]
            if (kid is None or candidate.key_id == kid) and alg in usable:
                return candidate.key, usable
        raise KeyError("no JWKS key with this kid for this algorithm")
