"""Console sessions against a real server: the cookie's attributes, CSRF on every change a
cookie makes (console or API), revocation ending a session, tampering, the open banner."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from shipyard.config import Settings
from shipyard.registry.service import Registry
from shipyard.security.keys import KeyStore
from tests.polling import eventually
from tests.security.conftest import KeyedHome, make_keyed_home
from tests.server import RunningServer, running_server

_CSRF = re.compile(r'"x-csrf-token": "([^"]+)"')


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> KeyedHome:
    return make_keyed_home(tmp_path_factory.mktemp("console") / "home")


@pytest.fixture(scope="module")
def server(keyed: KeyedHome) -> Iterator[RunningServer]:
    with running_server(keyed.env) as running:
        yield running


def _signed_in(server: RunningServer, token: str) -> tuple[httpx.Client, str]:
    """A client holding a session cookie, and the page's CSRF token."""
    client = httpx.Client(base_url=server.url, follow_redirects=False, timeout=30)
    answer = client.post("/ui/login", data={"key": token})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui"
    page = client.get("/ui")
    assert page.status_code == 200
    match = _CSRF.search(page.text)
    assert match is not None
    return client, match.group(1)


def test_signing_in_sets_a_strict_http_only_cookie_without_the_key(
    server: RunningServer, keyed: KeyedHome
) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as client:
        answer = client.post("/ui/login", data={"key": keyed.tokens["viewer"]})
    cookie = answer.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "max-age", "path"} <= attributes
    assert "samesite=strict" in cookie.lower()
    assert keyed.tokens["viewer"] not in cookie
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert "unsafe-inline" not in answer.headers["content-security-policy"]


def test_a_wrong_key_or_a_predictor_key_cannot_sign_in(
    server: RunningServer, keyed: KeyedHome
) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as client:
        wrong = client.post("/ui/login", data={"key": "sy_000000000000_" + "x" * 30})
        predictor = client.post("/ui/login", data={"key": keyed.tokens["predictor"]})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert predictor.status_code == 403 and "cannot use the console" in predictor.text


def test_a_cookie_changes_nothing_without_the_csrf_token(
    server: RunningServer, keyed: KeyedHome
) -> None:
    client, csrf = _signed_in(server, keyed.tokens["admin"])
    with closing(client):
        forged = client.post("/api/keys", json={"role": "viewer", "name": "forged"})
        assert forged.status_code == 403
        assert "CSRF" in forged.json()["error"]
        wrong = client.post("/api/keys", json={"role": "viewer"}, headers={"x-csrf-token": "x"})
        assert wrong.status_code == 403
        made = client.post(
            "/api/keys",
            json={"role": "viewer", "name": "from-console"},
            headers={"x-csrf-token": csrf},
        )
        assert made.status_code == 201, made.text
        assert client.get("/api/keys").status_code == 200  # reading needs no token


def test_a_viewer_session_is_refused_what_a_viewer_key_is(
    server: RunningServer, keyed: KeyedHome
) -> None:
    client, csrf = _signed_in(server, keyed.tokens["viewer"])
    with closing(client):
        assert client.get("/ui/keys").status_code == 403
        applied = client.post(
            "/ui/deployments/nodeploy/apply", data={"manifest": "x"}, headers={"x-csrf-token": csrf}
        )
        assert applied.status_code == 403
        assert client.get("/api/models").status_code == 200


def test_revoking_the_key_ends_its_sessions(server: RunningServer, keyed: KeyedHome) -> None:
    registry = Registry.open(Settings(home=keyed.home))
    try:
        token, key = KeyStore(registry.sessions).create("deployer", "test", name="short-lived")

        def known() -> bool | None:  # the server re-reads its key table every few seconds
            with httpx.Client(base_url=server.url, timeout=30) as probe:
                return (
                    True
                    if probe.get(
                        "/api/models", headers={"authorization": f"Bearer {token}"}
                    ).status_code
                    == 200
                    else None
                )

        eventually(known, "the new key known to the server")
        client, _ = _signed_in(server, token)
        with closing(client):
            assert client.get("/ui").status_code == 200
            KeyStore(registry.sessions).revoke(key.id)

            def refused() -> int | None:
                status = client.get("/ui").status_code
                return status if status != 200 else None

            # The server re-reads the key table every few seconds (security/keys.py).
            assert eventually(refused, "the revoked key's session refused") == 303
    finally:
        registry.close()


def test_a_tampered_or_foreign_cookie_is_refused(server: RunningServer, keyed: KeyedHome) -> None:
    client, _ = _signed_in(server, keyed.tokens["admin"])
    with closing(client):
        value = client.cookies["shipyard_session"]
        header, claims, signature = value.split(".")
        forged_claims = claims[:-4] + ("AAAA" if not claims.endswith("AAAA") else "BBBB")
        client.cookies.clear()
        client.cookies.set("shipyard_session", f"{header}.{forged_claims}.{signature}")
        assert client.get("/ui").status_code == 303
        assert client.get("/api/models").status_code == 401


def test_an_open_server_says_so_on_every_page(tmp_path: Path) -> None:
    with running_server({"SHIPYARD_HOME": str(tmp_path / "home")}) as server:
        page = httpx.get(f"{server.url}/ui", timeout=30)
    assert page.status_code == 200
    assert "Unauthenticated" in page.text and 'role="alert"' in page.text
