"""The PostgreSQL the registry tests use is a real server."""

from __future__ import annotations

import sqlalchemy as sa


def test_postgres_server_answers(postgres_server: str) -> None:
    engine = sa.create_engine(postgres_server)
    try:
        with engine.connect() as connection:
            version = connection.exec_driver_sql("select version()").scalar()
        assert str(version).startswith("PostgreSQL")
    finally:
        engine.dispose()
