"""`shipyard stream run` against a real redis-server: one result per message, across crashes.

Consumers run as real CLI subprocesses; tests wait by polling Redis (or the consumer's
log) against a deadline, never by sleeping a guessed time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import joblib
import numpy as np
import pytest
import redis

from shipyard.batch.stream import backoff_delay
from shipyard.batch.stream_format import parse_stream_uri, read_message, stream_options
from shipyard.config import Settings
from shipyard.errors import InvalidInput
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests.fixtures import FEATURES, write_example_csv, write_sklearn_model
from tests.redis_server import RedisServer, free_port
from tests.server import shipyard_command

STREAM_RUN = [*shipyard_command(), "stream", "run"]
T = TypeVar("T")


# --- pure parts: no Redis needed ---------------------------------------------------------


def test_stream_uris_name_server_database_and_stream() -> None:
    plain = parse_stream_uri("redis://localhost:6380/orders")
    assert (plain.host, plain.port, plain.db, plain.stream, plain.tls) == (
        "localhost", 6380, 0, "orders", False,
    )  # fmt: skip
    full = parse_stream_uri("rediss://app:s%40cret@cache.internal/3/scores%2Fv1")
    assert (full.username, full.password, full.port, full.db, full.stream, full.tls) == (
        "app", "s@cret", 6379, 3, "scores/v1", True,
    )  # fmt: skip
    assert "s@cret" not in str(full) and "s@cret" not in repr(full)
    assert parse_stream_uri("redis://h:1/0/a").server == parse_stream_uri("redis://h:1/0/b").server
    assert parse_stream_uri("redis://h:1/0/a").server != parse_stream_uri("redis://h:1/1/a").server


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("http://localhost:6379/orders", "is not a redis:// or rediss:// URI"),
        ("redis://localhost:6379", "must end in /STREAM or /DB/STREAM"),
        ("redis://localhost:6379/x/orders", "must end in /STREAM or /DB/STREAM"),
        ("redis://localhost:6379/0/", "names no stream"),
        ("redis://localhost:port/orders", "has an invalid port"),
        ("redis://:pw@/orders", "names no host"),
        ("redis://localhost/orders?ssl=1", "has a ?query"),
    ],
)
def test_malformed_stream_uris_are_refused_clearly(uri: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_stream_uri(uri, "--source")
    assert problem in refused.value.message
    assert refused.value.message.startswith("--source ")
    assert "redis://[user:password@]host:port[/DB]/STREAM" in refused.value.message


def test_passwords_never_appear_in_uri_errors() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_stream_uri("redis://app:hunter2@cache:6379/1/2/orders")
    assert "hunter2" not in refused.value.message and "app:***@" in refused.value.message


def test_messages_are_fields_or_one_json_object() -> None:
    fields = read_message(b"1-0", {b"f0": b"0.5", b"order": b"A7"}, "order")
    assert (fields.id, fields.columns, fields.key, fields.problem) == (
        "1-0", {"f0": "0.5"}, "A7", None,
    )  # fmt: skip
    document = json.dumps({"f0": 1e-7, "f1": True, "f2": None, "order": 7})
    parsed = read_message(b"1-1", {b"json": document.encode()}, "order")
    assert parsed.columns == {"f0": "1e-07", "f1": "true", "f2": None}
    assert parsed.key == "7"
    assert "not JSON" in (read_message(b"1-2", {b"json": b"{"}, None).problem or "")
    assert "object" in (read_message(b"1-3", {b"json": b"[1]"}, None).problem or "")
    nested = read_message(b"1-4", {b"json": b'{"f0": [1, 2]}'}, None)
    assert nested.problem == "f0: nested values are not supported"
    assert "UTF-8" in (read_message(b"1-5", {b"f0": b"\xff"}, None).problem or "")


def test_options_problems_name_the_cli_option() -> None:
    address = parse_stream_uri("redis://h:1/s")
    with pytest.raises(InvalidInput, match="--batch-size: Input should be greater"):
        stream_options(source=address, sink=address, batch_size=0)
    with pytest.raises(InvalidInput, match="--start-id"):
        stream_options(source=address, sink=address, start_id="latest")
    with pytest.raises(InvalidInput, match="--id-field cannot be 'source_id'"):
        stream_options(source=address, sink=address, id_field="source_id")


def test_reconnect_backoff_doubles_up_to_a_cap() -> None:
    delays = [backoff_delay(attempt) for attempt in range(12)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert max(delays) == 5.0 and delays == sorted(delays)
    assert backoff_delay(10_000) == 5.0


# --- against a real redis-server and the real CLI ----------------------------------------


@dataclass(frozen=True)
class Model:
    env: dict[str, str]
    path: Path

    def expected(self, rows: list[list[Any]]) -> tuple[list[int], list[list[float]]]:
        """Labels and probabilities for these rows, predicted in-process by the same estimator."""
        estimator = joblib.load(self.path)
        features = np.array(rows, dtype=np.float64)
        return estimator.predict(features).tolist(), estimator.predict_proba(features).tolist()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """`fraud`, a logistic regression on f0..f3, registered in a fresh home."""
    folder = tmp_path_factory.mktemp("stream-model")
    path = write_sklearn_model(folder)
    registry = Registry.open(Settings(home=folder / "home"))
    try:
        registry.register(path, RegistrationOptions(name="fraud"), write_example_csv(folder))
    finally:
        registry.close()
    env = {"SHIPYARD_HOME": str(folder / "home"), "SHIPYARD_LOG_FORMAT": "json"}
    return Model(env=env, path=path)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
    yield connection
    connection.close()


@pytest.fixture
def keys() -> Callable[[str], str]:
    """Stream names private to one test, on the session's shared server."""
    prefix = uuid.uuid4().hex[:8]
    return lambda name: f"{prefix}-{name}"


