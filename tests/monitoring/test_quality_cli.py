"""`shipyard monitor quality` says why AUC is empty rather than leaving a blank column
(issue 22): AUC needs class scores (predict_proba) in the prediction log."""

from __future__ import annotations

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

LABELS_ONLY = '''
class Sign:
    """A classifier that answers labels only: no predict_proba, so no scores to rank."""

    def load(self):
        pass

    def predict(self, inputs):
        return (inputs["f0"] > 0).astype("int64")
'''

MANIFEST = """
name: sign-api
model: sign
routes: [{version: 1}]
monitoring: {sample: 1.0}
"""


def test_quality_explains_an_empty_auc(tmp_path: Path) -> None:
    home = tmp_path / "home"
    model = tmp_path / "sign.py"
    model.write_text(LABELS_ONLY)
    registry = Registry.open(Settings(home=home))
    registry.register(model, RegistrationOptions(name="sign"), fixtures.write_example_csv(tmp_path))
    registry.deployments.apply(parse_manifest(MANIFEST))
    registry.close()

    features, _ = fixtures.training_data(rows=20, seed=4)
    env = {"SHIPYARD_HOME": str(home), "SHIPYARD_PREDICTION_LOG_FLUSH_SECONDS": "0.1"}
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        items = []
        for row in features:
            body = {"inputs": [{"name": n, "datatype": "FP64", "shape": [1], "data": [row[j]]}
                               for j, n in enumerate(fixtures.FEATURES)]}  # fmt: skip
            answer = http.post("/v2/models/sign-api/infer", json=body)
            assert answer.status_code == 200, answer.text
            truth = int(row[0] + row[1] > 0)  # not what the model answers: accuracy < 1
            items.append({"request_id": answer.headers["x-request-id"], "label": truth})
        eventually(
            lambda: len(http.get("/api/predictions", params={"limit": 50}).json()) == 20 or None,
            "the requests in the prediction log",
            timeout=30,
        )
        assert http.post("/api/feedback", json={"items": items}).json()["matched"] == 20

        done = subprocess.run(
            [*shipyard_command(), "monitor", "quality", "sign-api", "--window", "1h"],
            env={**os.environ, "SHIPYARD_URL": server.url, "COLUMNS": "200"},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = np.mean([(r[0] > 0) == (r[0] + r[1] > 0) for r in features])
    assert f"{expected:.4g}" in done.stdout  # accuracy, from the hand-computed agreement
    assert "auc is empty" in done.stderr and "predict_proba" in done.stderr
