"""Requests a version fails on are in the prediction log (inputs, marked failed), so drift
after a failed canary tests every input the version was sent and says how many failed
(issue 22: a rolled-back candidate showed "75% of features drifted" on the biased sample
of only the requests it had answered)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import numpy as np

from shipyard.config import Settings
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import RegistrationOptions
from shipyard.registry.service import Registry
from tests import fixtures
from tests.polling import eventually
from tests.server import running_server, shipyard_command

FRAGILE_MODEL = '''
class Fragile:
    """Fails on any row whose f0 is above 0.5, like a candidate with a bug in one branch."""

    def load(self):
        pass

    def predict(self, inputs):
        f0 = inputs["f0"]
        if (f0 > 0.5).any():
            raise RuntimeError("branch not implemented")
        return f0 * 2
'''

MANIFEST = """
name: fragile-api
model: fragile
routes: [{version: 1}]
monitoring:
  sample: 1.0
  drift: {window: 1h, min_rows: 20}
"""


def test_failed_requests_are_logged_and_drift_says_how_many(tmp_path: Path) -> None:
    home = tmp_path / "home"
    model = tmp_path / "fragile.py"
    model.write_text(FRAGILE_MODEL)
    example = fixtures.write_example_csv(tmp_path, rows=200)
    registry = Registry.open(Settings(home=home))
    registry.register(model, RegistrationOptions(name="fragile"), example)
    registry.deployments.apply(parse_manifest(MANIFEST))
    registry.close()

    features, _ = fixtures.training_data(rows=120, seed=3)  # same distribution as the example
    env = {"SHIPYARD_HOME": str(home), "SHIPYARD_PREDICTION_LOG_FLUSH_SECONDS": "0.1"}
    failed_rows = answered_rows = 0
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for start in range(0, 120, 2):
            rows = features[start : start + 2]
            body = {"inputs": [{"name": n, "datatype": "FP64", "shape": [2], "data": rows[:, j]
                                .tolist()} for j, n in enumerate(fixtures.FEATURES)]}  # fmt: skip
            answer = http.post("/v2/models/fragile-api/infer", json=body)
            if np.any(rows[:, 0] > 0.5):
                assert answer.status_code == 500, answer.text
                assert answer.headers["x-shipyard-model-version"] == "fragile:1"
                failed_rows += 2
            else:
                assert answer.status_code == 200, answer.text
                answered_rows += 2
        assert failed_rows and answered_rows  # the seed gives both kinds

        def logged() -> list[dict[str, object]] | None:
            records = http.get("/api/predictions", params={"limit": 200}).json()
            return records if len(records) == 60 else None

        records = eventually(logged, "every request in the prediction log", timeout=30)
        failed = [r for r in records if r["failed"]]
        assert sum(int(str(r["rows"])) for r in failed) == failed_rows
        assert all(r["outputs"] == {} and set(r["inputs"]) == set(fixtures.FEATURES)  # type: ignore[arg-type]
                   for r in failed)  # fmt: skip
        assert all(r["outputs"] for r in records if not r["failed"])

        done = subprocess.run(
            [*shipyard_command(), "monitor", "drift", "fragile-api", "--window", "1h",
             "--html", str(tmp_path / "drift.html"), "--json"],
            env={**os.environ, "SHIPYARD_URL": server.url},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        (report,) = json.loads(done.stdout)["reports"]
        assert report["current_rows"] == 120  # every input the version was sent
        assert report["result"]["failed_rows"] == failed_rows
        # The inputs are those of the reference distribution: no drift once nothing is
        # left out (only the answered ones, all with f0 <= 0.5, would look shifted).
        assert not report["drifted"], report["result"]
        assert done.returncode == 0, done.stderr
        page = (tmp_path / "drift.html").read_text()
        assert f"{failed_rows} of them from requests the version failed on" in page

        table = subprocess.run(
            [*shipyard_command(), "monitor", "drift", "fragile-api", "--window", "1h",
             "--html", str(tmp_path / "again.html")],
            env={**os.environ, "SHIPYARD_URL": server.url, "COLUMNS": "200"},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert f"{failed_rows} of them from requests the version failed on" in " ".join(
            table.stdout.split()
        ), table.stdout
