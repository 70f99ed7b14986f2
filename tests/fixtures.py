"""Stand-in models for tests: tiny, trained here by their real libraries."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

FEATURES = ["f0", "f1", "f2", "f3"]


def training_data(rows: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, len(FEATURES)))
    labels = (features[:, 0] + features[:, 1] > 0).astype(np.int64)
    return features, labels


def write_sklearn_model(folder: Path, name: str = "model.joblib", seed: int = 0) -> Path:
    """A logistic regression saved with joblib; `seed` changes its bytes."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    features, labels = training_data(seed=seed)
    model = LogisticRegression().fit(features, labels)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    joblib.dump(model, path)
    return path


def write_example_csv(folder: Path, rows: int = 20, name: str = "example.csv") -> Path:
    features, _ = training_data(rows=rows)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(FEATURES)
        writer.writerows(features.tolist())
    return path


def write_skops_model(folder: Path) -> Path:
    import skops.io as sio
    from sklearn.ensemble import RandomForestClassifier

    features, labels = training_data()
    model = RandomForestClassifier(n_estimators=3, max_depth=2, random_state=0)
    model.fit(features, labels)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.skops"
    sio.dump(model, path)
    return path


def write_xgboost_model(folder: Path, suffix: str = ".json", multiclass: bool = False) -> Path:
    import xgboost

    features, labels = training_data()
    if multiclass:
        labels = (features[:, 0] > 0).astype(np.int64) + (features[:, 1] > 0).astype(np.int64)
        params = {"objective": "multi:softprob", "num_class": 3}
    else:
        params = {"objective": "binary:logistic"}
    matrix = xgboost.DMatrix(features, label=labels, feature_names=FEATURES)
    booster = xgboost.train({**params, "max_depth": 2}, matrix, num_boost_round=3)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model{suffix}"
    booster.save_model(str(path))
    return path


def write_lightgbm_model(folder: Path) -> Path:
    import lightgbm

    features, labels = training_data(rows=200)
    dataset = lightgbm.Dataset(features, label=labels, feature_name=FEATURES)
    params = {"objective": "binary", "num_leaves": 4, "min_data_in_leaf": 5, "verbose": -1}
    booster = lightgbm.train(params, dataset, num_boost_round=3)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.txt"
    booster.save_model(str(path))
    return path


def write_onnx_model(folder: Path) -> Path:
    """y = x @ W + b, with a symbolic batch dimension, built with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((4, 1), dtype=np.float32), name="W")
    bias = numpy_helper.from_array(np.zeros((1,), dtype=np.float32), name="b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(model, str(path))
    return path


def write_mlflow_model(folder: Path) -> Path:
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    features, labels = training_data()
    frame = pd.DataFrame(features, columns=FEATURES)
    model = LogisticRegression().fit(frame, labels)
    path = folder / "mlflow-model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        signature=infer_signature(frame, model.predict(frame)),
        input_example=frame.head(3),
    )
    return path


PYTHON_MODEL = '''
class Doubler:
    """Doubles its one input."""

    def load(self):
        self.factor = 2

    def predict(self, inputs):
        (values,) = inputs.values()
        return values * self.factor
'''


def write_python_model(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "doubler.py"
    path.write_text(PYTHON_MODEL)
    return path


def write_torchscript_model(folder: Path) -> Path:
    """A scripted linear layer with fixed weights: y = x @ W.T + b."""
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Linear(len(FEATURES), 2).double()
    scripted = torch.jit.script(layer)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "linear.pt"
    scripted.save(str(path))
    return path


BUSY_MODEL = '''
import time


class Busy:
    """Doubles its input after burning a fixed CPU time per row (a CPU-bound model)."""

    def load(self):
        self.per_row = {seconds}

    def predict(self, inputs):
        (values,) = inputs.values()
        until = time.process_time() + self.per_row * len(values)
        while time.process_time() < until:
            pass
        return values * 2
'''


def write_busy_model(folder: Path, seconds_per_row: float) -> Path:
    """A python-flavor model whose predict burns `seconds_per_row` of CPU per row."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "busy.py"
    path.write_text(BUSY_MODEL.replace("{seconds}", repr(seconds_per_row)))
    return path


SCALE_MODEL = """
class Scale:
    def load(self):
        pass

    def predict(self, inputs):
        return {"y": inputs["x"] * %d}
"""
"""A plain-Python model answering x times a number: `SCALE_MODEL % version` makes versions
whose answers say which one answered."""
