"""Each flavor loads what it recognised and predicts exactly as the library does in-process."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from shipyard import runtimes
from shipyard.runtimes import VersionSpec
from shipyard.runtimes.detect import inspect_model
from tests import fixtures


def spec_of(path: Path) -> VersionSpec:
    found = inspect_model(path)
    return VersionSpec("m", 1, found.flavor, str(path), found.signature, found.details)


def load(path: Path) -> runtimes.Runtime:
    return runtimes.load(spec_of(path))


def test_a_version_spec_crosses_processes_whole(tmp_path: Path) -> None:
    spec = spec_of(fixtures.write_sklearn_model(tmp_path))
    copy = pickle.loads(pickle.dumps(spec))
    assert spec.signature is not None
    assert copy == spec
    assert copy.key == "m:1"


def test_sklearn_predict_and_proba(tmp_path: Path) -> None:
    import joblib

    path = fixtures.write_sklearn_model(tmp_path)
    model = joblib.load(path)
    features, _ = fixtures.training_data(rows=9, seed=3)
    result = load(path).predict({"input-0": features}, outputs=["predict", "predict_proba"])
    np.testing.assert_array_equal(result["predict"], model.predict(features))
    np.testing.assert_array_equal(result["predict_proba"], model.predict_proba(features))
    default = load(path).predict({"input-0": features})
    assert list(default) == ["predict"]  # probabilities only when asked for


def test_column_inputs_are_stacked_in_signature_order(tmp_path: Path) -> None:
    import joblib
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    features, labels = fixtures.training_data()
    model = LinearRegression().fit(pd.DataFrame(features, columns=fixtures.FEATURES), labels)
    joblib.dump(model, tmp_path / "reg.joblib")
    rows, _ = fixtures.training_data(rows=5, seed=4)
    shuffled = {name: rows[:, i] for i, name in reversed(list(enumerate(fixtures.FEATURES)))}
    result = load(tmp_path / "reg.joblib").predict(shuffled)
    expected = model.predict(pd.DataFrame(rows, columns=fixtures.FEATURES))
    np.testing.assert_array_equal(result["predict"], expected)


def test_skops(tmp_path: Path) -> None:
    import skops.io as sio

    path = fixtures.write_skops_model(tmp_path)
    model = sio.load(path, trusted=sio.get_untrusted_types(file=path))
    features, _ = fixtures.training_data(rows=7, seed=5)
    np.testing.assert_array_equal(
        load(path).predict({"input-0": features})["predict"], model.predict(features)
    )


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_xgboost(tmp_path: Path, suffix: str) -> None:
    import xgboost

    path = fixtures.write_xgboost_model(tmp_path, suffix)
    booster = xgboost.Booster()
    booster.load_model(str(path))
    features, _ = fixtures.training_data(rows=6, seed=6)
    inputs = {name: features[:, i] for i, name in enumerate(fixtures.FEATURES)}
    expected = booster.predict(xgboost.DMatrix(features, feature_names=fixtures.FEATURES))
    np.testing.assert_array_equal(load(path).predict(inputs)["predict"], expected)


def test_lightgbm(tmp_path: Path) -> None:
    import lightgbm

    path = fixtures.write_lightgbm_model(tmp_path)
    features, _ = fixtures.training_data(rows=6, seed=7)
    inputs = {name: features[:, i] for i, name in enumerate(fixtures.FEATURES)}
    expected = lightgbm.Booster(model_file=str(path)).predict(features)
    np.testing.assert_array_equal(load(path).predict(inputs)["predict"], expected)


def test_onnx_casts_to_the_graph_type(tmp_path: Path) -> None:
    path = fixtures.write_onnx_model(tmp_path)
    features = np.arange(8, dtype=np.float64).reshape(2, 4)
    result = load(path).predict({"x": features})
    np.testing.assert_allclose(result["y"], [[6.0], [22.0]])
    assert result["y"].dtype == np.float32


def test_mlflow_pyfunc(tmp_path: Path) -> None:
    import mlflow.pyfunc
    import pandas as pd

    path = fixtures.write_mlflow_model(tmp_path)
    features, _ = fixtures.training_data(rows=5, seed=8)
    frame = pd.DataFrame(features, columns=fixtures.FEATURES)
    expected = mlflow.pyfunc.load_model(str(path)).predict(frame)
    inputs = {name: features[:, i] for i, name in enumerate(fixtures.FEATURES)}
    result = load(path).predict(inputs)
    np.testing.assert_array_equal(next(iter(result.values())), np.asarray(expected))


def test_plain_python(tmp_path: Path) -> None:
    path = fixtures.write_python_model(tmp_path)
    result = load(path).predict({"values": np.array([1.0, 2.5])})
    np.testing.assert_array_equal(result["predict"], [2.0, 5.0])


def test_torchscript(tmp_path: Path) -> None:
    import torch

    path = fixtures.write_torchscript_model(tmp_path)
    features, _ = fixtures.training_data(rows=4, seed=9)
    expected = torch.jit.load(str(path))(torch.from_numpy(features)).detach().numpy()
    result = load(path).predict({"input": features})
    np.testing.assert_array_equal(result["predict"], expected)
