"""A device folder kept in step with a real server: sync, swap, rollback, run offline, and
the failures that must leave the running bundle alone."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from shipyard.client import Client
from shipyard.errors import IntegrityError, ShipyardError
from shipyard.packaging import edge, edge_runner
from shipyard.registry import records
from shipyard.registry.refs import parse_ref
from shipyard.security import signing
from tests.fixtures import training_data
from tests.packaging.test_bundle import onnx_answers, write_onnx_classifier, write_rows
from tests.server import RunningServer, running_server, shipyard_command

ROWS = training_data(rows=5, seed=7)[0]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("edge") / "home"
    signing.create_key(home, "default")
    return home


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[RunningServer]:
    os.environ.pop("SHIPYARD_URL", None)
    with running_server({"SHIPYARD_HOME": str(home), "SHIPYARD_USER": "tester"}) as running:
        yield running


@pytest.fixture(scope="module")
def public_key(home: Path) -> Path:
    return home / "signing" / "default.pub"


def register(server: RunningServer, folder: Path, name: str, seed: int) -> Path:
    """Register an ONNX classifier as a new version of `name` pointed at by `production`."""
    path = write_onnx_classifier(folder / f"{name}-{seed}", seed=seed)
    options = records.RegistrationOptions(name=name, aliases=["production"])
    with Client(server.url) as client:
        client.register(path, options)
    return path


def cli(*args: str, url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("SHIPYARD_URL", None)
    if url:
        env["SHIPYARD_URL"] = url
    return subprocess.run(
        [*shipyard_command(), *args], env=env, capture_output=True, text=True, timeout=120
    )


def run_offline(device: Path, rows_file: Path) -> dict[str, object]:
    done = cli("edge", "run", "--dir", str(device), "--input", str(rows_file))
    assert done.returncode == 0, done.stderr
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


class StandIn:
    """A loopback server that answers the bundle routes with the real server's answers,
    counting requests; with `cut` it sends only half the zip and hangs up."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.hits: Counter[str] = Counter()
        self.cut = False
        self.url = ""

    @contextmanager
    def running(self) -> Iterator[StandIn]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                kind = "download" if self.path.endswith("/download") else "info"
                stand_in.hits[kind] += 1
                real = httpx.get(stand_in.upstream + self.path, timeout=30)
                body = real.content
                self.send_response(real.status_code)
                self.send_header("content-type", real.headers["content-type"])
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if kind == "download" and stand_in.cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{http.server_address[1]}"
        thread = threading.Thread(target=http.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            http.shutdown()
            http.server_close()
            thread.join()


def leftovers(device: Path) -> list[str]:
    """Temporary files a sync may have left: none after success or failure."""
    return sorted(p.name for p in [*device.glob(".*"), *(device / "bundles").glob(".*")]
                  if p.name != ".lock")  # fmt: skip


def test_sync_run_update_and_rollback_end_to_end(
    server: RunningServer, tmp_path: Path, public_key: Path
) -> None:
    v1_model = register(server, tmp_path, "fraud", seed=0)
    device = tmp_path / "device"
    rows_file = write_rows(tmp_path / "rows.csv", ROWS)

    first = cli("edge", "sync", "fraud@production", "--dir", str(device),
                "--public-key", str(public_key), "--url", server.url)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("updated to fraud:1 (digest ")
    v1_digest = edge.current_digest(device)
    answer = run_offline(device, rows_file)
    v1_expected = onnx_answers(v1_model, ROWS)
    assert answer["outputs"] == v1_expected
    assert (answer["version"], answer["digest"]) == (1, v1_digest)

    with Client(server.url) as client:
        unchanged = edge.sync(client, parse_ref("fraud@production"), device,
                              signing.load_public_key(public_key))  # fmt: skip
    assert not unchanged.changed and unchanged.digest == v1_digest

    v2_model = register(server, tmp_path, "fraud", seed=1)  # the alias moves to version 2
    v2_expected = onnx_answers(v2_model, ROWS)
    assert v2_expected != v1_expected
    with Client(server.url) as client:
        updated = edge.sync(client, parse_ref("fraud@production"), device,
                            signing.load_public_key(public_key))  # fmt: skip
    assert updated.changed and updated.version == 2 and updated.previous == v1_digest
    assert os.readlink(device / "current") == f"bundles/{updated.digest}"
    assert os.readlink(device / "previous") == f"bundles/{v1_digest}"
    folder = edge.current_folder(device)  # in process here: the CLI runs it before and after
    model = edge_runner.BundleModel(folder, edge_runner.verify_files(folder))
    assert model.predict(edge_runner.read_rows(rows_file))["outputs"] == v2_expected

    rolled = cli("edge", "rollback", "--dir", str(device))
    assert rolled.returncode == 0, rolled.stderr
    assert f"current is fraud:1 (digest {v1_digest})" in rolled.stdout
    assert run_offline(device, rows_file)["outputs"] == v1_expected
    assert edge.current_digest(device) == v1_digest

    status = cli("edge", "status", "--dir", str(device), "--json")
    slots = {s["slot"]: s for s in json.loads(status.stdout)}
    assert (slots["current"]["version"], slots["previous"]["version"]) == (1, 2)
    assert {s["state"] for s in slots.values()} == {"ok"}
    assert leftovers(device) == []


def test_unchanged_digest_downloads_nothing(
    server: RunningServer, tmp_path: Path, public_key: Path
) -> None:
    register(server, tmp_path, "counted", seed=0)
    trusted = signing.load_public_key(public_key)
    device = tmp_path / "device"
    with StandIn(server.url).running() as stand_in, Client(stand_in.url) as client:
        assert edge.sync(client, parse_ref("counted@production"), device, trusted).changed
        again = edge.sync(client, parse_ref("counted@production"), device, trusted)
        assert not again.changed
        assert stand_in.hits == {"info": 2, "download": 1}


def test_interrupted_download_leaves_the_old_bundle_running(
    server: RunningServer, tmp_path: Path, public_key: Path
) -> None:
    v1_model = register(server, tmp_path, "cut", seed=0)
    trusted = signing.load_public_key(public_key)
    device = tmp_path / "device"
    with StandIn(server.url).running() as stand_in, Client(stand_in.url) as client:
        edge.sync(client, parse_ref("cut@production"), device, trusted)
        before = edge.current_digest(device)
        register(server, tmp_path, "cut", seed=1)
        stand_in.cut = True
        with pytest.raises(ShipyardError, match="broke off"):
            edge.sync(client, parse_ref("cut@production"), device, trusted)
        assert stand_in.hits["download"] == 2
    assert edge.current_digest(device) == before
    assert not (device / "previous").exists()
    assert leftovers(device) == []
    assert [p.name for p in (device / "bundles").iterdir()] == [before]
    folder = edge.current_folder(device)
    model = edge_runner.BundleModel(folder, edge_runner.verify_files(folder))
    answer = model.predict(edge_runner.Rows(ROWS))
    assert answer["outputs"] == onnx_answers(v1_model, ROWS)


def test_a_bundle_signed_by_an_untrusted_key_is_never_installed(
    server: RunningServer, tmp_path: Path
) -> None:
    register(server, tmp_path, "untrusted", seed=0)
    stranger = signing.create_key(tmp_path / "stranger", "default")
    device = tmp_path / "device"
    with Client(server.url) as client, pytest.raises(IntegrityError, match="trusted key"):
        edge.sync(client, parse_ref("untrusted@production"), device,
                  signing.load_public_key(stranger.public_path))  # fmt: skip
    assert not (device / "current").exists()
    assert list((device / "bundles").iterdir()) == []
    assert leftovers(device) == []


def test_edge_run_refuses_a_bundle_tampered_on_the_device(
    server: RunningServer, tmp_path: Path, public_key: Path
) -> None:
    register(server, tmp_path, "tampered", seed=0)
    device = tmp_path / "device"
    with Client(server.url) as client:
        edge.sync(client, parse_ref("tampered@production"), device,
                  signing.load_public_key(public_key))  # fmt: skip
    model = edge.current_folder(device) / "model.onnx"
    damaged = bytearray(model.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    model.write_bytes(bytes(damaged))
    done = cli("edge", "run", "--dir", str(device), "--input",
               str(write_rows(tmp_path / "rows.csv", ROWS)))  # fmt: skip
    assert done.returncode == 1
    assert "model.onnx" in done.stderr and "tampered" in done.stderr
    assert done.stdout == ""
    with Client(server.url) as client:  # the same digest, but damaged: fetched again
        repaired = edge.sync(client, parse_ref("tampered@production"), device,
                             signing.load_public_key(public_key))  # fmt: skip
    assert repaired.changed
    folder = edge.current_folder(device)
    assert edge_runner.verify_files(folder)["model"] == "tampered"


def test_bundle_command_against_a_server_writes_its_signed_zip(
    server: RunningServer, tmp_path: Path, public_key: Path
) -> None:
    register(server, tmp_path, "written", seed=0)
    output = tmp_path / "written.zip"
    done = cli("bundle", "written@production", "--output", str(output), "--json",
               url=server.url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    with Client(server.url) as client:
        info = client.bundle_info("written", "production")
    assert summary["digest"] == info["digest"] and summary["size"] == info["size"]
    from shipyard.packaging.bundle import unpack_verified

    manifest = unpack_verified(output, signing.load_public_key(public_key), tmp_path / "out")
    assert manifest["version"] == 1
    refused = cli("bundle", "written@production", "--output", str(output),
                  "--sign-key", "default", url=server.url)  # fmt: skip
    assert refused.returncode == 1 and "--sign-key signs locally" in refused.stderr


def test_viewers_and_predictors_scoped_to_the_model_may_fetch_bundles(tmp_path: Path) -> None:
    from shipyard.config import Settings
    from shipyard.registry.service import Registry
    from shipyard.security.keys import KeyStore

    home = tmp_path / "home"
    signing.create_key(home, "default")
    registry = Registry.open(Settings(home=home))
    try:
        path = write_onnx_classifier(tmp_path / "model")
        registry.register(path, records.RegistrationOptions(name="scoped", aliases=["edge"]))
        keys = KeyStore(registry.sessions)
        tokens = {
            "viewer": keys.create("viewer", created_by="t")[0],
            "predictor": keys.create("predictor", created_by="t", models=["scoped"])[0],
            "other model": keys.create("predictor", created_by="t", models=["other"])[0],
        }
    finally:
        registry.close()
    expected = {"viewer": 200, "predictor": 200, "other model": 403, "anonymous": 401}
    with running_server({"SHIPYARD_HOME": str(home)}) as running:
        found = {}
        for who in expected:
            token = tokens.get(who)
            headers = {"authorization": f"Bearer {token}"} if token else {}
            found[who] = [
                httpx.get(f"{running.url}/api/models/scoped/bundles/edge{tail}", headers=headers,
                          timeout=30).status_code
                for tail in ("", "/download")
            ]  # fmt: skip
    assert found == {who: [status, status] for who, status in expected.items()}
