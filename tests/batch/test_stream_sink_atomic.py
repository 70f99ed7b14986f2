"""A stream consumer's results and its acknowledgement land together or not at all.

Redis out of memory (maxmemory with noeviction, as a full Redis is configured in
production) refuses the results' XADD; the MULTI/EXEC that carries them and the XACK is
discarded whole, so no message is acknowledged without its result. Once memory is back,
the same consumer answers every message exactly once (issue 23: the same proof as batch
parts, for stream sinks)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shipyard.config import Settings
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests.batch.test_stream import STREAM_RUN, answers, pending, rows_for, wait_for
from tests.conftest import IN_CI
from tests.fixtures import FEATURES, write_example_csv, write_sklearn_model
from tests.redis_server import RedisServer, redis_available

GROUP = "shipyard-fraud"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[redis.Redis, str]]:
    """A server of its own (this test changes maxmemory), and its URL."""
    if not redis_available():
        message = "redis-server not found (Debian/Ubuntu: apt-get install redis-server)"
        if IN_CI:
            pytest.fail(message + ": CI must run the Redis stream leg")
        pytest.skip(message)
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        yield client, server.url
    finally:
        client.close()
        server.stop()


def test_results_and_acknowledgement_land_together(
    own_redis: tuple[redis.Redis, str], tmp_path: Path
) -> None:
    client, base = own_redis
    folder = tmp_path / "model"
    path = write_sklearn_model(folder)
    registry = Registry.open(Settings(home=folder / "home"))
    try:
        registry.register(path, RegistrationOptions(name="fraud"), write_example_csv(folder))
    finally:
        registry.close()
    env = {**os.environ, "SHIPYARD_HOME": str(folder / "home"), "SHIPYARD_LOG_FORMAT": "json"}

    def consume(*extra: str) -> list[str]:
        return [*STREAM_RUN, "fraud", "--source", f"{base}/in", "--sink", f"{base}/out",
                "--consumer", "c1", "--max-messages", "6", *extra]  # fmt: skip

    log_path = tmp_path / "consumer.log"
    with log_path.open("w") as log:
        consumer = subprocess.Popen(consume(), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Started: its group exists and it waits on XREADGROUP for messages.
        wait_for(
            lambda: consumer.poll() is None and "stream consumer started" in log_path.read_text(),
            "the consumer to start",
        )
        # The messages and "Redis is full" arrive in one transaction: whatever the
        # consumer reads, its results meet a full Redis.
        full = client.pipeline(transaction=True)
        full.config_set("maxmemory-policy", "noeviction")
        rows = rows_for(6)
        for n, row in enumerate(rows):
            full.xadd("in", {**{f: str(v) for f, v in zip(FEATURES, row, strict=True)},
                             "order": f"o{n}"})  # fmt: skip
        full.config_set("maxmemory", "1")
        ids = [str(r) for r in full.execute()[1:-1]]
        assert consumer.wait(timeout=120) != 0
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(timeout=30)
    assert "maxmemory" in log_path.read_text()  # it says why
    assert client.exists("out") == 0  # no result landed...
    assert pending(client, "in", GROUP) == 6  # ...and no message was acknowledged

    client.config_set("maxmemory", "0")
    # The same consumer again: it answers what it had read first (XPENDING), once each.
    done = subprocess.run(consume(), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = answers(client, "out")
    assert sorted(results) == sorted(ids)
    assert all(len(found) == 1 and "predict" in found[0] for found in results.values())
    assert pending(client, "in", GROUP) == 0
