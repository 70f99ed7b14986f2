"""A busy port fails loudly, REST and gRPC alike; two servers never share one (issue 22).

gRPC sets SO_REUSEPORT by default, so a second server on the same gRPC port used to start
"fine" and take a share of the calls meant for the first.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from shipyard.transports.grpc_v2.servicer import start_grpc_server
from tests.fixtures import write_sklearn_model
from tests.server import running_server, shipyard_command


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*shipyard_command(), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def home_env(tmp_path: Path) -> dict[str, str]:
    os.environ.pop("SHIPYARD_URL", None)
    return {"SHIPYARD_HOME": str(tmp_path / "home"), "SHIPYARD_SPARE_WORKERS": "0"}


def test_a_second_server_on_a_busy_grpc_port_fails_with_words(
    home_env: dict[str, str], tmp_path: Path
) -> None:
    model = write_sklearn_model(tmp_path)
    with running_server(home_env) as first:
        assert first.grpc_target is not None
        grpc_port = first.grpc_target.rsplit(":", 1)[1]
        second = _run(home_env, "serve", str(model), "--port", "0", "--grpc-port", grpc_port)
        assert second.returncode != 0
        assert f"cannot listen on 127.0.0.1:{grpc_port} for gRPC" in second.stderr
        assert "--grpc-port" in second.stderr  # says what to do about it
        assert "Traceback" not in second.stderr

        rest_port = first.url.rsplit(":", 1)[1]
        third = _run(home_env, "serve", str(model), "--port", rest_port, "--grpc-port", "-1")
        assert third.returncode != 0
        assert f"cannot listen on 127.0.0.1:{rest_port}" in third.stderr
        assert first.process.poll() is None  # the first one never noticed


def test_grpc_server_refuses_a_port_another_grpc_server_holds() -> None:
    """The transport itself, below the CLI's early check: no SO_REUSEPORT sharing."""

    async def both() -> str:
        first, port = await start_grpc_server(
            None,  # type: ignore[arg-type]  # no call reaches the data plane here
            "127.0.0.1",
            0,
            max_message_bytes=1024,
            max_elements=10,
        )
        try:
            with pytest.raises(RuntimeError, match="Failed to bind") as refused:
                await start_grpc_server(
                    None,  # type: ignore[arg-type]
                    "127.0.0.1",
                    port,
                    max_message_bytes=1024,
                    max_elements=10,
                )
            return str(refused.value)
        finally:
            await first.stop(None)

    assert "127.0.0.1" in asyncio.run(both())


def _free_port_pair() -> int:
    """A port P with P + 1 free too (checked, then released)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        with socket.socket() as first, socket.socket() as second:
            try:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports")


def test_serve_puts_grpc_next_to_its_rest_port(home_env: dict[str, str], tmp_path: Path) -> None:
    """Not on 8001, the server's default: `shipyard serve --port 9000` beside `make serve`
    used to land on the same gRPC port."""
    model = write_sklearn_model(tmp_path)
    port = _free_port_pair()
    process = subprocess.Popen(
        [*shipyard_command(), "serve", str(model), "--port", str(port)],
        env={**os.environ, **home_env, "SHIPYARD_WORKERS_PER_MODEL": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout or ()], daemon=True
    )
    reader.start()
    try:
        seen = []
        while True:
            line = lines.get(timeout=60)
            seen.append(line)
            if "gRPC running on" in line:
                break
        assert f"gRPC running on 127.0.0.1:{port + 1}" in line, "".join(seen)
    finally:
        os.killpg(process.pid, 9)
        process.wait(timeout=30)
        reader.join(timeout=30)
        if process.stdout is not None:
            process.stdout.close()
