"""A server that started closed stays closed: revoking or expiring the last key opens nothing.

127.0.0.2 is a loopback address, but not one the exposure guard trusts (only
127.0.0.1, ::1 and localhost are), so these servers stand for ones on a network.
"""

from __future__ import annotations

import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

from shipyard.config import Settings
from shipyard.registry.service import Registry
from shipyard.registry.tables import ApiKeyRow
from shipyard.security.keys import KeyStore
from tests.server import running_server, shipyard_command

HOST = "127.0.0.2"
WAY_BACK = "run `shipyard keys create --role admin` where the registry database is"


def _home_with_one_admin_key(home: Path, expires_in: timedelta | None = None) -> str:
    registry = Registry.open(Settings(home=home))
    try:
        token, _ = KeyStore(registry.sessions).create("admin", "test", expires_in=expires_in)
    finally:
        registry.close()
    return token


def _stays_refused(http: httpx.Client, seconds: float) -> None:
    """An anonymous caller may not make a key, now or after the server re-reads its keys
    (every 2 s): asked again and again for `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = http.post("/api/keys", json={"role": "admin"})
        assert answer.status_code == 401, answer.text


def test_127_0_0_2_is_not_trusted_as_loopback(tmp_path: Path) -> None:
    env = {"SHIPYARD_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    refused = subprocess.run(
        [*shipyard_command(), "server", "--host", HOST, "--port", "0", "--grpc-port", "-1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0
    assert f"refusing to listen on {HOST} without authentication" in refused.stderr


def test_revoking_the_last_key_leaves_the_server_closed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    admin = _home_with_one_admin_key(home)
    key_id = admin.split("_")[1]
    env = {"SHIPYARD_HOME": str(home)}
    with running_server(env, host=HOST) as server, httpx.Client(base_url=server.url) as http:
        assert http.post("/api/keys", json={"role": "admin"}).status_code == 401
        revoked = http.post(
            f"/api/keys/{key_id}/revoke", headers={"authorization": f"Bearer {admin}"}
        )
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None
        assert WAY_BACK in revoked.json()["warning"]
        _stays_refused(http, seconds=3)
        assert http.get("/api/models").status_code == 401
        assert http.get("/v2/health/live").status_code == 200  # public routes stay public
        log = "".join(server.log)
    assert WAY_BACK in log
    assert "anonymous (open server)" not in log


def test_the_last_admin_key_expiring_leaves_the_server_closed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    admin = _home_with_one_admin_key(home, expires_in=timedelta(hours=1))
    env = {"SHIPYARD_HOME": str(home)}
    with running_server(env, host=HOST) as server, httpx.Client(base_url=server.url) as http:
        headers = {"authorization": f"Bearer {admin}"}
        assert http.get("/api/keys", headers=headers).status_code == 200
        # The key expires now, as if an hour had passed (the registry is ours to edit).
        registry = Registry.open(Settings(home=home))
        try:
            with registry.sessions() as session, session.begin():
                past = datetime.now(UTC) - timedelta(seconds=1)
                session.execute(sa.update(ApiKeyRow).values(expires_at=past))
        finally:
            registry.close()
        deadline = time.monotonic() + 30
        while WAY_BACK not in "".join(server.log):  # the server sees it at its next re-read
            assert time.monotonic() < deadline, "no warning in the server log"
            assert http.post("/api/keys", json={"role": "admin"}).status_code == 401
        assert http.get("/api/keys", headers=headers).status_code == 401
        _stays_refused(http, seconds=3)


def test_the_cli_warns_when_it_revokes_the_last_admin_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    admin = _home_with_one_admin_key(home)
    env = {"SHIPYARD_HOME": str(home), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [*shipyard_command(), "keys", "revoke", admin.split("_")[1]],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"key {admin.split('_')[1]} revoked" in done.stdout
    assert WAY_BACK in done.stderr
