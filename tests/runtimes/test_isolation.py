"""A model's code never runs in the server: not when it is registered, not for drift.

Every test talks to a real `shipyard server` over REST with a deployer key, and
uploads a file the way `shipyard.Client.register` does (a folder as a tar).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import select
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests import fixtures
from tests.security.conftest import KeyedHome, make_keyed_home
from tests.server import RunningServer, running_server

MEMORY_LIMIT = 2 * 1024**3


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> KeyedHome:
    return make_keyed_home(tmp_path_factory.mktemp("isolation") / "home")


@pytest.fixture(scope="module")
def server(keyed: KeyedHome) -> Iterator[RunningServer]:
    env = {
        **keyed.env,
        "SHIPYARD_ISOLATION_MEMORY_BYTES": str(MEMORY_LIMIT),
        "SHIPYARD_PREDICTION_LOG_FLUSH_SECONDS": "0.1",
    }
    with running_server(env) as running:
        yield running


def register(
    server: RunningServer, keyed: KeyedHome, name: str, path: Path, example: Path | None = None
) -> httpx.Response:
    """POST the model as `shipyard.Client.register` does, with the deployer's key."""
    if path.is_dir():
        packed = io.BytesIO()
        with tarfile.open(fileobj=packed, mode="w") as archive:
            archive.add(path, arcname=".")
        files: dict[str, Any] = {"artifact": (f"{path.name}.tar", packed.getvalue())}
    else:
        files = {"artifact": (path.name, path.read_bytes())}
    if example is not None:
        files["example"] = (example.name, example.read_bytes())
    return httpx.post(
        f"{server.url}/api/models/{name}/versions",
        files=files,
        data={"options": "{}", "folder": str(path.is_dir()).lower()},
        headers={"Authorization": f"Bearer {keyed.tokens['deployer']}"},
        timeout=120,
    )


class Payload:
    """A pickle whose loading runs `code` (what `joblib.load` of an upload used to run)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


def write_payload(folder: Path, code: str, name: str = "model.pkl") -> Path:
    path = folder / name
    path.write_bytes(pickle.dumps(Payload(code)))
    return path


def test_a_pickle_runs_in_a_throwaway_process_without_the_servers_settings(
    server: RunningServer, keyed: KeyedHome, tmp_path: Path
) -> None:
    seen = tmp_path / "seen.json"
    code = (
        "import json, os\n"
        f"json.dump({{'pid': os.getpid(), 'env': sorted(os.environ), 'cwd': os.getcwd()}},"
        f" open({str(seen)!r}, 'w'))\n"
    )
    response = register(server, keyed, "payload", write_payload(tmp_path, code))

    assert response.status_code == 400, response.text  # it unpickles to None: no predict()
    assert "holds a NoneType, which has no predict()" in response.json()["error"]
    found = json.loads(seen.read_text())
    assert found["pid"] != server.process.pid
    assert [name for name in found["env"] if name.startswith("SHIPYARD_")] == []
    assert found["cwd"] != os.getcwd()
    assert not Path(found["cwd"]).exists()  # the throw-away folder went with the process


def test_a_pickle_that_sleeps_forever_is_refused_at_the_time_limit(
    keyed: KeyedHome, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    code = (
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(3600)\n"
    )
    with running_server({**keyed.env, "SHIPYARD_ISOLATION_TIMEOUT": "3"}) as strict:
        started = time.monotonic()
        response = register(strict, keyed, "sleeper", write_payload(tmp_path, code))
        took = time.monotonic() - started

        assert response.status_code == 400, response.text
        assert response.json()["error"] == (
            "inspecting the model took longer than 3 s (SHIPYARD_ISOLATION_TIMEOUT)"
        )
        assert took < 60  # 3 s and a process start, on a busy machine
        pid = int(pid_file.read_text())
        assert pid != strict.process.pid
        assert not _alive(pid), "the sleeping process outlived the refusal"
        assert httpx.get(f"{strict.url}/api/health").json() == {"status": "ok"}


def test_a_pickle_over_the_memory_limit_is_refused(
    server: RunningServer, keyed: KeyedHome, tmp_path: Path
) -> None:
    path = tmp_path / "huge.pkl"

    class Huge:
        def __reduce__(self) -> tuple[Any, ...]:
            return (np.zeros, ((1024**3,),))  # 8 GiB of float64

    path.write_bytes(pickle.dumps(Huge()))
    response = register(server, keyed, "huge", path)

    assert response.status_code == 400, response.text
    assert response.json()["error"] == (
        "inspecting the model needed more than 2048 MiB of memory (SHIPYARD_ISOLATION_MEMORY_BYTES)"
    )


def test_skops_trusts_library_classes_never_functions(
    server: RunningServer, keyed: KeyedHome, tmp_path: Path
) -> None:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    features, labels = fixtures.training_data()
    # On predict, FunctionTransformer calls numpy.save(X, ...): a file written anywhere.
    writer = Pipeline(
        [("write", FunctionTransformer(func=np.save)), ("model", LogisticRegression())]
    )
    writer.steps[1] = ("model", LogisticRegression().fit(features, labels))
    sio.dump(writer, tmp_path / "writer.skops")

    refused = register(server, keyed, "writer", tmp_path / "writer.skops")
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"].startswith(
        "writer.skops contains types Shipyard will not load from a skops file: numpy.save ("
    )

    # A forest needs sklearn's tree class, outside skops' defaults: a class, so trusted.
    accepted = register(server, keyed, "forest", fixtures.write_skops_model(tmp_path / "forest"))
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["flavor_details"]["trusted_types"] == ["sklearn.tree._tree.Tree"]


@pytest.mark.parametrize("outside", ["../../..", "ABSOLUTE"])
def test_an_mlflow_folder_naming_a_path_outside_itself_is_refused(
    server: RunningServer, keyed: KeyedHome, tmp_path: Path, outside: str
) -> None:
    secret = tmp_path / "secret.json"  # shaped like an input example, outside the folder
    secret.write_text(json.dumps({"columns": ["f0"], "data": [[1.0]]}))
    target = str(secret) if outside == "ABSOLUTE" else outside
    folder = fixtures.write_mlflow_model(tmp_path)
    meta = yaml.safe_load((folder / "MLmodel").read_text())
    meta["saved_input_example_info"]["artifact_path"] = target
    (folder / "MLmodel").write_text(yaml.safe_dump(meta))

    response = register(server, keyed, "escaper", folder)

    assert response.status_code == 400, response.text
    assert response.json()["error"] == (
        "MLmodel names a path outside the model folder: "
        f"saved_input_example_info.artifact_path = {target!r}"
    )


def test_an_mlflow_folder_as_mlflow_writes_it_is_accepted(
    server: RunningServer, keyed: KeyedHome, tmp_path: Path
) -> None:
    response = register(server, keyed, "mlflow-ok", fixtures.write_mlflow_model(tmp_path))
    assert response.status_code == 201, response.text
    assert response.json()["flavor"] == "mlflow"


PID_MODEL = """
import os


