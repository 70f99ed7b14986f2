"""JWT bearer tokens: shared secret over a running server, JWKS-signed tokens directly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import jwt

from shipyard.security.tokens import TokenVerifier
from tests.server import running_server

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


def _token(secret: str, **claims: object) -> str:
    return jwt.encode({"exp": int(time.time()) + 300, **claims}, secret, algorithm="HS256")


def test_shared_secret_tokens_authenticate_and_carry_roles(tmp_path: Path) -> None:
    env = {"SHIPYARD_HOME": str(tmp_path / "home"), "SHIPYARD_JWT_SECRET": SECRET}
    viewer = _token(SECRET, sub="ana", roles=["viewer"])
    predictor = _token(SECRET, sub="bo", roles="predictor")
    expired = jwt.encode({"sub": "cy", "roles": ["admin"], "exp": 1}, SECRET, algorithm="HS256")
    forged = _token("not-the-secret-but-just-as-long-as-it", sub="dee", roles=["admin"])
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:

        def status(token: str | None) -> int:
            headers = {"authorization": f"Bearer {token}"} if token else {}
            return http.get("/api/models", headers=headers).status_code

        assert status(None) == 401  # a JWT issuer is configured: the server is not open
        assert status(viewer) == 200
        assert status(predictor) == 403
        assert status(expired) == 401
        assert status(forged) == 401
        log = "".join(server.log)
    assert "running open" not in log
    assert all(t.split(".")[2] not in log for t in (viewer, predictor, expired, forged))


def test_jwks_signed_tokens_verify_by_kid(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**public_jwk, "kid": "k1"}]}))
    verifier = TokenVerifier(jwks_file=tmp_path / "jwks.json", audience="shipyard")
    claims = {"sub": "svc", "roles": ["viewer", "deployer"], "aud": "shipyard",
              "exp": int(time.time()) + 60}  # fmt: skip
    good = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1"})
    principal = verifier.verify(good)
    assert principal is not None and (principal.name, principal.role) == ("jwt:svc", "deployer")
    other_audience = jwt.encode({**claims, "aud": "else"}, private, "RS256", headers={"kid": "k1"})
    assert verifier.verify(other_audience) is None
    unknown_kid = jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k2"})
    assert verifier.verify(unknown_kid) is None
    no_role = jwt.encode({**claims, "roles": ["pilot"]}, private, "RS256", headers={"kid": "k1"})
    assert verifier.verify(no_role) is None