def rows_for(count: int, seed: int = 1) -> list[list[Any]]:
    rows: list[list[Any]] = np.random.default_rng(seed).normal(size=(count, len(FEATURES))).tolist()
    return rows


def push(client: redis.Redis, stream: str, rows: list[list[Any]], first: int = 0) -> list[str]:
    """One message per row, alternating per-field and `json` messages; ids in order."""
    pipe = client.pipeline(transaction=False)
    for n, row in enumerate(rows, start=first):
        values = dict(zip(FEATURES, row, strict=True))
        if n % 2:
            pipe.xadd(stream, {"json": json.dumps({**values, "order": f"o{n}"})})
        else:
            pipe.xadd(stream, {**{k: str(v) for k, v in values.items()}, "order": f"o{n}"})
    return [str(entry_id) for entry_id in pipe.execute()]


def answers(client: redis.Redis, *streams: str) -> dict[str, list[dict[str, str]]]:
    """Every result and error written so far, by the source message id it answers."""
    found: dict[str, list[dict[str, str]]] = {}
    for stream in streams:
        entries: Any = client.xrange(stream)  # decode_responses: all text
        for _, fields in entries:
            found.setdefault(fields["source_id"], []).append(fields)
    return found


def pending(client: redis.Redis, stream: str, group: str = "shipyard-fraud") -> int:
    return int(client.xpending(stream, group)["pending"])


def wait_for(condition: Callable[[], T], what: str, timeout: float = 60) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)  # the poll interval; the condition is what is waited for


def summary_of(log: str) -> dict[str, Any]:
    """The fields of the consumer's final log line."""
    for line in log.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry["message"] == "stream consumer stopped":
                return dict(entry)
    raise AssertionError("no summary in the consumer's log:\n" + log)


