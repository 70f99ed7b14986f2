"""Worker processes die with their parent, however it dies (`kill -9` included).

Each test starts the real `shipyard` command, waits (polling /proc against a deadline)
until it has its processes, kills the command alone with SIGKILL, and checks that every
process it had started is gone within 2 s. A zombie counts as gone: it holds no memory,
and reaping it is the business of whoever adopted it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from shipyard.config import Settings
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests.fixtures import FEATURES, write_example_csv, write_sklearn_model
from tests.server import running_shipyard, shipyard_command

T = TypeVar("T")
_GRACE_SECONDS = 2.0


# -- /proc ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    state: str
    started: int
    """Clock ticks after boot (field 22): tells a process from a later one with its pid."""
    command: str


def _read(pid: int) -> _Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The name (field 2) is in parentheses and may hold spaces or ")": split after the last.
    fields = stat[stat.rindex(")") + 2 :].split()
    return _Proc(pid, int(fields[1]), fields[0], int(fields[19]), command.strip())


def _descendants(root: int) -> list[_Proc]:
    """Every live process under `root`, from the ppid of each entry of /proc."""
    table = [
        p
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit()
        if (p := _read(int(entry.name)))
    ]
    found: list[_Proc] = []
    parents = {root}
    while True:
        children = [p for p in table if p.ppid in parents and p not in found]
        if not children:
            return [p for p in found if p.state not in ("Z", "X")]
        found.extend(children)
        parents = {p.pid for p in children}


def _running(process: _Proc) -> bool:
    """Still the same process, and not a zombie."""
    now = _read(process.pid)
    return now is not None and now.started == process.started and now.state not in ("Z", "X")


def _workers(root: int) -> list[_Proc]:
    """The worker processes under `root`: spawned by multiprocessing, not its resource tracker."""
    return [
        p
        for p in _descendants(root)
        if "multiprocessing" in p.command and "resource_tracker" not in p.command
    ]


def _wait_for(condition: Callable[[], T], what: str, timeout: float = 120) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # the poll interval; the condition is what is waited for


def _kill_9_and_expect_all_gone(pid: int, processes: list[_Proc]) -> None:
    """SIGKILL `pid` alone; every process in `processes` must be gone within the grace."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + _GRACE_SECONDS
    while left := [p for p in processes if _running(p)]:
        if time.monotonic() > deadline:
            described = "; ".join(f"{p.pid}: {p.command[:120]}" for p in left)
            raise AssertionError(
                f"{len(left)} process(es) still running {_GRACE_SECONDS:g}s after their "
                f"parent was killed with SIGKILL: {described}"
            )
        time.sleep(0.01)


