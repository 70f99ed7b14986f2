"""Fixtures for batch and stream scoring: a real redis-server for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import IN_CI
from tests.redis_server import redis_available, running_redis


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """`redis://127.0.0.1:PORT` of one real redis-server shared by the session."""
    if not redis_available():
        message = "redis-server not found (Debian/Ubuntu: apt-get install redis-server)"
        if IN_CI:
            pytest.fail(message + ": CI must run the Redis stream leg")
        pytest.skip(message)
    with running_redis() as url:
        yield url
