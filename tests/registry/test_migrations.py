"""Migrations build the schema from an empty database, and nothing else does."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from shipyard.registry.db import create_engine, current_revision, head_revision, migrate
from shipyard.registry.tables import Base

SOURCE = Path(__file__).resolve().parents[2] / "src" / "shipyard"


def test_migrations_build_the_schema_the_code_expects(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        migrate(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert differences == []
        migrate(engine)  # a second run is a no-op
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_no_code_creates_tables_outside_migrations() -> None:
    offenders = [
        str(path.relative_to(SOURCE))
        for path in SOURCE.rglob("*.py")
        if "create_all(" in path.read_text()
    ]
    assert offenders == []
