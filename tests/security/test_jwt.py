"""JWT bearer tokens: shared secret and JWKS over running servers, JWKS-signed tokens directly."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

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


@pytest.fixture(scope="module")
def jwks_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    """A server trusting one RSA key (kid `k1`) from a JWKS file, 2 requests/s per caller;
    yields its URL and the private key."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    folder = tmp_path_factory.mktemp("jwks")
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    (folder / "jwks.json").write_text(json.dumps({"keys": [{**public_jwk, "kid": "k1"}]}))
    env = {
        "SHIPYARD_HOME": str(folder / "home"),
        "SHIPYARD_JWT_JWKS_FILE": str(folder / "jwks.json"),
        "SHIPYARD_RATE_LIMIT": "2",
    }
    with running_server(env) as server:
        yield server.url, private


def _signed(private: Any, sub: str, roles: list[str]) -> str:
    claims = {"sub": sub, "roles": roles, "exp": int(time.time()) + 300}
    return jwt.encode(claims, private, algorithm="RS256", headers={"kid": "k1"})


def test_a_token_whose_algorithm_does_not_fit_its_key_is_refused(
    jwks_server: tuple[str, Any],
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    url, _ = jwks_server
    claims = {"sub": "mallory", "roles": ["admin"], "exp": int(time.time()) + 300}
    # ES256 with the kid of an RSA key: PyJWT raised TypeError here, and the server 500.
    es256 = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), "ES256", {"kid": "k1"})
    hs256 = jwt.encode(claims, "some-secret-of-thirty-two-bytes-or-more", "HS256", {"kid": "k1"})
    with httpx.Client(base_url=url, timeout=30) as http:
        for token in (es256, hs256):
            answer = http.get("/api/models", headers={"authorization": f"Bearer {token}"})
            assert answer.status_code == 401, answer.text
            assert answer.json() == {"error": "the key is unknown, revoked or expired"}


def test_jwt_callers_are_rate_limited_by_subject(jwks_server: tuple[str, Any]) -> None:
    url, private = jwks_server
    ana, bo = _signed(private, "ana", ["viewer"]), _signed(private, "bo", ["viewer"])
    with httpx.Client(base_url=url, timeout=30) as http:

        def call(token: str) -> httpx.Response:
            return http.get("/api/models", headers={"authorization": f"Bearer {token}"})

        answers = [call(ana) for _ in range(10)]
        other = call(bo)  # another subject has a bucket of its own
        again = call(_signed(private, "ana", ["viewer"]))  # a new token, the same subject
    statuses = [a.status_code for a in answers]
    assert statuses[0] == 200 and 429 in statuses, statuses
    limited = answers[statuses.index(429)]
    assert limited.headers["retry-after"] == "1"
    assert "over this caller's rate of 2 requests/s" in limited.json()["error"]
    assert other.status_code == 200
    assert again.status_code == 429


def test_audit_times_without_a_zone_are_utc(jwks_server: tuple[str, Any]) -> None:
    url, private = jwks_server
    admins = (f"Bearer {_signed(private, f'root{n}', ['admin'])}" for n in range(5))

    def admin() -> dict[str, str]:  # one subject per call: the 2/s limit is not tested here
        return {"authorization": next(admins)}

    with httpx.Client(base_url=url, timeout=30) as http:
        made = http.post("/api/keys", json={"role": "viewer", "name": "audited"}, headers=admin())
        assert made.status_code == 201, made.text

        def audit(since: str) -> httpx.Response:
            return http.get("/api/audit", params={"since": since}, headers=admin())

        past, future = audit("2000-01-01"), audit("2999-01-01T00:00")
        aware = audit("2000-01-01T00:00:00+00:00")
        bad = audit("2026-13-45")
    assert past.status_code == 200, past.text
    assert [e["action"] for e in past.json()] == ["key.create"]
    assert past.json() == aware.json()
    assert future.status_code == 200 and future.json() == []
    assert bad.status_code == 422  # not a date at all: refused, saying where
    assert "since" in bad.text
