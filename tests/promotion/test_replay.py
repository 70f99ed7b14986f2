"""Replay: a candidate re-predicts what a running server logged for a deployment, and the
comparison matches what the two models, loaded here, say about the very inputs sent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from shipyard.config import IsolationLimits, Settings
from shipyard.errors import InvalidInput
from shipyard.monitoring.store import MonitoringStore, PredictionFilter
from shipyard.promotion.replay import replay
from shipyard.registry.manifest import parse_manifest
from shipyard.registry.records import ModelVersion, RegistrationOptions
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from tests import fixtures
from tests.polling import eventually
from tests.server import running_server

DEPLOYMENT = "fraud-api"
SIZES = [1, 2, 3] * 6
"""Rows per request: 18 requests, six of them with three rows."""
LIMITS = IsolationLimits(seconds=60)
DAY = 86_400.0
SAMPLED = "monitoring: {sample: 1.0}\n"
"""Every request of the deployments is written to the prediction log."""

FUSSY_MODEL = '''
import numpy as np


class Fussy:
    """Says whether f0 is positive; refuses any request of three rows."""

    def load(self):
        pass

    def predict(self, inputs):
        (values,) = inputs.values()
        if len(values) == 3:
            raise ValueError("three rows are too many")
        return (values[:, 0] > 0).astype(np.int64)
'''


@dataclass
class Served:
    registry: Registry
    store: MonitoringStore
    sent: list[np.ndarray]
    """The feature rows of each request, in the order sent."""
    champion: Path
    challenger: Path

    def version(self, number: int) -> ModelVersion:
        return self.registry.models.get_version(ModelRef("fraud", number))


def _write_challenger(folder: Path) -> Path:
    """A logistic regression of another rule (f0 - f1 > 0): it disagrees on a known share."""
    features, _ = fixtures.training_data(rows=200, seed=3)
    labels = (features[:, 0] - features[:, 1] > 0).astype(np.int64)
    path = folder / "challenger.joblib"
    joblib.dump(LogisticRegression().fit(features, labels), path)
    return path


def _body(rows: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
             "data": rows.tolist()},
        ],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """v1 served on a deployment that logs every request, v2 and v3 registered beside it."""
    folder = tmp_path_factory.mktemp("replay")
    home = folder / "home"
    registry = Registry.open(Settings(home=home))
    champion = fixtures.write_sklearn_model(folder, seed=0)  # one matrix input, input-0
    challenger = _write_challenger(folder)
    fussy = folder / "fussy.py"
    fussy.write_text(FUSSY_MODEL)
    registry.register(champion, RegistrationOptions(name="fraud"))
    # Named columns f0..f3: replay must spread the logged matrix over them.
    example = fixtures.write_example_csv(folder, rows=20)
    registry.register(challenger, RegistrationOptions(name="fraud"), example)
    registry.register(fussy, RegistrationOptions(name="fraud"))
    for name in (DEPLOYMENT, "fraud-quiet"):
        manifest = f"name: {name}\nmodel: fraud\nroutes: [{{version: 1}}]\n" + SAMPLED
        registry.deployments.apply(parse_manifest(manifest))
    store = MonitoringStore(registry.engine)
    sent = [fixtures.training_data(rows=rows, seed=500 + i)[0] for i, rows in enumerate(SIZES)]
    env = {"SHIPYARD_HOME": str(home), "SHIPYARD_PREDICTION_LOG_FLUSH_SECONDS": "0.1"}
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for rows in sent:
            answered = http.post(f"/v2/models/{DEPLOYMENT}/infer", json=_body(rows))
            assert answered.status_code == 200, answered.text
        where = PredictionFilter(deployment=DEPLOYMENT)
        eventually(
            lambda: True if len(store.predictions(where, limit=100)) == len(SIZES) else None,
            "every request in the prediction log",
        )
    try:
        yield Served(registry, store, sent, champion, challenger)
    finally:
        registry.close()


def _predictions(path: Path, sent: list[np.ndarray]) -> np.ndarray:
    model = joblib.load(path)
    return np.concatenate([model.predict(rows) for rows in sent])


def test_replaying_a_challenger_counts_its_disagreements(served: Served) -> None:
    champion = _predictions(served.champion, served.sent)
    challenger = _predictions(served.challenger, served.sent)
    differ = champion != challenger
    assert 0 < differ.sum() < len(differ)  # the comparison below means something
    flips = Counter(zip(champion[differ].tolist(), challenger[differ].tolist(), strict=True))

    result = replay(served.registry, served.store, DEPLOYMENT, served.version(2), DAY, None, LIMITS)

    assert result["kind"] == "replay" and result["deployment"] == DEPLOYMENT
    assert result["candidate"] == {"model": "fraud", "version": 2}
    assert (result["requests"], result["rows"]) == (len(SIZES), sum(SIZES))
    assert result["logged_versions"] == {"1": sum(SIZES)}
    assert result["output"] == "predict"
    assert result["agreement"] == pytest.approx(1 - differ.mean())
    assert {(f["from"], f["to"]): f["count"] for f in result["flips"]} == dict(flips)
    counts = [f["count"] for f in result["flips"]]
    assert counts == sorted(counts, reverse=True)
    assert (result["errors"], result["error_rate"], result["error_samples"]) == (0, 0.0, [])
    assert 0 < result["latency"]["p50_ms"] <= result["latency"]["p95_ms"]
    assert result["window_seconds"] == DAY and result["since"] is not None
    drift = result["output_drift"]
    assert set(drift) == {"ks", "p_value", "psi"} and drift["psi"] >= 0


def test_replaying_the_serving_version_agrees_with_its_own_log(served: Served) -> None:
    result = replay(served.registry, served.store, DEPLOYMENT, served.version(1), DAY, None, LIMITS)

    assert result["agreement"] == 1.0 and result["flips"] == []
    assert result["output_drift"] == {"ks": 0.0, "p_value": 1.0, "psi": 0.0}
    assert result["errors"] == 0


def test_a_failing_request_is_an_error_and_the_replay_goes_on(served: Served) -> None:
    champion = _predictions(served.champion, served.sent)
    starts = np.cumsum([0, *SIZES[:-1]])
    kept = np.concatenate(
        [np.arange(s, s + n) for s, n in zip(starts, SIZES, strict=True) if n != 3]
    )
    positive = np.concatenate(served.sent)[:, 0] > 0  # the fussy model's rule, by hand

    result = replay(
        served.registry, served.store, DEPLOYMENT, served.version(3), None, None, LIMITS
    )

    failing = SIZES.count(3)
    assert result["requests"] == len(SIZES)
    assert (result["errors"], result["error_rate"]) == (failing, failing / len(SIZES))
    assert len(result["error_samples"]) == 5  # six failures, five kept
    assert all("three rows are too many" in sample for sample in result["error_samples"])
    agreed = (champion[kept] == positive[kept].astype(np.int64)).mean()
    assert result["agreement"] == pytest.approx(agreed)
    assert result["since"] is None


def test_limit_takes_the_newest_requests(served: Served) -> None:
    result = replay(served.registry, served.store, DEPLOYMENT, served.version(1), DAY, 4, LIMITS)

    assert (result["requests"], result["rows"]) == (4, sum(SIZES[-4:]))


def test_an_empty_window_is_refused_with_a_hint(served: Served) -> None:
    candidate = served.version(2)
    with pytest.raises(InvalidInput, match=r"no requests of fraud-quiet in the last 24h; is "):
        replay(served.registry, served.store, "fraud-quiet", candidate, DAY, None, LIMITS)
    # Every logged request is older than a millisecond by now: the window holds none.
    with pytest.raises(InvalidInput, match=r"in the last 0.001s; is monitoring\.sample above 0\?"):
        replay(served.registry, served.store, DEPLOYMENT, candidate, 0.001, None, LIMITS)
