"""Start a real `shipyard server` subprocess, wait until it is ready, kill its tree.

The server binds port 0 and the helper reads the port uvicorn reports, so there
is no free-port race and no sleeping: readiness is the "running on" log line.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

_RUNNING = re.compile(r"Uvicorn running on (https?://[^\s\"]+)")
_GRPC = re.compile(r"gRPC running on ([^\s\"]+)")
# The shape of an API key (security/keys.py); no server log may ever hold one.
_KEY_SHAPE = re.compile(r"sy_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}")


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    grpc_target: str | None = None


def _pump(stream: object, lines: queue.Queue[str | None], log: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        log.append(line)
        lines.put(line)
    lines.put(None)


def shipyard_command() -> list[str]:
    return [sys.executable, "-m", "shipyard.cli.main"]


def run_clean_cli(
    env: dict[str, str], cwd: Path, *args: str, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    """`shipyard ARGS` in `cwd` with no SHIPYARD_* setting but `env`'s, at `columns` wide."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    return subprocess.run(
        [*shipyard_command(), *args],
        env={**clean, "COLUMNS": str(columns), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


@contextmanager
def running_server(
    env: dict[str, str],
    *extra_args: str,
    cwd: Path | None = None,
    timeout: float = 60,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[RunningServer]:
    """Run `shipyard server --host HOST --port PORT` with `env` added to the environment.

    `port` 0 (the default) lets the server pick; a fixed one restarts a replica in place."""
    with running_shipyard(
        env, "server", *extra_args, cwd=cwd, timeout=timeout, host=host, port=port
    ) as server:
        yield server


@contextmanager
def running_shipyard(
    env: dict[str, str],
    command: str,
    *args: str,
    cwd: Path | None = None,
    timeout: float = 60,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[RunningServer]:
    """Run `shipyard COMMAND ARGS --host HOST --port PORT` until it reports its URL."""
    process = subprocess.Popen(
        [
            *shipyard_command(),
            command,
            *args,
            "--host",
            host,
            "--port",
            str(port),
            "--grpc-port",
            "0",
        ],
        # One worker per model unless a test asks: the default (one per core) would make
        # every served model spawn as many processes as the CI machine has cores.
        # One fixed worker and no spare interpreters unless a test asks: 2 cores run
        # the whole suite, and most tests are about one request, not about capacity.
        env={
            "SHIPYARD_WORKERS_PER_MODEL": "1",
            "SHIPYARD_SPARE_WORKERS": "0",
            **os.environ,
            **env,
        },
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, so the whole tree can be killed
    )
    lines: queue.Queue[str | None] = queue.Queue()
    log: list[str] = []
    pump = threading.Thread(target=_pump, args=(process.stdout, lines, log), daemon=True)
    pump.start()
    try:
        url = None
        grpc_target = None
        while url is None:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError("server did not start in time:\n" + "".join(log)) from None
            if line is None:
                raise RuntimeError("server exited during start:\n" + "".join(log))
            grpc_match = _GRPC.search(line)
            if grpc_match:
                grpc_target = grpc_match.group(1)
            match = _RUNNING.search(line)
            if match:
                url = match.group(1)
        yield RunningServer(url=url, process=process, log=log, grpc_target=grpc_target)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        pump.join(timeout=30)  # the pipe is at EOF once the process tree is gone
        if process.stdout is not None:
            process.stdout.close()
    leaked = _KEY_SHAPE.findall("".join(log))
    assert not leaked, f"API key material in a server log: {len(leaked)} occurrence(s)"
