"""A version saved by an older scikit-learn serves from its own environment, built with uv
from the release it recorded, and answers as that release does; a version whose
environment cannot be built fails alone, saying why, while the others serve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import sklearn

from shipyard.client import Client, LocalClient
from shipyard.config import Settings
from shipyard.errors import EnvironmentUnavailable
from shipyard.registry.records import RegistrationOptions
from tests import fixtures
from tests.polling import eventually
from tests.server import RunningServer, running_server, shipyard_command

OLD_RELEASE = "1.5.2"  # has cp311 wheels; the server runs 1.9.x
# Hand-written: two features, the label is 1 when their sum is positive.
FEATURES = [
    [-2.0, -1.0], [-1.5, 0.5], [-1.0, -0.5], [-0.5, -1.5], [0.5, -1.5], [-0.2, 0.1],
    [0.3, 0.4], [1.0, -0.5], [1.5, 0.5], [2.0, 1.0], [0.5, 1.5], [-0.5, 1.5],
]  # fmt: skip
LABELS = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
ROWS = [[-0.7, 0.2], [0.1, 0.3], [1.2, -1.0], [-3.0, 2.5], [0.05, -0.04]]

# Runs on the old release's own interpreter: train, save, and say what it predicts.
TRAIN = """
import json, sys
import joblib
import sklearn
from sklearn.linear_model import LogisticRegression

features, labels, rows, model_path, answers_path = json.loads(sys.argv[1])
model = LogisticRegression(C=0.7).fit(features, labels)
joblib.dump(model, model_path)
with open(answers_path, "w") as out:
    json.dump({
        "release": sklearn.__version__,
        "predict": model.predict(rows).tolist(),
        "predict_proba": model.predict_proba(rows).tolist(),
    }, out)
"""


def _uv() -> str:
    return str(Path(sys.executable).parent / "uv")


@pytest.fixture(scope="module")
def old_release_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """A classifier trained and pickled by scikit-learn OLD_RELEASE in an environment of
    its own, and that release's own answers on ROWS."""
    folder = tmp_path_factory.mktemp("old-release")
    venv = folder / "venv"
    # uv's default cache (~/.cache/uv) is shared by this fixture, the server's build and
    # later runs, so only the first ever run downloads the wheels.
    subprocess.run([_uv(), "venv", "--python", sys.executable, str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [_uv(), "pip", "install", "--python", str(python), f"scikit-learn=={OLD_RELEASE}"],
        check=True,
    )
    model, answers = folder / "model.joblib", folder / "answers.json"
    arguments = json.dumps([FEATURES, LABELS, ROWS, str(model), str(answers)])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(python), "-c", TRAIN, arguments], check=True, env=env)
    document = json.loads(answers.read_text())
    assert document["release"] == OLD_RELEASE != sklearn.__version__
    return model, document


@pytest.fixture
def server(
    tmp_path: Path, old_release_model: tuple[Path, dict[str, object]]
) -> Iterator[RunningServer]:
    home = tmp_path / "home"
    model, _ = old_release_model
    with LocalClient.open(Settings(home=home)) as local:
        old = local.register(model, RegistrationOptions(name="old"))
        assert old.environment is not None
        assert old.environment.requirements == [f"scikit-learn=={OLD_RELEASE}"]
        assert old.environment.source == "detected"
        current = fixtures.write_sklearn_model(tmp_path / "current")
        local.register(current, RegistrationOptions(name="current"))
    # The broken version goes through the command line, as a user registers one.
    pins = tmp_path / "pins.txt"
    pins.write_text("# a release that does not exist\nscikit-learn==0.0.999\n")
    subprocess.run(
        [*shipyard_command(), "models", "register", str(current), "--name", "broken",
         "--requirements", str(pins)],
        check=True, env={**os.environ, "SHIPYARD_HOME": str(home)}, capture_output=True,
    )  # fmt: skip
    with running_server({"SHIPYARD_HOME": str(home)}) as running:
        yield running


def _infer(server: RunningServer, model: str, rows: list[list[float]]) -> httpx.Response:
    body = {
        "inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                    "data": rows}],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }  # fmt: skip
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=600)


def _once_loaded(server: RunningServer, model: str, rows: list[list[float]]) -> httpx.Response:
    """The first answer that is not "still loading": a request starts the version's load
    (and its environment's build) and waits for it up to the server's request timeout."""

    def settled() -> httpx.Response | None:
        answer = _infer(server, model, rows)
        return None if "still loading" in answer.text else answer

    return eventually(settled, f"{model} to load", timeout=600)