def run_consumer(model: Model, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STREAM_RUN, "fraud", *args],
        env={**os.environ, **model.env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class Consumer:
    process: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def alive(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"consumer exited with {self.process.returncode}:\n{self.log()}")
        return True

    def stop(self) -> int:
        """SIGTERM: finish the batch in hand, then exit."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@contextmanager
def running_consumer(model: Model, log_path: Path, *args: str) -> Iterator[Consumer]:
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*STREAM_RUN, "fraud", *args],
            env={**os.environ, **model.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        yield Consumer(process, log_path)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@dataclass(frozen=True)
class Drained:
    rows: list[list[Any]]
    ids: list[str]
    results: dict[str, list[dict[str, str]]]
    """From the sink and the errors sink together."""
    in_errors_sink: int
    pending: int
    summary: dict[str, Any]


@pytest.fixture(scope="module")
def drained(model: Model, redis_url: str) -> Drained:
    """1000 messages (some unreadable) scored once with --batch-size 100: two tests read it."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    source, sink, errors = (f"{uuid.uuid4().hex[:8]}-{name}" for name in ("in", "out", "errors"))
    rows = rows_for(1000)
    for n in range(0, 1000, 37):
        rows[n][1] = "abc"  # a value the signature cannot read as a float
    ids = push(client, source, rows)
    done = run_consumer(
        model,
        "--source", f"{redis_url}/{source}",
        "--sink", f"{redis_url}/{sink}",
        # Another database: the errors go by the plain (non-transactional) path.
        "--errors-sink", f"{redis_url}/1/{errors}",
        "--id-field", "order",
        "--outputs", "predict,predict_proba",
        "--batch-size", "100",
        "--max-messages", "1000",
        "--idle-exit", "20",  # a safety net; --max-messages ends the run
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = answers(client, sink)
    in_db1 = redis.Redis.from_url(f"{redis_url}/1", decode_responses=True)
    errors_found = answers(in_db1, errors)
    for source_id, found in errors_found.items():
        results.setdefault(source_id, []).extend(found)
    drained = Drained(
        rows, ids, results, len(errors_found), pending(client, source), summary_of(done.stderr)
    )
    in_db1.close()
    client.close()
    return drained


def test_every_message_gets_exactly_one_result(drained: Drained, model: Model) -> None:
    assert sorted(drained.results) == sorted(drained.ids)
    assert all(len(found) == 1 for found in drained.results.values())
    assert drained.pending == 0

    unreadable = set(range(0, 1000, 37))
    good = [n for n in range(1000) if n not in unreadable]
    expected = model.expected([drained.rows[n] for n in good])
    for n, label, (p0, p1) in zip(good, *expected, strict=True):
        (result,) = drained.results[drained.ids[n]]
        assert result.keys() == {
            "source_id", "order", "model", "version", "predict", "predict_proba_0",
            "predict_proba_1",
        }  # fmt: skip
        assert (result["order"], result["model"], result["version"]) == (f"o{n}", "fraud", "1")
        assert result["predict"] == str(label)
        # Floats are written in full (shortest round-trip text); batch composition may move
        # the last bit of a BLAS dot product, hence not ==.
        assert float(result["predict_proba_0"]) == pytest.approx(p0, rel=1e-12, abs=1e-15)
        assert float(result["predict_proba_1"]) == pytest.approx(p1, rel=1e-12, abs=1e-15)
    for n in unreadable:
        (result,) = drained.results[drained.ids[n]]
        assert result["error"] == "f1: cannot read 'abc' as double"
        assert "predict" not in result and result["order"] == f"o{n}"
    assert drained.in_errors_sink == 28  # and not one in the sink
    summary = drained.summary
    assert (summary["messages"], summary["results"], summary["errors"]) == (1000, 972, 28)


def test_messages_are_scored_in_micro_batches(drained: Drained) -> None:
    # 1000 messages waiting and --batch-size 100: ten reads, each scored with one call.
    assert 10 <= drained.summary["batches"] <= 12


def test_restart_after_kill_finishes_its_own_pending_entries_first(
    model: Model, client: redis.Redis, redis_url: str, keys: Callable[[str], str], tmp_path: Path
) -> None:
    source, sink = keys("in"), keys("out")
    ids = push(client, source, rows_for(2000))
    args = ["--source", f"{redis_url}/{source}", "--sink", f"{redis_url}/{sink}"]
    # Small batches keep the consumer busy long enough to be caught half way.
    first_run = running_consumer(
        model, tmp_path / "first.log", *args, "--consumer", "w1", "--batch-size", "5"
    )
    with first_run as first:
        wait_for(lambda: first.alive() and client.xlen(sink) >= 50, "the first results")
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=30)
    answered = client.xlen(sink)
    assert answered < 2000, "the consumer finished before it was killed"
    ids += push(client, source, rows_for(500, seed=2), first=2000)  # more arrive meanwhile
    # Whatever the moment of the kill, w1 now holds 20 more entries, and one of them
    # as if it had killed w1 four more times already.
    held: Any = client.xreadgroup("shipyard-fraud", "w1", {source: ">"}, count=20)
    poison = held[0][1][3][0]
    for _ in range(4):
        client.xclaim(source, "shipyard-fraud", "w1", 0, [poison])
    owned: Any = client.xpending_range(source, "shipyard-fraud", "-", "+", 100, "w1")
    held_by_w1 = {entry["message_id"] for entry in owned}

    # Same name: it finds what it had read but not acknowledged (XPENDING), then reads on.
    rest = run_consumer(
        model, *args, "--consumer", "w1", "--claim-idle", "3600", "--max-deliveries", "5",
        "--max-messages", str(2500 - answered),
    )  # fmt: skip
    assert rest.returncode == 0, rest.stderr
    results = answers(client, sink)
    assert sorted(results) == sorted(ids)
    assert [n for n, found in results.items() if len(found) != 1] == []
    assert pending(client, source) == 0
    # The message that kept killing the consumer is answered with an error, not retried.
    assert results[poison][0]["error"].startswith("gave up after 5 deliveries")
    assert all("predict" in found[0] for n, found in results.items() if n != poison)
    assert summary_of(rest.stderr)["given_up"] == 1
    # And it finished those before reading anything new.
    written: Any = client.xrange(sink)
    answered_on_restart = [fields["source_id"] for _, fields in written][answered:]
    assert set(answered_on_restart[: len(held_by_w1)]) == held_by_w1


def test_a_surviving_consumer_claims_what_dead_ones_left_pending(
    model: Model, client: redis.Redis, redis_url: str, keys: Callable[[str], str], tmp_path: Path
) -> None:
    source, sink = keys("in"), keys("out")
    client.xgroup_create(source, "shipyard-fraud", id="0", mkstream=True)
    ids = push(client, source, rows_for(7, seed=3))
    # A consumer that read and vanished for certain, besides whatever w1 holds when killed.
    client.xreadgroup("shipyard-fraud", "ghost", {source: ">"}, count=7)
    # Small batches keep both busy long enough for w1 to be killed half way.
    args = [
        "--source", f"{redis_url}/{source}", "--sink", f"{redis_url}/{sink}", "--batch-size", "5",
    ]  # fmt: skip
    w1_run = running_consumer(model, tmp_path / "w1.log", *args, "--consumer", "w1")
    w2_run = running_consumer(
        model, tmp_path / "w2.log", *args, "--consumer", "w2", "--claim-idle", "0.3"
    )
    with w1_run as w1, w2_run as w2:

        def both_waiting() -> bool:  # blocked in XREADGROUP on the (for them) empty stream
            blocked = {c["name"] for c in client.client_list() if "b" in c["flags"]}
            return (
                w1.alive()
                and w2.alive()
                and {"shipyard-stream-w1", "shipyard-stream-w2"} <= blocked
            )

        wait_for(both_waiting, "both consumers to wait for messages")  # so both get a share
        ids += push(client, source, rows_for(2000), first=7)
        wait_for(lambda: w1.alive() and client.xlen(sink) >= 50, "the first results")
        os.kill(w1.process.pid, signal.SIGKILL)
        w1.process.wait(timeout=30)
        assert client.xlen(sink) < 2007, "the consumers finished before one was killed"
        ids += push(client, source, rows_for(500, seed=2), first=2007)

        def all_answered() -> bool:
            return w2.alive() and client.xlen(sink) >= 2507 and pending(client, source) == 0

        wait_for(all_answered, "w2 to answer everything, the dead consumers' entries too")
        assert w2.stop() == 0
    assert "claimed" in w2.log()
    results = answers(client, sink)
    assert sorted(results) == sorted(ids)
    assert [n for n, found in results.items() if len(found) != 1] == []


def test_backpressure_pauses_while_the_sink_is_full(
    model: Model, client: redis.Redis, redis_url: str, keys: Callable[[str], str], tmp_path: Path
) -> None:
    source, sink = keys("in"), keys("out")
    ids = push(client, source, rows_for(300))
    args = [
        "--source", f"{redis_url}/{source}", "--sink", f"{redis_url}/{sink}",
        "--consumer", "bp", "--batch-size", "10", "--max-sink-length", "50",
    ]  # fmt: skip
    with running_consumer(model, tmp_path / "consumer.log", *args) as consumer:
        wait_for(lambda: consumer.alive() and "paused" in consumer.log(), "the pause")

        def idle_ms() -> int:
            (info,) = [c for c in client.xinfo_consumers(source, "shipyard-fraud")]
            return int(info["idle"])

        # No read for half a second (over two pause checks) while messages wait: paused.
        wait_for(lambda: idle_ms() >= 500, "half a second without reads")
        assert 50 <= client.xlen(sink) <= 60
        assert client.xinfo_groups(source)[0]["lag"] == 300 - client.xlen(sink)

        seen: dict[str, int] = {}

        def drain() -> bool:  # a downstream reader that deletes what it has taken
            taken: Any = client.xrange(sink)
            for _, fields in taken:
                seen[fields["source_id"]] = seen.get(fields["source_id"], 0) + 1
            if taken:
                client.xdel(sink, *[entry_id for entry_id, _ in taken])
            return len(seen) == 300

        wait_for(lambda: consumer.alive() and drain(), "every message answered")
        assert consumer.stop() == 0
    assert sorted(seen) == sorted(ids) and set(seen.values()) == {1}
    log = consumer.log()
    assert "resumed" in log
    assert summary_of(log)["messages"] == 300


def test_consumer_rides_out_a_redis_restart(
    model: Model, redis_url: str, keys: Callable[[str], str], tmp_path: Path
) -> None:
    server = RedisServer(tmp_path, persistent=True)  # its own server, to stop and start
    source, sink = keys("in"), keys("out")
    args = [
        "--source", f"{server.url}/{source}", "--sink", f"{server.url}/{sink}",
        "--batch-size", "5", "--reconnect-timeout", "30",
    ]  # fmt: skip
    server.start()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        ids = push(client, source, rows_for(400))
        with running_consumer(model, tmp_path / "consumer.log", *args) as consumer:
            wait_for(lambda: consumer.alive() and client.xlen(sink) >= 20, "the first results")
            server.stop()
            wait_for(lambda: consumer.alive() and "lost the connection" in consumer.log(), "loss")
            server.start()
            wait_for(lambda: consumer.alive() and client.xlen(sink) >= 400, "every answer")
            assert consumer.stop() == 0
        results = answers(client, sink)
        assert pending(client, source) == 0
    finally:
        client.close()
        server.stop()
    assert "reconnected" in consumer.log()
    assert sorted(results) == sorted(ids)
    assert [n for n, found in results.items() if len(found) != 1] == []


def test_unreachable_redis_is_a_clear_error_after_the_reconnect_time(
    model: Model, redis_url: str
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = run_consumer(
        model, "--source", f"{nowhere}/in", "--sink", f"{nowhere}/out",
        "--reconnect-timeout", "0.5",
    )  # fmt: skip
    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: gave up on Redis after ")
    assert "(--reconnect-timeout 0.5)" in last_line
    assert nowhere.removeprefix("redis://") in last_line  # redis-py names the address
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    ("option", "uri", "problem"),
    [
        ("--source", "http://localhost:6379/in", "is not a redis:// or rediss:// URI"),
        ("--sink", "redis://app:hunter2@localhost:6379/zero/extra/out", "must end in /STREAM"),
    ],
)
def test_bad_uri_is_a_one_line_error(model: Model, option: str, uri: str, problem: str) -> None:
    uris = {"--source": "redis://localhost:6379/in", "--sink": "redis://localhost:6379/out"}
    uris[option] = uri
    done = run_consumer(model, "--source", uris["--source"], "--sink", uris["--sink"])
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {option} ") and problem in line
    assert "hunter2" not in done.stderr
