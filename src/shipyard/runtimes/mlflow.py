"""MLflow model folders: read `MLmodel` (flavors, signature, input example) without MLflow."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import yaml

from shipyard.errors import MissingExtra, UnsupportedModel
from shipyard.runtimes.base import Inspection, LoadSpec, NotThisFlavor, Tensors
from shipyard.signature import DEFAULT_INPUT, Datatype, Signature, TensorSpec, datatype_from_numpy

_COLUMN_TYPES: dict[str, Datatype] = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
    "datetime": "BYTES",
}
# MLflow flavors whose saved form holds no executable code.
_SAFE_FLAVORS = {"onnx"}
# Where MLmodel names a file or folder of the model, relative to the folder: these keys,
# and any key ending like these, under `flavors` and `saved_input_example_info`.
_PATH_KEYS = frozenset(
    {"data", "code", "env", "conda", "virtualenv", "path", "pickled_model", "python_model"}
)
_PATH_KEY_ENDINGS = ("_path", "_file", "_dir", "_data")
# Not paths in the model: where an artifact was copied from, and the user's own settings.
_NOT_PATHS = frozenset({"uri", "model_config", "metadata"})


def check_paths_inside(folder: Path, meta: dict[str, Any]) -> None:
    """Refuse an MLmodel that names a path outside its folder (`artifact_path: ../../..`)."""
    root = folder.resolve()

    def inside(value: str) -> bool:
        try:
            return (root / value).resolve().is_relative_to(root)
        except (OSError, ValueError):  # a NUL byte, a symlink loop
            return False

    def walk(node: Any, where: str) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item, where)
        if not isinstance(node, dict):
            return
        for key, value in node.items():
            here = f"{where}.{key}"
            if key in _NOT_PATHS:
                continue
            names_path = key in _PATH_KEYS or str(key).endswith(_PATH_KEY_ENDINGS)
            candidates = [value] if isinstance(value, str) else value
            if names_path and isinstance(candidates, list):
                for item in candidates:
                    if isinstance(item, str) and not inside(item):
                        raise UnsupportedModel(
                            f"MLmodel names a path outside the model folder: {here} = {item!r}"
                        )
            walk(value, here)

    walk(meta.get("flavors"), "flavors")
    walk(meta.get("saved_input_example_info"), "saved_input_example_info")


def _specs(encoded: str | None, default_prefix: str) -> list[TensorSpec]:
    if not encoded:
        return []
    specs = []
    for index, spec in enumerate(json.loads(encoded)):
        name = spec.get("name") or f"{default_prefix}-{index}"
        if spec.get("type") == "tensor":
            tensor = spec["tensor-spec"]
            specs.append(
                TensorSpec(
                    name=name,
                    datatype=datatype_from_numpy(tensor["dtype"]),
                    shape=[int(d) for d in tensor.get("shape", [-1])],
                )
            )
        else:
            datatype = _COLUMN_TYPES.get(str(spec.get("type")), "BYTES")
            specs.append(TensorSpec(name=name, datatype=datatype, shape=[-1]))
    return specs


def _example_table(folder: Path, info: dict[str, Any], signature: Signature | None) -> pa.Table:
    """MLflow's saved input example as a table (split-orient frames or plain arrays)."""
    document = json.loads((folder / info["artifact_path"]).read_text())
    if isinstance(document, dict) and "columns" in document and "data" in document:
        rows = document["data"]
        return pa.table({c: [row[i] for row in rows] for i, c in enumerate(document["columns"])})
    if isinstance(document, dict) and "inputs" in document:
        document = document["inputs"]
    if isinstance(document, list) and document and isinstance(document[0], list):
        names = [f"{DEFAULT_INPUT}_{i}" for i in range(len(document[0]))]
        return pa.table({n: [row[i] for row in document] for i, n in enumerate(names)})
    if isinstance(document, list) and document and isinstance(document[0], dict):
        return pa.Table.from_pylist(document)
    raise ValueError("unrecognised input example layout")


class PyfuncRuntime:
    """An MLflow pyfunc model: column inputs become a DataFrame, tensor inputs an array."""

    def __init__(self, model: Any, spec: LoadSpec) -> None:
        import pandas as pd

        self._frame = pd.DataFrame
        self.model = model
        self.signature = spec.signature
        self.columnar = spec.signature is not None and all(
            s.shape == [-1] for s in spec.signature.inputs
        )

    def predict(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> Tensors:
        if self.columnar and self.signature is not None:
            data: Any = self._frame({s.name: inputs[s.name] for s in self.signature.inputs})
        elif len(inputs) == 1:
            (data,) = inputs.values()
        else:
            data = inputs
        result = self.model.predict(data)
        if hasattr(result, "to_dict") and hasattr(result, "columns"):  # a DataFrame
            return {str(c): result[c].to_numpy() for c in result.columns}
        if isinstance(result, dict):
            return {str(k): np.asarray(v) for k, v in result.items()}
        name = self.signature.outputs[0].name if self.signature and self.signature.outputs else None
        return {name or "predict": np.asarray(result)}


class MLflowFlavor:
    name = "mlflow"
    extra = "mlflow"

    def inspect(self, path: Path) -> Inspection:
        if not path.is_dir() or not (path / "MLmodel").is_file():
            raise NotThisFlavor("not a folder with an MLmodel file")
        try:
            meta = yaml.safe_load((path / "MLmodel").read_text())
        except yaml.YAMLError as exc:
            raise NotThisFlavor(f"MLmodel is not valid YAML: {exc}") from None
        if not isinstance(meta, dict):
            raise NotThisFlavor("MLmodel is not a YAML mapping")
        check_paths_inside(path, meta)
        flavors: dict[str, Any] = meta.get("flavors") or {}
        if not flavors:
            raise NotThisFlavor("MLmodel lists no flavors")
        signature = None
        if meta.get("signature"):
            signature = Signature(
                inputs=_specs(meta["signature"].get("inputs"), "input"),
                outputs=_specs(meta["signature"].get("outputs"), "output"),
            )
        example = None
        info = meta.get("saved_input_example_info")
        if info and info.get("artifact_path"):
            try:
                example = _example_table(path, info, signature)
            except (OSError, ValueError, KeyError, IndexError, pa.ArrowException):
                example = None  # the example is a convenience; the model is still valid
        model_flavors = [f for f in flavors if f != "python_function"]
        return Inspection(
            flavor=self.name,
            signature=signature,
            details={
                "flavors": list(flavors),
                "model_flavor": model_flavors[0] if model_flavors else "python_function",
                "loader_module": (flavors.get("python_function") or {}).get("loader_module"),
                "mlflow_version": meta.get("mlflow_version"),
            },
            input_example=example,
            unsafe_format=not set(model_flavors) <= _SAFE_FLAVORS or not model_flavors,
        )

    def load(self, spec: LoadSpec) -> PyfuncRuntime:
        try:
            import mlflow.pyfunc
        except ImportError:
            raise MissingExtra("mlflow", self.extra) from None
        meta = yaml.safe_load((spec.path / "MLmodel").read_text())
        check_paths_inside(spec.path, meta if isinstance(meta, dict) else {})
        return PyfuncRuntime(mlflow.pyfunc.load_model(str(spec.path)), spec)
