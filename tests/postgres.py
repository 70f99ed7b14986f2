"""Start a real PostgreSQL server from its binaries, in a temp dir, on a free port."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_SERVICE_USER = "postgres"


def _binary_dir() -> Path | None:
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def postgres_available() -> bool:
    folder = _binary_dir()
    return folder is not None and (folder / "pg_ctl").exists()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _as_service_user(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; tests often do (CI does).
    if os.geteuid() == 0:
        return ["runuser", "-u", _SERVICE_USER, "--", *command]
    return command


@contextmanager
def running_postgres(base_dir: Path | None = None) -> Iterator[str]:
    """Yield a SQLAlchemy URL to a fresh server with an empty database `shipyard`.

    `base_dir` is ignored for the data itself: pytest's temp dirs are private to
    root, so the cluster lives in its own world-traversable temp dir.
    """
    folder = _binary_dir()
    if folder is None:
        raise RuntimeError("PostgreSQL server binaries not found")
    work = Path(tempfile.mkdtemp(prefix="shipyard-pg-"))
    work.chmod(0o755)
    data, sockets = work / "data", work / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        service = pwd.getpwnam(_SERVICE_USER)
        for path in (work, sockets):
            os.chown(path, service.pw_uid, service.pw_gid)
    port = _free_port()
    run = {"check": True, "capture_output": True, "text": True, "timeout": 120}
    try:
        subprocess.run(
            _as_service_user(
                [str(folder / "initdb"), "-D", str(data), "-U", "shipyard", "-A", "trust",
                 "-E", "UTF8", "--no-sync"]
            ),
            **run,
        )  # fmt: skip
        options = (
            f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        )
        subprocess.run(
            _as_service_user(
                [str(folder / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-o", options,
                 "-l", str(work / "server.log"), "start"]
            ),
            **run,
        )  # fmt: skip
        try:
            import psycopg

            with psycopg.connect(
                host="127.0.0.1", port=port, user="shipyard", dbname="postgres", autocommit=True
            ) as connection:
                connection.execute("CREATE DATABASE shipyard")
            yield f"postgresql+psycopg://shipyard@127.0.0.1:{port}/shipyard"
        finally:
            subprocess.run(
                _as_service_user(
                    [str(folder / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
                ),
                check=False,
                capture_output=True,
                timeout=60,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
