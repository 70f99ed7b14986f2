"""The `shipyard` command, run as a real subprocess, locally and against a real server."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipyard.client import Client
from shipyard.errors import NotFound
from shipyard.registry.records import RegistrationOptions
from tests.fixtures import write_example_csv, write_sklearn_model
from tests.server import RunningServer, running_server, shipyard_command


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*shipyard_command(), *args],
        env={**os.environ, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def home_env(tmp_path: Path) -> dict[str, str]:
    env = {"SHIPYARD_HOME": str(tmp_path / "home"), "SHIPYARD_USER": "tester"}
    os.environ.pop("SHIPYARD_URL", None)
    return env


@pytest.fixture
def server(home_env: dict[str, str]) -> Iterator[RunningServer]:
    with running_server(home_env) as running:
        yield running


def test_local_register_list_show_alias_archive(home_env: dict[str, str], tmp_path: Path) -> None:
    model = write_sklearn_model(tmp_path)
    example = write_example_csv(tmp_path)
    registered = run_cli(
        home_env,
        "models", "register", str(model), "--name", "fraud", "--alias", "production",
        "--tag", "team=risk", "--metric", "auc=0.91", "--signature-from", str(example),
        "--description", "first", "--json",
    )  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    version = json.loads(registered.stdout)
    assert version["version"] == 1
    assert version["aliases"] == ["production"]
    assert version["created_by"] == "tester"
    assert version["lineage"]["metrics"] == {"auc": 0.91}
    assert version["reference_sample"]["rows"] == 20

    second = run_cli(home_env, "models", "register", str(model), "--name", "fraud", "--json")
    assert json.loads(second.stdout)["version"] == 2

    table = run_cli(home_env, "models", "list")
    assert table.returncode == 0
    assert "fraud" in table.stdout and "production→1" in table.stdout

    listed = json.loads(run_cli(home_env, "models", "list", "--json").stdout)
    assert listed["models"][0]["latest_version"] == 2

    shown = run_cli(home_env, "models", "show", "fraud@production")
    assert shown.returncode == 0
    assert "fraud:1" in shown.stdout and "f0" in shown.stdout

    moved = run_cli(home_env, "models", "alias", "fraud", "production", "2")
    assert moved.returncode == 0 and "version 2" in moved.stdout
    archived = run_cli(home_env, "models", "archive", "fraud:1", "--json")
    assert json.loads(archived.stdout)["archived"] is True
    detail = json.loads(run_cli(home_env, "models", "show", "fraud", "--json").stdout)
    assert [(v["version"], v["archived"]) for v in detail["versions"]] == [(1, True), (2, False)]


def test_errors_are_one_line_with_nonzero_exit(home_env: dict[str, str], tmp_path: Path) -> None:
    missing = run_cli(home_env, "models", "show", "ghost")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: model 'ghost' not found"

    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    refused = run_cli(home_env, "models", "register", str(notes), "--name", "n")
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1
    # The file by name: the same message goes to REST callers, who must not learn paths.
    assert (
        refused.stderr.startswith("error: notes.txt is not a model") and "tried" in refused.stderr
    )
    assert str(tmp_path) not in refused.stderr

    bad_pair = run_cli(home_env, "models", "register", str(notes), "--name", "n", "--tag", "x")
    assert bad_pair.returncode == 1
    assert "--tag expects KEY=VALUE" in bad_pair.stderr


def test_cli_talks_to_server_when_url_is_set(
    server: RunningServer, home_env: dict[str, str], tmp_path: Path
) -> None:
    # The CLI gets a different, empty home: everything must go through the server.
    remote_env = {"SHIPYARD_URL": server.url, "SHIPYARD_HOME": str(tmp_path / "elsewhere")}
    model = write_sklearn_model(tmp_path)
    registered = run_cli(remote_env, "models", "register", str(model), "--name", "fraud", "--json")
    assert registered.returncode == 0, registered.stderr
    assert json.loads(registered.stdout)["lineage"]["source_uri"] == model.resolve().as_uri()
    assert run_cli(remote_env, "models", "alias", "fraud", "production", "1").returncode == 0

    with Client(server.url) as client:
        assert client.get_version("fraud@production").version == 1
    local = run_cli(home_env, "models", "show", "fraud@production", "--json")
    assert json.loads(local.stdout)["version"] == 1
    assert not (tmp_path / "elsewhere").exists()

    missing = run_cli(remote_env, "models", "show", "ghost")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: model 'ghost' not found"


def test_python_client_round_trip(server: RunningServer, tmp_path: Path) -> None:
    with Client(server.url) as client:
        assert client.health() == {"status": "ok"}
        folder = tmp_path / "pymodel"
        folder.mkdir()
        (folder / "model.py").write_text(
            "class Echo:\n    def load(self):\n        pass\n\n"
            "    def predict(self, rows):\n        return rows\n"
        )
        version = client.register(folder, RegistrationOptions(name="echo", tags={"k": "v"}))
        assert version.flavor == "python"
        assert version.tags == {"k": "v"}
        assert client.list_models(tag="k=v").models[0].name == "echo"
        assert client.set_alias("echo", "staging", 1).version == 1
        assert client.get_model("echo").aliases == {"staging": 1}
        with pytest.raises(NotFound):
            client.get_version("echo:5")
        client.delete_alias("echo", "staging")
        assert client.archive_version("echo:1").archived is True
        assert client.archive_model("echo").archived is True
