"""Bounds on what a client may make the server hold: body sizes on every route, archive
sizes, and time and connections for slow clients. Against a real `shipyard server`,
over raw sockets where an HTTP client library would not misbehave on purpose."""

from __future__ import annotations

import io
import json
import select
import socket
import tarfile
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from shipyard.client import LocalClient
from shipyard.config import Settings
from shipyard.registry.records import RegistrationOptions
from tests import fixtures
from tests.security.conftest import KeyedHome, make_keyed_home
from tests.server import RunningServer, running_server

TIMEOUT = 2  # header and body timeouts of the server under test, in seconds
MARGIN = 8  # for a loaded CI machine
ROWS, _ = fixtures.training_data(rows=2)
INFER_BODY = {
    "inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": ROWS.tolist()}]
}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> KeyedHome:
    folder = tmp_path_factory.mktemp("limits")
    keyed = make_keyed_home(folder / "home")
    with LocalClient.open(Settings(home=keyed.home)) as local:
        model = fixtures.write_sklearn_model(folder / "model")
        local.register(model, RegistrationOptions(name="tiny"))
    return keyed


@pytest.fixture(scope="module")
def server(keyed: KeyedHome) -> Iterator[RunningServer]:
    env = {
        **keyed.env,
        "SHIPYARD_HEADER_TIMEOUT": str(TIMEOUT),
        "SHIPYARD_BODY_TIMEOUT": str(TIMEOUT),
        "SHIPYARD_MAX_UNPACKED_BYTES": str(256 * 1024 * 1024),
        "SHIPYARD_MAX_ARCHIVE_FILES": "100",
    }
    with running_server(env) as running:
        warm = httpx.post(
            f"{running.url}/v2/models/tiny/infer",
            json=INFER_BODY,
            headers=auth(keyed, "predictor"),
            timeout=60,
        )
        assert warm.status_code == 200, warm.text
        yield running


def auth(keyed: KeyedHome, role: str) -> dict[str, str]:
    return {"authorization": f"Bearer {keyed.tokens[role]}"}