class PidModel:
    def load(self):
        pass

    def predict(self, inputs):
        with open({target!r}, "a") as out:
            out.write(f"{{os.getpid()}}\\n")
        return inputs["f0"] * 2
"""

MANIFEST = """
name: pid-api
model: pid
routes: [{version: 1}]
monitoring:
  sample: 1.0
  drift: {window: 1h, min_rows: 50}
"""


def test_drift_reference_predictions_run_outside_the_server(
    server: RunningServer, keyed: KeyedHome, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    model = tmp_path / "pid_model.py"
    model.write_text(PID_MODEL.format(target=str(pids)))
    example = fixtures.write_example_csv(tmp_path, rows=100)
    assert register(server, keyed, "pid", model, example).status_code == 201

    headers = {"Authorization": f"Bearer {keyed.tokens['deployer']}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as http:
        applied = http.post(
            "/api/deployments",
            content=MANIFEST.encode(),
            headers={"content-type": "application/yaml"},
        )
        assert applied.status_code == 200, applied.text
        features, _ = fixtures.training_data(rows=60, seed=5)
        for start in range(0, 60, 2):
            rows = features[start : start + 2]
            body = {"inputs": [{"name": n, "datatype": "FP64", "shape": [2], "data": rows[:, j]
                                .tolist()} for j, n in enumerate(fixtures.FEATURES)]}  # fmt: skip
            answered = http.post("/v2/models/pid-api/infer", json=body)
            assert answered.status_code == 200, answered.text
        deadline = time.monotonic() + 30
        while len(http.get("/api/predictions", params={"limit": 100}).json()) < 30:
            assert time.monotonic() < deadline, "requests never reached the prediction log"
        served = set(pids.read_text().split())

        checked = http.post("/api/deployments/pid-api/drift", params={"window": "1h"})

        assert checked.status_code == 200, checked.text
        (report,) = checked.json()
        assert report["result"]["output"] is not None  # the reference sample was predicted
    predicted = set(pids.read_text().split())
    assert predicted - served, "the reference sample was not predicted by the model"
    assert str(server.process.pid) not in predicted


def _alive(pid: int) -> bool:
    """Whether a process is still there 10 s on: waited for through a pidfd, no polling."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)  # readable once the process has exited
        return not poller.poll(10_000)
    finally:
        os.close(pidfd)
