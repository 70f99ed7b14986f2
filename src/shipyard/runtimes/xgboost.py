"""XGBoost boosters saved as JSON or UBJSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.errors import MissingExtra
from shipyard.runtimes.base import Inspection, LoadSpec, NotThisFlavor, Tensors
from shipyard.runtimes.tabular import feature_matrix
from shipyard.signature import DEFAULT_INPUT, Signature, TensorSpec


def _looks_like_xgboost_json(path: Path) -> bool:
    try:
        with path.open("rb") as stream:
            document = json.load(stream)
    except (ValueError, OSError):
        return False
    return isinstance(document, dict) and "learner" in document


class BoosterRuntime:
    def __init__(self, booster: Any, spec: LoadSpec) -> None:
        import xgboost

        self._dmatrix = xgboost.DMatrix
        self.booster = booster
        self.signature = spec.signature
        self.feature_names = booster.feature_names

    def predict(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> Tensors:
        matrix = self._dmatrix(
            feature_matrix(inputs, self.signature), feature_names=self.feature_names
        )
        return {"predict": self.booster.predict(matrix)}


class XGBoostFlavor:
    name = "xgboost"
    extra = "xgboost"

    def inspect(self, path: Path) -> Inspection:
        suffix = path.suffix.lower()
        if not path.is_file() or suffix not in (".json", ".ubj"):
            raise NotThisFlavor("not a .json/.ubj file")
        if suffix == ".json" and not _looks_like_xgboost_json(path):
            raise NotThisFlavor("a JSON file without XGBoost's 'learner' section")
        try:
            import xgboost
        except ImportError:
            raise MissingExtra("xgboost", self.extra) from None
        booster = xgboost.Booster()
        try:
            booster.load_model(str(path))
        except xgboost.core.XGBoostError as exc:
            raise NotThisFlavor(f"XGBoost cannot load it: {str(exc).splitlines()[0]}") from None
        learner = json.loads(booster.save_config())["learner"]
        objective = learner["objective"]["name"]
        num_class = int(learner["learner_model_param"].get("num_class", "0") or 0)
        count = booster.num_features()
        if booster.feature_names:
            inputs = [
                TensorSpec(name=n, datatype="FP64", shape=[-1]) for n in booster.feature_names
            ]
        else:
            inputs = [TensorSpec(name=DEFAULT_INPUT, datatype="FP64", shape=[-1, count])]
        shape = [-1, num_class] if objective == "multi:softprob" and num_class > 1 else [-1]
        return Inspection(
            flavor=self.name,
            signature=Signature(
                inputs=inputs, outputs=[TensorSpec(name="predict", datatype="FP64", shape=shape)]
            ),
            details={
                "objective": objective,
                "num_features": count,
                "format": suffix.lstrip("."),
                "library_version": xgboost.__version__,
            },
        )

    def load(self, spec: LoadSpec) -> BoosterRuntime:
        try:
            import xgboost
        except ImportError:
            raise MissingExtra("xgboost", self.extra) from None
        booster = xgboost.Booster()
        booster.load_model(str(spec.path))
        return BoosterRuntime(booster, spec)
