"""`shipyard export --to onnx`: each framework converted, gated and registered; the derived
versions served by a real server with the answers of the original library's own predict;
a conversion that changes answers refused with its failing rows; quantisation gated."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest

from shipyard.client import Client, LocalClient
from shipyard.config import Settings
from shipyard.errors import InvalidInput
from shipyard.packaging.service import ExportOptions
from shipyard.registry.records import ModelVersion, RegistrationOptions
from tests import fixtures
from tests.server import running_server, shipyard_command

FRAMEWORKS = ["sklearn", "xgboost", "lightgbm", "torchscript"]
GATE_ROWS = 50


@dataclass
class Site:
    home: Path
    folder: Path
    url: str
    models: dict[str, Path]
    exported: dict[str, ModelVersion]

    def cli(self, *args: str, remote: bool) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "COLUMNS": "200", "SHIPYARD_HOME": str(self.home)}
        env.pop("SHIPYARD_URL", None)
        if remote:
            env["SHIPYARD_URL"] = self.url
        return subprocess.run(
            [*shipyard_command(), *args], env=env, capture_output=True, text=True, timeout=300
        )


def _write_models(folder: Path) -> dict[str, Path]:
    return {
        "sklearn": fixtures.write_sklearn_model(folder / "sklearn"),
        "xgboost": fixtures.write_xgboost_model(folder / "xgboost"),
        "lightgbm": fixtures.write_lightgbm_model(folder / "lightgbm"),
        "torchscript": fixtures.write_torchscript_model(folder / "torchscript"),
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Each framework registered as version 1 and exported (locally) as version 2; the
    tabular ones with an example file (their reference sample gates the export), the
    TorchScript one without (its gate rows come from --data)."""
    folder = tmp_path_factory.mktemp("export")
    home = folder / "home"
    example = fixtures.write_example_csv(folder, rows=GATE_ROWS)
    models = _write_models(folder)
    exported = {}
    with LocalClient.open(Settings(home=home)) as client:
        for framework, path in models.items():
            tabular = framework != "torchscript"
            client.register(path, RegistrationOptions(name=framework), example if tabular else None)
            result = client.export(
                f"{framework}:1", ExportOptions(), data=None if tabular else example
            )
            exported[framework] = result.version
    with running_server({"SHIPYARD_HOME": str(home)}) as server:
        yield Site(home, folder, server.url, models, exported)


def _rows() -> np.ndarray:
    """Rows the gate never saw."""
    features, _ = fixtures.training_data(rows=8, seed=5)
    return features


def _library_answers(framework: str, path: Path, rows: np.ndarray) -> dict[str, np.ndarray]:
    """What the original library's own predict answers, loaded here by the test."""
    if framework == "sklearn":
        model = joblib.load(path)
        return {"predict": model.predict(rows), "predict_proba": model.predict_proba(rows)}
    if framework == "xgboost":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(str(path))
        matrix = xgboost.DMatrix(rows, feature_names=fixtures.FEATURES)
        return {"predict": booster.predict(matrix)}
    if framework == "lightgbm":
        import lightgbm

        return {"predict": lightgbm.Booster(model_file=str(path)).predict(rows)}
    import torch

    module = torch.jit.load(str(path))
    with torch.inference_mode():
        return {"predict": module(torch.from_numpy(rows)).numpy()}


