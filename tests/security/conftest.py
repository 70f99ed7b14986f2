"""A registry home with one key per role (plus a revoked and an expired one)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from shipyard.config import Settings
from shipyard.registry.service import Registry
from shipyard.registry.tables import ApiKeyRow
from shipyard.security.keys import ROLES, KeyStore


@dataclass
class KeyedHome:
    home: Path
    tokens: dict[str, str]
    """identity -> token: every role, plus `revoked` and `expired`."""

    @property
    def env(self) -> dict[str, str]:
        return {"SHIPYARD_HOME": str(self.home)}


def make_keyed_home(home: Path) -> KeyedHome:
    registry = Registry.open(Settings(home=home))
    try:
        keys = KeyStore(registry.sessions)
        tokens = {role: keys.create(role, created_by="test", name=role)[0] for role in ROLES}
        tokens["revoked"], revoked = keys.create("admin", created_by="test", name="revoked")
        keys.revoke(revoked.id)
        tokens["expired"], expired = keys.create("admin", created_by="test", name="expired")
        with registry.sessions() as session, session.begin():
            session.execute(
                sa.update(ApiKeyRow)
                .where(ApiKeyRow.id == expired.id)
                .values(expires_at=datetime.now(UTC) - timedelta(minutes=1))
            )
    finally:
        registry.close()
    return KeyedHome(home, tokens)


@pytest.fixture(scope="module")
def keyed_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyedHome]:
    yield make_keyed_home(tmp_path_factory.mktemp("keyed") / "home")
