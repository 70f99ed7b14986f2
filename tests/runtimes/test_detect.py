"""Every flavor is recognised from a real file made by its real library."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipyard.errors import InvalidInput, UnsupportedModel
from shipyard.runtimes.detect import FLAVORS, inspect_model
from tests import fixtures


def shapes(specs: list) -> list[tuple[str, str, list[int]]]:
    return [(s.name, s.datatype, s.shape) for s in specs]


def test_sklearn_joblib(tmp_path: Path) -> None:
    found = inspect_model(fixtures.write_sklearn_model(tmp_path))
    assert found.flavor == "sklearn"
    assert found.unsafe_format
    assert found.details["format"] == "joblib"
    assert found.signature is not None
    assert shapes(found.signature.inputs) == [("input-0", "FP64", [-1, 4])]
    assert shapes(found.signature.outputs) == [
        ("predict", "INT64", [-1]),
        ("predict_proba", "FP64", [-1, 2]),
    ]


def test_sklearn_with_feature_names(tmp_path: Path) -> None:
    import joblib
    import pandas as pd
    from sklearn.linear_model import LinearRegression

    features, labels = fixtures.training_data()
    model = LinearRegression().fit(pd.DataFrame(features, columns=fixtures.FEATURES), labels)
    joblib.dump(model, tmp_path / "reg.pkl")
    found = inspect_model(tmp_path / "reg.pkl")
    assert found.signature is not None
    assert [s.name for s in found.signature.inputs] == fixtures.FEATURES
    assert shapes(found.signature.outputs) == [("predict", "FP64", [-1])]


def test_skops_is_safe(tmp_path: Path) -> None:
    found = inspect_model(fixtures.write_skops_model(tmp_path))
    assert found.flavor == "skops"
    assert not found.unsafe_format
    assert found.details["estimator"].endswith("RandomForestClassifier")
    assert found.signature is not None
    assert shapes(found.signature.inputs) == [("input-0", "FP64", [-1, 4])]


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_xgboost(tmp_path: Path, suffix: str) -> None:
    found = inspect_model(fixtures.write_xgboost_model(tmp_path, suffix))
    assert found.flavor == "xgboost"
    assert found.details["objective"] == "binary:logistic"
    assert found.signature is not None
    assert [s.name for s in found.signature.inputs] == fixtures.FEATURES
    assert shapes(found.signature.outputs) == [("predict", "FP64", [-1])]


def test_xgboost_multiclass_output_shape(tmp_path: Path) -> None:
    found = inspect_model(fixtures.write_xgboost_model(tmp_path, multiclass=True))
    assert found.signature is not None
    assert shapes(found.signature.outputs) == [("predict", "FP64", [-1, 3])]


def test_lightgbm(tmp_path: Path) -> None:
    found = inspect_model(fixtures.write_lightgbm_model(tmp_path))
    assert found.flavor == "lightgbm"
    assert found.details["num_features"] == 4
    assert found.signature is not None
    assert [s.name for s in found.signature.inputs] == fixtures.FEATURES


def test_onnx(tmp_path: Path) -> None:
    found = inspect_model(fixtures.write_onnx_model(tmp_path))
    assert found.flavor == "onnx"
    assert not found.unsafe_format
    assert found.signature is not None
    assert shapes(found.signature.inputs) == [("x", "FP32", [-1, 4])]  # W, b are initializers
    assert shapes(found.signature.outputs) == [("y", "FP32", [-1, 1])]


def test_mlflow_folder(tmp_path: Path) -> None:
    found = inspect_model(fixtures.write_mlflow_model(tmp_path))
    assert found.flavor == "mlflow"
    assert found.details["model_flavor"] == "sklearn"
    assert found.details["loader_module"] == "mlflow.sklearn"
    assert found.signature is not None
    assert shapes(found.signature.inputs) == [(name, "FP64", [-1]) for name in fixtures.FEATURES]
    assert shapes(found.signature.outputs) == [("output-0", "INT64", [-1])]
    assert found.input_example is not None
    assert found.input_example.num_rows == 3
    assert found.input_example.column_names == fixtures.FEATURES


def test_python_file_is_parsed_not_run(tmp_path: Path) -> None:
    path = fixtures.write_python_model(tmp_path)
    path.write_text(path.read_text() + "\nraise SystemExit('executed at registration!')\n")
    found = inspect_model(path)
    assert found.flavor == "python"
    assert found.details == {"module": "doubler.py", "class": "Doubler"}
    assert found.unsafe_format


def test_python_folder(tmp_path: Path) -> None:
    folder = tmp_path / "pkg"
    fixtures.write_python_model(folder)
    (folder / "helpers.py").write_text("def util():\n    return 1\n")
    found = inspect_model(folder)
    assert found.details == {"module": "doubler.py", "class": "Doubler"}


def test_non_model_file_names_the_file_and_every_flavor(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("meeting notes\n")
    with pytest.raises(UnsupportedModel) as refused:
        inspect_model(notes)
    message = str(refused.value)
    assert message.startswith("notes.txt is not a model Shipyard can register")
    assert str(tmp_path) not in message  # over HTTP, the folder is the server's scratch
    for flavor in FLAVORS:
        assert f"{flavor.name}:" in message
    assert "no 'tree' header" in message  # LightGBM looked inside the .txt


def test_json_that_is_not_xgboost_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"learning_rate": 0.1}))
    with pytest.raises(UnsupportedModel, match="without XGBoost's 'learner' section"):
        inspect_model(config)


def test_corrupt_pickle_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "model.joblib"
    broken.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsupportedModel, match="sklearn: cannot unpickle"):
        inspect_model(broken)


def test_pickle_without_predict_is_refused(tmp_path: Path) -> None:
    import joblib

    joblib.dump({"weights": [1, 2]}, tmp_path / "dict.joblib")
    with pytest.raises(UnsupportedModel, match="holds a dict, which has no predict"):
        inspect_model(tmp_path / "dict.joblib")


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file or folder"):
        inspect_model(tmp_path / "ghost.onnx")


def test_skops_with_foreign_types_is_refused(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    sio.dump(FunctionTransformer(func=json.dumps), tmp_path / "sneaky.skops")
    with pytest.raises(UnsupportedModel, match=r"will not load from a skops file: json\.dumps"):
        inspect_model(tmp_path / "sneaky.skops")


def test_torchscript(tmp_path: Path) -> None:
    found = inspect_model(fixtures.write_torchscript_model(tmp_path))
    assert found.flavor == "torchscript"
    assert found.details["forward_arguments"] == ["input"]


def test_plain_torch_save_is_not_torchscript(tmp_path: Path) -> None:
    import torch

    torch.save({"weights": torch.zeros(2)}, tmp_path / "state.pt")
    with pytest.raises(UnsupportedModel, match="torchscript: not a TorchScript archive"):
        inspect_model(tmp_path / "state.pt")


def test_missing_framework_names_the_extra(tmp_path: Path) -> None:
    """Without xgboost installed, an XGBoost file is refused with the pip extra to install."""
    import subprocess
    import sys

    path = fixtures.write_xgboost_model(tmp_path, ".ubj")
    script = (
        "import sys; sys.modules['xgboost'] = None\n"
        "from pathlib import Path\n"
        "from shipyard.errors import MissingExtra\n"
        "from shipyard.runtimes.detect import inspect_model\n"
        "try:\n"
        f"    inspect_model(Path({str(path)!r}))\n"
        "except MissingExtra as exc:\n"
        "    print(exc.message)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == (
        "xgboost is not installed; install it with: pip install 'shipyard[xgboost]'"
    )
