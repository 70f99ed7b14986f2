"""Shared fixtures: registry databases (SQLite and a real PostgreSQL), settings, registry."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from shipyard.config import Settings
from shipyard.registry.service import Registry
from tests.postgres import postgres_available, running_postgres

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real PostgreSQL server for the whole session; its maintenance URL."""
    if not postgres_available():
        message = "PostgreSQL server binaries (initdb, pg_ctl) not found"
        if IN_CI:
            pytest.fail(message + ": CI must run the PostgreSQL leg")
        pytest.skip(message)
    with running_postgres(tmp_path_factory.mktemp("postgres")) as url:
        yield url


def _fresh_postgres_database(server_url: str) -> str:
    """A new, empty database on the shared server, so tests never see each other's rows."""
    name = f"test_{os.getpid()}_{next(_database_numbers)}"
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine.dispose()
    return sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each registry test runs twice: on a SQLite file and on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    server_url: str = request.getfixturevalue("postgres_server")
    return _fresh_postgres_database(server_url)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=database_url)


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    """Settings on the embedded default (SQLite) for tests that are not about the database."""
    return Settings(home=tmp_path / "home")


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    opened = Registry.open(settings)
    yield opened
    opened.close()