def connect(server: RunningServer) -> socket.socket:
    address = urlsplit(server.url)
    assert address.hostname is not None and address.port is not None
    return socket.create_connection((address.hostname, address.port), timeout=10)


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "host: shipyard",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_until_closed(sock: socket.socket, deadline: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection (True), or until the
    deadline (False)."""
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return received, False
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return received, False
        except ConnectionResetError:
            return received, True
        if not data:
            return received, True
        received += data


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def json_body(answer: bytes) -> dict[str, str]:
    body: dict[str, str] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return body


# -- item 3: every route has a body limit ------------------------------------------


def test_a_declared_body_over_the_limit_is_refused_before_it_is_sent(
    server: RunningServer, keyed: KeyedHome
) -> None:
    headers = {**auth(keyed, "predictor"), "content-type": "application/json"}
    with connect(server) as sock:
        sock.sendall(
            request_head("POST", "/api/feedback", {**headers, "content-length": "300000000"})
        )
        answer, closed = read_until_closed(sock, time.monotonic() + 5)
    assert status_of(answer) == 413
    assert json_body(answer) == {"error": "request body is 300000000 bytes; the limit is 16777216"}
    assert closed, "the server should not wait for the rest of the body"


def test_a_chunked_body_is_refused_as_it_crosses_the_limit(
    server: RunningServer, keyed: KeyedHome
) -> None:
    headers = {
        **auth(keyed, "predictor"),
        "content-type": "application/json",
        "transfer-encoding": "chunked",
    }
    piece = b"[" + b" " * (256 * 1024 - 1)
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    sent = 0
    with connect(server) as sock:
        sock.sendall(request_head("POST", "/api/feedback", headers))
        while sent < 300_000_000:
            answered, _, _ = select.select([sock], [], [], 0)
            if answered:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # closed by the server: its answer is waiting to be read
                break
            sent += len(piece)
        answer, closed = read_until_closed(sock, time.monotonic() + 10)
    assert status_of(answer) == 413
    assert json_body(answer) == {"error": "request body is over the limit of 16777216 bytes"}
    assert closed
    # The limit plus what the sockets' buffers held, nowhere near the 300 MB on offer.
    assert sent < 64 * 1024 * 1024


def test_the_rest_of_a_refused_inference_body_is_not_read(
    server: RunningServer, keyed: KeyedHome
) -> None:
    """The fast path answers 413 on the declared length; the connection is then closed
    rather than the 100 MB that follow read and dropped (uvicorn's own behaviour)."""
    headers = {
        **auth(keyed, "predictor"),
        "content-type": "application/json",
        "content-length": "100000000",
    }
    piece = b" " * (256 * 1024)
    sent = 0
    with connect(server) as sock:
        sock.sendall(request_head("POST", "/v2/models/tiny/infer", headers))
        while sent < 100_000_000:
            try:
                sock.sendall(piece)
            except OSError:  # closed by the server
                break
            sent += len(piece)
        answer, closed = read_until_closed(sock, time.monotonic() + 10)
    assert closed
    assert status_of(answer) == 413
    assert sent < 32 * 1024 * 1024


def test_a_small_body_answered_early_keeps_its_connection(server: RunningServer) -> None:
    """Refused unread (401: no key), a short body is dropped and the connection kept."""
    with connect(server) as sock:
        sock.sendall(request_head("POST", "/api/feedback", {"content-length": "2"}))
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            answer += sock.recv(65536)
        assert status_of(answer) == 401
        sock.sendall(b"{}" + request_head("GET", "/v2/health/live", {}))
        answer = sock.recv(65536)
        assert status_of(answer) == 200


class _Zeros(io.RawIOBase):
    """A file of zeros that takes no memory or disk."""

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer)
        view[:] = bytes(len(view))
        return len(view)

    def readable(self) -> bool:
        return True


def python_model_tar(extra: list[tarfile.TarInfo], gzip: bool = False) -> bytes:
    """A model folder that registers (model.py) plus the `extra` members."""
    code = b"class Model:\n    def predict(self, rows):\n        return rows\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as archive:
        info = tarfile.TarInfo("model.py")
        info.size = len(code)
        archive.addfile(info, io.BytesIO(code))
        for member in extra:
            archive.addfile(member, _Zeros() if member.size else None)
    return buffer.getvalue()


def upload(server: RunningServer, keyed: KeyedHome, name: str, archive: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/models/{name}/versions",
        files={"artifact": (f"{name}.tar", archive)},
        data={"folder": "true"},
        headers=auth(keyed, "deployer"),
        timeout=60,
    )


def test_a_gzip_bomb_is_refused_and_nothing_registered(
    server: RunningServer, keyed: KeyedHome
) -> None:
    zeros = tarfile.TarInfo("weights.bin")
    zeros.size = 512 * 1024 * 1024
    bomb = python_model_tar([zeros], gzip=True)
    assert len(bomb) < 1024 * 1024  # about 500 KB on the wire

    response = upload(server, keyed, "bomb", bomb)
    assert response.status_code == 413
    assert response.json() == {
        "error": "the archive unpacks to more than 268435456 bytes (SHIPYARD_MAX_UNPACKED_BYTES)"
    }
    missing = httpx.get(f"{server.url}/api/models/bomb", headers=auth(keyed, "viewer"))
    assert missing.status_code == 404


def test_an_archive_with_too_many_files_is_refused(server: RunningServer, keyed: KeyedHome) -> None:
    many = [tarfile.TarInfo(f"part-{i}.txt") for i in range(100)]  # 101 with model.py
    response = upload(server, keyed, "many", python_model_tar(many))
    assert response.status_code == 413
    assert response.json() == {
        "error": "the archive holds more than 100 entries (SHIPYARD_MAX_ARCHIVE_FILES)"
    }
    missing = httpx.get(f"{server.url}/api/models/many", headers=auth(keyed, "viewer"))
    assert missing.status_code == 404


# -- item 4: slow clients cannot hold the server -----------------------------------


def test_slow_clients_are_closed_and_others_served_meanwhile(
    server: RunningServer, keyed: KeyedHome
) -> None:
    predictor = auth(keyed, "predictor")
    half_headers = [
        b"GET /v2/hea",  # half a request line
        b"GET /v2/health/live HTTP/1.1\r\nhost: shipyard\r\nx-slow",  # half the headers
    ]
    body_head = {**predictor, "content-type": "application/json", "content-length": "1000"}
    stalled_bodies = [
        request_head("POST", "/api/feedback", body_head) + b'{"items": [',
        request_head("POST", "/v2/models/tiny/infer", body_head) + b'{"inputs": [',
    ]
    sockets: list[tuple[socket.socket, bool]] = []  # (socket, sent a whole header)
    try:
        started = time.monotonic()
        for i in range(50):
            sock = connect(server)
            sock.sendall(half_headers[i % 2])
            sockets.append((sock, False))
        for i in range(5):
            sock = connect(server)
            sock.sendall(stalled_bodies[i % 2])
            sockets.append((sock, True))

        live = httpx.get(f"{server.url}/v2/health/live", timeout=10)
        assert live.status_code == 200
        infer = httpx.post(
            f"{server.url}/v2/models/tiny/infer", json=INFER_BODY, headers=predictor, timeout=10
        )
        assert infer.status_code == 200, infer.text

        deadline = started + TIMEOUT + MARGIN
        for sock, sent_headers in sockets:
            answer, closed = read_until_closed(sock, deadline)
            assert closed, f"a stalled connection was still open after {TIMEOUT + MARGIN} s"
            assert status_of(answer) == 408
            if sent_headers:
                assert json_body(answer) == {
                    "error": f"the request body stalled for over {TIMEOUT} s"
                }
    finally:
        for sock, _ in sockets:
            sock.close()


def test_endless_headers_are_refused_before_their_timeout(server: RunningServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nhost: shipyard\r\nx-pad: ")
        started = time.monotonic()
        for _ in range(32):
            try:
                sock.sendall(b"a" * 8192)
            except OSError:  # closed by the server: its answer is waiting to be read
                break
        answer, closed = read_until_closed(sock, started + TIMEOUT)
    assert closed
    assert status_of(answer) == 431
    assert json_body(answer) == {"error": "request headers are over 65536 bytes"}


def test_connections_over_the_limit_get_503_at_once(keyed: KeyedHome) -> None:
    env = {**keyed.env, "SHIPYARD_MAX_CONNECTIONS": "8", "SHIPYARD_HEADER_TIMEOUT": "60"}
    with running_server(env) as server:
        idle = [connect(server) for _ in range(8)]
        try:
            started = time.monotonic()
            refused = httpx.get(f"{server.url}/v2/health/live", timeout=10)
            assert refused.status_code == 503
            assert time.monotonic() - started < 2
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "connections closed by clients were never freed"
