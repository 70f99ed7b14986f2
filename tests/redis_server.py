"""Start a real redis-server in a temp dir on a free port; stop it afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def redis_available() -> bool:
    return shutil.which("redis-server") is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1, its files in `folder`; `start` again to restart.

    With `persistent` the server keeps an append-only file, so a restart comes back
    with the data, as clients see a real Redis restart; without, nothing is written.
    """

    def __init__(self, folder: Path, persistent: bool = False) -> None:
        self.folder = folder
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found")
        log_path = self.folder / "redis.log"
        with log_path.open("a") as log:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--dir", str(self.folder), "--save", "",
                 "--appendonly", "yes" if self.persistent else "no", "--daemonize", "no"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        _wait_until_answering(self.port, self.process, log_path, timeout)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown, after which the append-only file is complete."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@contextmanager
def running_redis() -> Iterator[str]:
    """`redis://127.0.0.1:PORT` of a fresh server with no persistence, stopped afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="shipyard-redis-"))
    server = RedisServer(folder)
    try:
        server.start()
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_answering(
    port: int, process: subprocess.Popen[bytes], log_path: Path, timeout: float
) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + timeout
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited during start:\n{log_path.read_text()}")
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.BusyLoadingError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer in time:\n{log_path.read_text()}")
            time.sleep(0.02)  # the poll interval; PING answering is what is waited for
    finally:
        client.close()
