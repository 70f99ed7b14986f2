"""Every command honours SHIPYARD_URL, SHIPYARD_API_KEY and SHIPYARD_CA_BUNDLE, and none
makes up an empty local home (issue 22: `predict` sent no key; `batch list` and `audit`
ignored the URL and printed empty tables from a fresh ./.shipyard)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from shipyard.client import Client
from shipyard.errors import ShipyardError
from tests.certificates import make_certificates
from tests.fixtures import write_example_csv, write_sklearn_model
from tests.security.conftest import make_keyed_home
from tests.server import run_clean_cli, running_server

run_cli = run_clean_cli


def test_commands_against_a_keyed_server_use_url_and_key_and_make_no_home(
    tmp_path: Path,
) -> None:
    keyed = make_keyed_home(tmp_path / "server-home")
    model = write_sklearn_model(tmp_path)
    example = write_example_csv(tmp_path)
    workdir = tmp_path / "elsewhere"  # where a newcomer types the commands
    workdir.mkdir()
    with running_server(keyed.env) as server:
        remote = {"SHIPYARD_URL": server.url, "SHIPYARD_API_KEY": keyed.tokens["admin"]}

        def ok(*args: str) -> str:
            done = run_cli(remote, workdir, *args)
            assert done.returncode == 0, f"{args}: {done.stderr}"
            return done.stdout

        ok("models", "register", str(model), "--name", "fraud", "--alias", "production",
           "--signature-from", str(example))  # fmt: skip
        assert [m["name"] for m in json.loads(ok("models", "list", "--json"))["models"]] == [
            "fraud"
        ]
        answer = json.loads(ok("predict", "fraud", "--input", str(example), "--json"))
        assert len(answer["outputs"]["predict"]) == 20
        key_ids = {k["id"] for k in json.loads(ok("keys", "list", "--json"))}
        with Client(server.url, api_key=keyed.tokens["admin"]) as client:
            assert key_ids == {k.id for k in client.list_keys()}
        events = [json.loads(line) for line in ok("audit", "--json").splitlines()]
        registered = [e for e in events if e["action"] == "version.register"]
        assert registered and registered[0]["actor"].endswith("(admin)")
        ok("deployments", "list")

        refused = run_cli(remote, workdir, "batch", "list")
        assert refused.returncode != 0
        assert "works next to the registry database" in refused.stderr
        assert "SHIPYARD_URL" in refused.stderr

        keyless = run_cli({"SHIPYARD_URL": server.url}, workdir, "predict", "fraud",
                          "--input", str(example))  # fmt: skip
        assert keyless.returncode != 0
        assert "SHIPYARD_API_KEY" in keyless.stderr
        assert "Traceback" not in keyless.stderr

    assert not (workdir / ".shipyard").exists()
    assert sorted(p.name for p in workdir.iterdir()) == []


def test_client_takes_url_key_and_ca_from_arguments_or_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed = make_keyed_home(tmp_path / "home")
    ca, cert, key = make_certificates(tmp_path)
    with running_server(keyed.env, "--tls-cert", str(cert), "--tls-key", str(key)) as server:
        with Client(server.url, api_key=keyed.tokens["viewer"], ca_bundle=ca) as client:
            assert client.list_models().models == []
        with (
            pytest.raises(ShipyardError, match="SHIPYARD_API_KEY"),
            Client(server.url, ca_bundle=ca) as client,
        ):
            client.list_models()
        untrusted = Client(server.url, api_key=keyed.tokens["viewer"])  # system CAs only
        with pytest.raises(ShipyardError, match="cannot reach"), untrusted:
            untrusted.list_models()

        monkeypatch.setenv("SHIPYARD_URL", server.url)
        monkeypatch.setenv("SHIPYARD_API_KEY", keyed.tokens["viewer"])
        monkeypatch.setenv("SHIPYARD_CA_BUNDLE", str(ca))
        with Client() as client:
            assert client.list_models().models == []
        workdir = tmp_path / "cli"
        workdir.mkdir()
        listed = run_cli(
            {
                "SHIPYARD_URL": server.url,
                "SHIPYARD_API_KEY": keyed.tokens["viewer"],
                "SHIPYARD_CA_BUNDLE": str(ca),
            },
            workdir,
            "models",
            "list",
            "--json",
        )
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout)["models"] == []
        assert httpx.get(f"{server.url}/v2/health/live", verify=False).status_code == 200


def test_local_read_commands_without_a_home_say_so_and_create_none(tmp_path: Path) -> None:
    for command in (["batch", "list"], ["audit"], ["keys", "list"]):
        done = run_cli({}, tmp_path, *command)
        assert done.returncode != 0, command
        assert "no Shipyard registry in" in done.stderr, done.stderr
        assert "SHIPYARD_HOME" in done.stderr
    assert not (tmp_path / ".shipyard").exists()


def test_list_outputs_never_cut_an_id_at_80_columns(tmp_path: Path) -> None:
    keyed = make_keyed_home(tmp_path / "home")
    model = write_sklearn_model(tmp_path)
    example = write_example_csv(tmp_path, rows=30)
    registered = run_cli(keyed.env, tmp_path, "models", "register", str(model), "--name",
                         "a-rather-long-model-name-for-narrow-terminals")  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    job = run_cli(keyed.env, tmp_path, "batch", "run",
                  "a-rather-long-model-name-for-narrow-terminals:1",
                  "--input", str(example), "--output", str(tmp_path / "scored"),
                  "--workers", "1", "--json")  # fmt: skip
    assert job.returncode == 0, job.stderr
    job_id = json.loads(job.stdout)["id"]

    keys = run_cli(keyed.env, tmp_path, "keys", "list", columns=80)
    assert keys.returncode == 0, keys.stderr
    key_ids = [k["id"] for k in json.loads(run_cli(keyed.env, tmp_path, "keys", "list",
                                                   "--json").stdout)]  # fmt: skip
    assert len(key_ids) == 6
    for key_id in key_ids:
        assert key_id in keys.stdout
    jobs = run_cli(keyed.env, tmp_path, "batch", "list", columns=80)
    assert jobs.returncode == 0, jobs.stderr
    assert job_id in jobs.stdout
    for output in (keys.stdout, jobs.stdout):
        assert "…" not in output
        assert max(len(line) for line in output.splitlines()) <= 80


def test_audit_prints_each_change_readably(tmp_path: Path) -> None:
    home = {"SHIPYARD_HOME": str(tmp_path / "home")}
    first = write_sklearn_model(tmp_path / "a")
    second = write_sklearn_model(tmp_path / "b", seed=1)
    for model in (first, second):
        done = run_cli(home, tmp_path, "models", "register", str(model), "--name", "fraud")
        assert done.returncode == 0, done.stderr
    for version in ("1", "2"):
        done = run_cli(home, tmp_path, "models", "alias", "fraud", "production", version)
        assert done.returncode == 0, done.stderr
    shown = run_cli(home, tmp_path, "audit", columns=80)
    assert shown.returncode == 0, shown.stderr
    blocks = shown.stdout.split("\n2")  # one block per event, each starting with its time
    moved = [b for b in blocks if "alias.set  fraud@production" in b]
    assert len(moved) == 2
    assert "  version: 1 -> 2" in moved[1].splitlines()
    assert "  version=1" in moved[0].splitlines()
    registered = [b for b in blocks if "version.register  fraud:2" in b]
    assert registered and "  flavor=sklearn" in registered[0].splitlines()