@pytest.mark.timeout(900)
def test_an_older_release_serves_its_own_answers(
    server: RunningServer, old_release_model: tuple[Path, dict[str, object]]
) -> None:
    _, expected = old_release_model
    answer = _once_loaded(server, "old", ROWS)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["predict"]["data"] == expected["predict"]
    served = np.asarray(outputs["predict_proba"]["data"]).reshape(len(ROWS), 2)
    np.testing.assert_allclose(served, np.asarray(expected["predict_proba"]), rtol=0, atol=1e-12)

    with Client(server.url) as client:
        document = client.environment("old:1")
    here = document["here"]
    assert here["built"] and here["needed"]
    assert here["unsatisfied"] == [f"scikit-learn=={OLD_RELEASE}"]
    assert Path(here["log"]).is_file()
    # The worker runs on the environment's interpreter, not the server's.
    pythons = {p.cmdline()[0] for p in psutil.Process(server.process.pid).children(True)}
    assert here["python"] in pythons

    shown = subprocess.run(
        [*shipyard_command(), "env", "show", "old:1"],
        env={**os.environ, "SHIPYARD_URL": server.url}, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    assert f"scikit-learn=={OLD_RELEASE}" in shown.stdout and "built" in shown.stdout


@pytest.mark.timeout(900)
def test_an_environment_that_cannot_be_built_fails_only_its_version(
    server: RunningServer,
) -> None:
    broken = _once_loaded(server, "broken", ROWS)
    assert broken.status_code == 503, broken.text
    error = broken.json()["error"]
    assert "broken:1" in error and "could not be built" in error, error
    assert "scikit-learn==0.0.999" in error and ".log" in error, error

    current = _infer(server, "current", fixtures.training_data(rows=2)[0].tolist())
    assert current.status_code == 200, current.text

    again = _infer(server, "broken", ROWS)  # remembered: the answer comes without a rebuild
    assert again.status_code == 503 and "could not be built" in again.json()["error"]

    with Client(server.url) as client:
        with pytest.raises(EnvironmentUnavailable, match=r"0\.0\.999"):
            client.build_environment("broken:1")
        assert client.environment("broken:1")["here"]["failure"] is not None


@pytest.mark.timeout(900)
def test_a_batch_job_scores_an_older_release_on_its_own_environment(
    tmp_path: Path, old_release_model: tuple[Path, dict[str, object]]
) -> None:
    """Batch workers run on the environment's interpreter too (not multiprocessing's spawn,
    which would import the server's scikit-learn): the answers are the old release's, and
    the model is unpickled by the release that saved it (no InconsistentVersionWarning,
    which the server's release raises when it unpickles the file: shown with
    SHIPYARD_ENV_MANAGER=local)."""
    model, expected = old_release_model
    home = tmp_path / "home"
    rows = tmp_path / "rows.csv"
    rows.write_text("a,b\n" + "".join(f"{a},{b}\n" for a, b in ROWS))
    env = {**os.environ, "SHIPYARD_HOME": str(home)}
    env.pop("SHIPYARD_URL", None)

    def batch(manager: str, output: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*shipyard_command(), "batch", "run", "old:1", "--input", str(rows),
             "--output", str(output), "--format", "jsonl", "--outputs", "predict,predict_proba",
             "--workers", "1"],
            env={**env, "SHIPYARD_ENV_MANAGER": manager}, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip

    subprocess.run(
        [*shipyard_command(), "models", "register", str(model), "--name", "old"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    own = batch("uv", tmp_path / "own")
    assert own.returncode == 0, own.stderr
    assert "InconsistentVersionWarning" not in own.stderr
    lines = (tmp_path / "own" / "part-000000.jsonl").read_text().splitlines()
    scored = [json.loads(line) for line in lines]
    assert [r["predict"] for r in scored] == expected["predict"]
    probabilities = [[r["predict_proba_0"], r["predict_proba_1"]] for r in scored]
    np.testing.assert_allclose(probabilities, expected["predict_proba"], rtol=0, atol=1e-12)

    # Export converts it on its own environment too: the converter saw the old release.
    exported = subprocess.run(
        [*shipyard_command(), "export", "old:1", "--to", "onnx", "--data", str(rows)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    assert f"sklearn {OLD_RELEASE}" in exported.stdout

    here = batch("local", tmp_path / "here")  # the server's release, for contrast
    assert here.returncode == 0, here.stderr
    assert "InconsistentVersionWarning" in here.stderr
