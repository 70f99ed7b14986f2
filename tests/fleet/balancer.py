"""A fleet on loopback: real `shipyard server` replicas on one PostgreSQL, behind HAProxy.

HAProxy runs from Debian's binary with a generated config; tests read server states
("UP", "DOWN") and per-server response counts from its stats socket, never from sleeps.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tests.polling import eventually
from tests.server import RunningServer, running_server

_DEBIAN_HAPROXY = Path("/usr/sbin/haproxy")
_BACKEND = "replicas"
_BIND_FAILED = "cannot bind socket"


def haproxy_binary() -> Path | None:
    """HAProxy on PATH, or where Debian's `haproxy` package puts it (/usr/sbin is not
    on every user's PATH)."""
    found = shutil.which("haproxy")
    if found:
        return Path(found)
    return _DEBIAN_HAPROXY if _DEBIAN_HAPROXY.exists() else None


@dataclass(frozen=True)
class Member:
    """One replica as the balancer sees it; `backup` servers take traffic only once every
    non-backup server is DOWN (a remote zone)."""

    name: str
    host: str
    port: int
    backup: bool = False


@dataclass(frozen=True)
class ServerStat:
    status: str  # "UP", "DOWN", or a transition such as "UP 1/2"
    responses_2xx: int


def haproxy_config(port: int, members: Sequence[Member], stats_socket: Path) -> str:
    """Health checks every 200 ms on the readiness route, two in a row to change state;
    requests that found a dead replica (refused connection, closed without an answer, no
    answer in time) are replayed on another server: inference is idempotent."""
    servers = [
        f"    server {m.name} {m.host}:{m.port} check{' backup' if m.backup else ''}"
        for m in members
    ]
    return "\n".join(
        [
            "global",
            f"    stats socket {stats_socket} mode 600 level admin",
            "    maxconn 2000",
            # Without it HAProxy binds with SO_REUSEPORT and could share a port that
            # another process took between our probe and its bind, instead of failing.
            "    noreuseport",
            "    log stderr format raw local0 info",  # -db: stderr, into the log file
            "defaults",
            "    mode http",
            "    log global",
            "    option httplog",
            "    timeout connect 1s",
            "    timeout client 30s",
            "    timeout server 10s",
            "    timeout check 1s",
            "    retries 2",
            # 1: redispatch on every retry; the default (-1) retries the same dead server
            # first and moves only on the last retry.
            "    option redispatch 1",
            "    retry-on conn-failure empty-response response-timeout",
            "frontend fleet",
            f"    bind 127.0.0.1:{port}",
            f"    default_backend {_BACKEND}",
            f"backend {_BACKEND}",
            "    balance roundrobin",
            "    option httpchk GET /v2/health/ready",
            "    http-check expect status 200",
            "    option allbackups",  # the whole remote zone, not only its first server
            "    default-server inter 200ms fall 2 rise 2",
            *servers,
            "",
        ]
    )


def show_stat(stats_socket: Path) -> dict[str, ServerStat]:
    """Every server of the backend, by name, from `show stat` on the runtime API."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        connection.connect(str(stats_socket))
        connection.sendall(b"show stat\n")
        chunks = []
        while chunk := connection.recv(65536):  # the API closes after one command
            chunks.append(chunk)
    text = b"".join(chunks).decode().removeprefix("# ")
    return {
        row["svname"]: ServerStat(row["status"], int(row["hrsp_2xx"] or 0))
        for row in csv.DictReader(text.splitlines())
        if row["pxname"] == _BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
    }


@dataclass
class Balancer:
    url: str
    process: subprocess.Popen[bytes]
    stats_socket: Path

    def stats(self) -> dict[str, ServerStat]:
        return show_stat(self.stats_socket)

    def wait_for(self, names: Sequence[str], status: str, timeout: float = 30) -> None:
        """Until HAProxy reports every server in `names` with exactly `status`."""

        def reached() -> bool | None:
            stats = self.stats()
            return True if all(stats[n].status == status for n in names) else None

        eventually(reached, f"HAProxy to mark {', '.join(names)} {status}", timeout)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _answering(process: subprocess.Popen[bytes], stats_socket: Path) -> bool | None:
    """True once HAProxy answers on its stats socket, False if it exited, else None."""
    if process.poll() is not None:
        return False
    try:  # every listener, the stats socket among them, is bound before HAProxy serves
        show_stat(stats_socket)
    except OSError:
        return None
    return True


@contextmanager
def running_haproxy(members: Sequence[Member], attempts: int = 5) -> Iterator[Balancer]:
    """HAProxy in the foreground in front of `members`, killed at the end.

    HAProxy cannot bind port 0 and report it, so the port is probed free, released, and
    handed to HAProxy; if another process takes it in between, HAProxy fails to bind and
    the start is retried on a new port."""
    binary = haproxy_binary()
    if binary is None:
        raise RuntimeError("HAProxy not found (Debian package: haproxy)")
    # A short private folder: a unix socket path must stay under 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="shipyard-lb-"))
    stats_socket, config, log = work / "stats.sock", work / "haproxy.cfg", work / "haproxy.log"
    process: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(attempts):
            port = _free_port()
            config.write_text(haproxy_config(port, members, stats_socket))
            with log.open("wb") as out:
                process = subprocess.Popen(
                    [str(binary), "-db", "-f", str(config)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if eventually(partial(_answering, process, stats_socket), "HAProxy's stats socket"):
                break
            process.wait()
            output = log.read_text()
            if _BIND_FAILED not in output or attempt == attempts - 1:
                raise RuntimeError(f"HAProxy exited during start:\n{output}")
        assert process is not None
        yield Balancer(f"http://127.0.0.1:{port}", process, stats_socket)
    except BaseException:
        # For the failure report: state changes, and requests that did not end normally
        # (termination state other than "----"; "SD--": the server went away mid-request).
        unusual = [line for line in log.read_text().splitlines() if " ---- " not in line]
        print("HAProxy's log, all but normal requests:", *unusual[-60:], sep="\n")
        raise
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class ReplicaSpec:
    """How to start one replica: its environment (SHIPYARD_HOME differs per replica),
    address, port (0: its own choice) and any further `shipyard server` arguments."""

    env: dict[str, str]
    host: str = "127.0.0.1"
    port: int = 0
    args: tuple[str, ...] = ()


def start_replicas(stack: ExitStack, specs: Sequence[ReplicaSpec]) -> list[RunningServer]:
    """Start every replica at once (threads: each start is mostly waiting on imports);
    each is killed, process group and all, when `stack` closes, even if another failed."""

    def start(spec: ReplicaSpec) -> tuple[AbstractContextManager[RunningServer], RunningServer]:
        manager = running_server(spec.env, *spec.args, host=spec.host, port=spec.port)
        return manager, manager.__enter__()

    with ThreadPoolExecutor(max_workers=max(len(specs), 1)) as pool:
        futures = [pool.submit(start, spec) for spec in specs]
        started: list[RunningServer] = []
        errors: list[BaseException] = []
        for future in futures:
            try:
                manager, server = future.result()
            except Exception as error:  # the others still get their cleanup pushed
                errors.append(error)
                continue
            stack.push(manager.__exit__)
            started.append(server)
    if errors:
        raise errors[0]
    return started


def kill_replica(server: RunningServer) -> None:
    """kill -9 the replica's whole process group (its front and its model workers)."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=30)


def address(server: RunningServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)
