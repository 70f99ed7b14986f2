"""Which flavor is this file or folder? Ask each in turn; report what each saw."""

from __future__ import annotations

from pathlib import Path

from shipyard.errors import InvalidInput, UnsupportedModel
from shipyard.runtimes.base import Flavor, Inspection, NotThisFlavor
from shipyard.runtimes.lightgbm import LightGBMFlavor
from shipyard.runtimes.mlflow import MLflowFlavor
from shipyard.runtimes.onnx import OnnxFlavor
from shipyard.runtimes.python import PythonFlavor
from shipyard.runtimes.sklearn import SklearnFlavor, SkopsFlavor
from shipyard.runtimes.torch import TorchScriptFlavor
from shipyard.runtimes.xgboost import XGBoostFlavor

# MLflow first: its folders may hold files other flavors would claim. Python
# last: any folder with a .py helper file must not shadow a real format.
FLAVORS: tuple[Flavor, ...] = (
    MLflowFlavor(),
    SklearnFlavor(),
    SkopsFlavor(),
    XGBoostFlavor(),
    LightGBMFlavor(),
    OnnxFlavor(),
    TorchScriptFlavor(),
    PythonFlavor(),
)


def flavor_named(name: str) -> Flavor:
    for flavor in FLAVORS:
        if flavor.name == name:
            return flavor
    raise InvalidInput(f"unknown flavor {name!r}")


def inspect_model(path: Path) -> Inspection:
    """Describe the model at `path`, or refuse it naming every flavor tried."""
    if not path.exists():
        raise InvalidInput(f"no such file or folder: {path}")
    reasons = []
    for flavor in FLAVORS:
        try:
            return flavor.inspect(path)
        except NotThisFlavor as why:
            reasons.append(f"{flavor.name}: {why}")
    raise UnsupportedModel(
        f"{path} is not a model Shipyard can register (tried {'; '.join(reasons)})"
    )
