"""LightGBM boosters saved in LightGBM's text model format."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shipyard.errors import MissingExtra
from shipyard.runtimes.base import Inspection, LoadSpec, NotThisFlavor, Tensors
from shipyard.runtimes.tabular import feature_matrix
from shipyard.signature import DEFAULT_INPUT, Signature, TensorSpec

_UNNAMED = re.compile(r"^Column_\d+$")


class LightGBMRuntime:
    def __init__(self, booster: Any, spec: LoadSpec) -> None:
        self.booster = booster
        self.signature = spec.signature

    def predict(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> Tensors:
        return {"predict": self.booster.predict(feature_matrix(inputs, self.signature))}


class LightGBMFlavor:
    name = "lightgbm"
    extra = "lightgbm"

    def inspect(self, path: Path) -> Inspection:
        if not path.is_file() or path.suffix.lower() != ".txt":
            raise NotThisFlavor("not a .txt file")
        with path.open("rb") as stream:
            if stream.readline().strip() != b"tree":
                raise NotThisFlavor("a text file that is not a LightGBM model (no 'tree' header)")
        try:
            import lightgbm
        except ImportError:
            raise MissingExtra("lightgbm", self.extra) from None
        try:
            booster = lightgbm.Booster(model_file=str(path))
        except lightgbm.basic.LightGBMError as exc:
            raise NotThisFlavor(f"LightGBM cannot load it: {exc}") from None
        names = booster.feature_name()
        if all(_UNNAMED.match(n) for n in names):
            inputs = [TensorSpec(name=DEFAULT_INPUT, datatype="FP64", shape=[-1, len(names)])]
        else:
            inputs = [TensorSpec(name=n, datatype="FP64", shape=[-1]) for n in names]
        dump = booster.dump_model(num_iteration=0)
        num_class = int(dump.get("num_class", 1))
        shape = [-1, num_class] if num_class > 1 else [-1]
        return Inspection(
            flavor=self.name,
            signature=Signature(
                inputs=inputs, outputs=[TensorSpec(name="predict", datatype="FP64", shape=shape)]
            ),
            details={
                "objective": str(dump.get("objective", "")),
                "num_features": len(names),
                "num_class": num_class,
                "library_version": lightgbm.__version__,
            },
        )

    def load(self, spec: LoadSpec) -> LightGBMRuntime:
        try:
            import lightgbm
        except ImportError:
            raise MissingExtra("lightgbm", self.extra) from None
        return LightGBMRuntime(lightgbm.Booster(model_file=str(spec.path)), spec)