@contextmanager
def _own_group(process: subprocess.Popen[bytes]) -> Iterator[None]:
    """Whatever the test finds, leave no process of the command's group behind."""
    try:
        yield
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _start(home: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [*shipyard_command(), *args],
            env={**os.environ, "SHIPYARD_HOME": str(home)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group, so the cleanup reaches leftovers
        )


def _registered(folder: Path, name: str) -> Path:
    """A fresh home with a logistic regression on f0..f3 registered as `name`."""
    home = folder / "home"
    registry = Registry.open(Settings(home=home))
    try:
        model = write_sklearn_model(folder / "model")
        registry.register(
            model, RegistrationOptions(name=name), write_example_csv(folder / "model")
        )
    finally:
        registry.close()
    return home


# -- batch ------------------------------------------------------------------------------


def test_batch_workers_exit_when_the_job_is_killed_with_sigkill(tmp_path: Path) -> None:
    home = _registered(tmp_path, "m")
    rows = 300_000
    features = np.random.default_rng(5).normal(size=(rows, len(FEATURES)))
    source = tmp_path / "big.parquet"
    table = pa.table({name: features[:, j] for j, name in enumerate(FEATURES)})
    pq.write_table(table, source, row_group_size=2000)  # 150 chunks: slow enough to catch
    output = tmp_path / "out"
    process = _start(
        home, tmp_path / "batch.log",
        "batch", "run", "m", "--input", str(source), "--output", str(output),
        "--chunk-rows", "2000", "--workers", "2",
    )  # fmt: skip
    with _own_group(process):

        def scoring() -> list[_Proc]:
            assert process.poll() is None, (tmp_path / "batch.log").read_text()
            workers = _workers(process.pid)
            return workers if len(workers) == 2 and any(output.glob("part-*")) else []

        _wait_for(scoring, "two workers scoring chunks")
        processes = _descendants(process.pid)  # the workers and multiprocessing's tracker
        _kill_9_and_expect_all_gone(process.pid, processes)
        assert not (output / "_SUCCESS").exists(), "the job ended before it was killed"


# -- stream -----------------------------------------------------------------------------


def test_a_killed_stream_consumer_leaves_no_process_behind(tmp_path: Path, redis_url: str) -> None:
    home = _registered(tmp_path, "fraud")
    source, sink = (f"{uuid.uuid4().hex[:8]}-{name}" for name in ("in", "out"))
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for row in np.random.default_rng(2).normal(size=(20, len(FEATURES))).tolist():
            client.xadd(
                source, {name: str(value) for name, value in zip(FEATURES, row, strict=True)}
            )
        process = _start(
            home, tmp_path / "stream.log",
            "stream", "run", "fraud", "--source", f"{redis_url}/{source}",
            "--sink", f"{redis_url}/{sink}", "--max-wait-ms", "100",
        )  # fmt: skip
        with _own_group(process):

            def scored() -> int:
                assert process.poll() is None, (tmp_path / "stream.log").read_text()
                return int(client.xlen(sink))

            _wait_for(scored, "the consumer's first results")  # the model is loaded
            processes = [p for p in [_read(process.pid)] if p] + _descendants(process.pid)
            _kill_9_and_expect_all_gone(process.pid, processes)
    finally:
        client.close()


# -- server -----------------------------------------------------------------------------

SLOW_MODEL = """
import pathlib
import time


class Sleeper:
    \"\"\"Says it has started predicting, then takes ten minutes about it.\"\"\"

    def load(self):
        pass

    def predict(self, inputs):
        pathlib.Path({marker!r}).touch()
        time.sleep(600)
        return next(iter(inputs.values()))
"""


def test_server_workers_exit_when_the_server_is_killed_with_sigkill(tmp_path: Path) -> None:
    """One worker busy in a predict (deaf to its pipe), one idle: both go with the server."""
    marker = tmp_path / "predicting"
    model = tmp_path / "sleeper.py"
    model.write_text(SLOW_MODEL.format(marker=str(marker)))
    env = {"SHIPYARD_HOME": str(tmp_path / "home"), "SHIPYARD_WORKERS_PER_MODEL": "2"}
    with running_shipyard(env, "serve", str(model)) as server:
        try:
            body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}

            def infer() -> None:
                with suppress(httpx.HTTPError):  # killed under it: no answer is the point
                    httpx.post(f"{server.url}/v2/models/sleeper/infer", json=body, timeout=120)

            caller = threading.Thread(target=infer, daemon=True)
            caller.start()
            _wait_for(marker.exists, "a worker to start predicting")
            _wait_for(lambda: len(_workers(server.process.pid)) == 2, "two workers")
            processes = _descendants(server.process.pid)
            _kill_9_and_expect_all_gone(server.process.pid, processes)
            caller.join(timeout=30)
        finally:
            with suppress(ProcessLookupError):  # leftovers, if the test failed
                os.killpg(server.process.pid, signal.SIGKILL)


# -- the helper's race ------------------------------------------------------------------

_ORPHAN = """
import sys
from shipyard.runtimes.lifetime import die_with_parent

sys.stdin.read()  # EOF: the parent is exiting, or gone, before the signal is armed
die_with_parent(int(sys.argv[1]))
print("survived", flush=True)
"""

_SHORT_LIVED_PARENT = """
import os, subprocess, sys

subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())], stdin=subprocess.PIPE)
"""


def test_a_worker_whose_parent_died_before_it_armed_the_signal_ends_at_once() -> None:
    """The parent exits first; its child then asks to die with it and must not survive."""
    done = subprocess.run(
        [sys.executable, "-c", _SHORT_LIVED_PARENT, _ORPHAN],
        capture_output=True,  # read to EOF: until the orphan, which holds stdout, is gone
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "survived" not in done.stdout
    assert done.stderr == ""