def _request(framework: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Tabular versions registered with an example take one column per feature; the
    TorchScript one, one matrix."""
    if framework == "torchscript":
        return {"input-0": rows}
    return {name: rows[:, i] for i, name in enumerate(fixtures.FEATURES)}


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_export_passes_the_gate_and_the_derived_version_serves_the_originals_answers(
    site: Site, framework: str
) -> None:
    version = site.exported[framework]
    assert (version.model, version.version, version.flavor) == (framework, 2, "onnx")
    assert not version.unsafe_format
    assert version.lineage.derived_from == f"{framework}:1"
    derivation = version.lineage.derivation
    library = {"sklearn": "sklearn", "xgboost": "xgboost", "lightgbm": "lightgbm"}
    converter = {"sklearn": "skl2onnx", "torchscript": "torch.onnx"}.get(framework, "onnxmltools")
    assert derivation["converter"] == converter
    assert library.get(framework, "torch") in derivation["versions"]
    gate = derivation["gate"]
    assert gate["passed"] and gate["rows"] == GATE_ROWS and gate["agreement"] == 1.0
    assert gate["max_abs_diff"] <= 1e-5

    rows = _rows()
    expected = _library_answers(framework, site.models[framework], rows)
    with Client(site.url) as client:
        answered_by, outputs = client.infer(f"{framework}:2", _request(framework, rows))
    assert answered_by == "2"
    for name, values in expected.items():
        served = outputs[name]
        if values.dtype.kind in "iu":
            np.testing.assert_array_equal(served, values)
        else:
            np.testing.assert_allclose(served, values, atol=1e-5, rtol=0)


def test_the_derived_version_keeps_the_originals_inputs_and_reference_sample(site: Site) -> None:
    with LocalClient.open(Settings(home=site.home)) as client:
        original = client.get_version("sklearn:1")
        derived = client.get_version("sklearn:2")
    assert original.signature is not None and derived.signature is not None
    assert derived.signature.inputs == original.signature.inputs
    assert [o.name for o in derived.signature.outputs] == ["predict", "predict_proba"]
    assert derived.reference_sample == original.reference_sample
    assert derived.lineage.derivation["gate_data"] == "reference sample"
    assert derived.environment is not None
    assert any(pin.startswith("onnxruntime==") for pin in derived.environment.requirements)


def _write_rows(path: Path, column: str, values: list[float]) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([column])
        writer.writerows([[repr(v)] for v in values])
    return path


def test_a_conversion_that_changes_answers_is_refused_naming_the_rows(site: Site) -> None:
    """A 1-nearest-neighbour classifier on float64 features near 1e9, where float32 (the
    ONNX graph's input) is 64 apart: 1e9 + 30 is nearer 1e9 + 50 in float64 (class 1) but
    rounds to 1e9 in float32 (class 0). Through the server, with --data uploaded."""
    from sklearn.neighbors import KNeighborsClassifier

    model = KNeighborsClassifier(n_neighbors=1).fit(np.array([[1e9], [1e9 + 50]]), [0, 1])
    path = site.folder / "knn.joblib"
    joblib.dump(model, path)
    rows = [1e9, 1e9 + 50, 1e9 + 30, 1e9 + 10]
    assert model.predict(np.array(rows).reshape(-1, 1)).tolist() == [0, 1, 1, 0]
    data = _write_rows(site.folder / "knn-rows.csv", "x", rows)
    with LocalClient.open(Settings(home=site.home)) as client:
        client.register(path, RegistrationOptions(name="knn"))

    answer = site.cli("export", "knn:1", "--to", "onnx", "--data", str(data), remote=True)

    assert answer.returncode == 1, answer.stdout
    error = answer.stderr
    assert "answers differently on 1 of 4 rows" in error
    assert "row 2 input-0=[1000000030]: original predict=1" in error
    assert "exported predict=0" in error
    assert "row 0" not in error and "row 1 " not in error and "row 3" not in error
    with LocalClient.open(Settings(home=site.home)) as client:
        assert [v.version for v in client.list_versions("knn").versions] == [1]


def _mlp(site: Site) -> str:
    """A small neural network: skl2onnx writes it as MatMul/Add, what int8 quantises."""
    from sklearn.neural_network import MLPClassifier

    name = "mlp"
    with LocalClient.open(Settings(home=site.home)) as client:
        try:
            client.get_version(f"{name}:1")
            return name
        except Exception:
            pass
        features, labels = fixtures.training_data(rows=200)
        model = MLPClassifier(hidden_layer_sizes=(32,), max_iter=2000, random_state=0)
        joblib.dump(model.fit(features, labels), site.folder / "mlp.joblib")
        example = fixtures.write_example_csv(site.folder, rows=100, name="mlp-example.csv")
        client.register(site.folder / "mlp.joblib", RegistrationOptions(name=name), example)
    return name


def test_a_dynamic_int8_export_passes_within_its_agreement_threshold(site: Site) -> None:
    name = _mlp(site)
    answer = site.cli("export", f"{name}:1", "--quantize", "dynamic-int8", "--json", remote=True)
    assert answer.returncode == 0, answer.stderr
    result: dict[str, Any] = json.loads(answer.stdout)
    gate = result["gate"]
    assert gate["passed"] and gate["min_agreement"] == 0.99 and gate["allowed_max_abs_diff"] is None
    assert gate["agreement"] >= 0.99
    assert 0 < gate["max_abs_diff"] < 0.1  # int8 weights move the scores a little
    assert result["quantize"] == "dynamic-int8"
    assert result["size"]["after"] < result["size"]["before"]
    assert result["version"]["lineage"]["derivation"]["quantize"] == "dynamic-int8"
    for when in ("before", "after"):
        assert set(result["rows_per_second"][when]) == {"batch_1", "batch_32"}


def test_an_impossible_threshold_refuses_the_quantised_export(site: Site) -> None:
    name = _mlp(site)
    with LocalClient.open(Settings(home=site.home)) as client:
        before = [v.version for v in client.list_versions(name).versions]
    answer = site.cli(
        "export", f"{name}:1", "--quantize", "dynamic-int8", "--max-abs-diff", "0", remote=False
    )
    assert answer.returncode == 1
    assert f"the ONNX export of {name}:1 answers differently" in answer.stderr
    assert "(at most 0)" in answer.stderr
    assert "Failing rows: row 0 f0=" in answer.stderr
    with LocalClient.open(Settings(home=site.home)) as client:
        assert [v.version for v in client.list_versions(name).versions] == before


def test_a_version_without_reference_sample_needs_data(site: Site) -> None:
    with LocalClient.open(Settings(home=site.home)) as client:
        with pytest.raises(InvalidInput, match=r"no reference sample.*--data"):
            client.export("torchscript:1", ExportOptions())
        with pytest.raises(InvalidInput, match="export to ONNX takes"):
            client.export("torchscript:2", ExportOptions())


def test_the_api_refuses_bad_options_naming_the_field(site: Site) -> None:
    import httpx

    path = "/api/models/sklearn/versions/1/export"
    with httpx.Client(base_url=site.url, timeout=60) as http:
        answer = http.post(path, data={"options": json.dumps({"quantize": "int4"})})
        assert answer.status_code == 400
        assert "quantize" in answer.text
        answer = http.post(path, data={"options": json.dumps({"opset": 9})})
        assert answer.status_code == 400
        assert "opset" in answer.text
        answer = http.post(path, data={"options": "{"})
        assert answer.status_code == 400
        assert "not JSON" in answer.text
