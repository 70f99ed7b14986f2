"""Which flavor is this file or folder? Ask each in turn; report what each saw.

Recognising a model may run the code it brings (unpickling, TorchScript's pickled
constants), so every flavor whose reader could is asked in a throw-away process
(`runtimes.isolated`); only pure-data formats are read in the calling process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import ValidationError

from shipyard.config import DEFAULT_ISOLATION, IsolationLimits
from shipyard.errors import InvalidInput, UnsupportedModel
from shipyard.runtimes.base import Flavor, Inspection, NotThisFlavor
from shipyard.runtimes.environments import installed_pin, parse_requirements
from shipyard.runtimes.isolated import run_isolated
from shipyard.runtimes.lightgbm import LightGBMFlavor
from shipyard.runtimes.mlflow import MLflowFlavor
from shipyard.runtimes.onnx import OnnxFlavor
from shipyard.runtimes.python import PythonFlavor
from shipyard.runtimes.sklearn import SklearnFlavor, SkopsFlavor
from shipyard.runtimes.torch import TorchScriptFlavor
from shipyard.runtimes.xgboost import XGBoostFlavor
from shipyard.signature import Signature

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

PURE_DATA = frozenset({"xgboost", "lightgbm", "onnx"})
"""Flavors inspected in the calling process. XGBoost JSON/UBJSON, LightGBM's text format
and ONNX protobuf are parsed by their libraries' readers into plain data (trees,
parameters, a graph); nothing in the file is ever imported, unpickled or executed, and
ONNX's external data and custom-op libraries are not loaded at inspection. Every other
flavor (pickle/joblib, skops, TorchScript, MLflow, plain Python) is inspected in a child
process, and so is any flavor added later unless it is listed here."""
# Only these may say their format runs no code; a child that ran a pickle could claim
# anything, so the claim is believed only where the file is shaped like that format.
_MAY_BE_SAFE = {
    "skops": lambda path: path.is_file() and path.suffix.lower() == ".skops",
    "mlflow": lambda path: path.is_dir() and (path / "MLmodel").is_file(),
}


def flavor_named(name: str) -> Flavor:
    for flavor in FLAVORS:
        if flavor.name == name:
            return flavor
    raise InvalidInput(f"unknown flavor {name!r}")


# The library whose installed release a flavor's model needs (sklearn and skops pin the
# release that saved the model themselves; MLflow folders list their own; plain Python
# needs none that can be known).
_FLAVOR_LIBRARIES = {
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "onnx": "onnxruntime",
    "torchscript": "torch",
}
_MAX_REQUIREMENTS = 200
"""Most requirements a child's inspection may report."""


def inspect_model(path: Path, limits: IsolationLimits = DEFAULT_ISOLATION) -> Inspection:
    """Describe the model at `path`, or refuse it naming every flavor tried."""
    inspection = _inspect_model(path, limits)
    library = _FLAVOR_LIBRARIES.get(inspection.flavor)
    if library is not None and not inspection.requirements:
        pin = installed_pin(library)
        inspection.requirements = [pin] if pin is not None else []
    return inspection


def _inspect_model(path: Path, limits: IsolationLimits) -> Inspection:
    if not path.exists():
        raise InvalidInput(f"no such file or folder: {path}")
    reasons: dict[str, str] = {}
    # Pure-data flavors first: they claim only files of their own suffixes, which no
    # other flavor claims, so asking them before MLflow (folders) changes no answer.
    for flavor in FLAVORS:
        if flavor.name in PURE_DATA:
            try:
                return flavor.inspect(path)
            except NotThisFlavor as why:
                reasons[flavor.name] = str(why)
    answer = run_isolated(
        _inspect_here, str(path.absolute()), limits=limits, task="inspecting the model"
    )
    if isinstance(answer, dict) and isinstance(answer.get("inspection"), dict):
        return _inspection_from_json(answer["inspection"], path)
    if not isinstance(answer, dict) or not isinstance(answer.get("refused"), dict):
        raise UnsupportedModel("inspecting the model gave an answer of the wrong shape")
    reasons.update({str(k): str(v) for k, v in answer["refused"].items()})
    tried = [f"{f.name}: {reasons[f.name]}" for f in FLAVORS if f.name in reasons]
    raise UnsupportedModel(
        f"{path.name} is not a model Shipyard can register (tried {'; '.join(tried)})"
    )


def _inspect_here(path: str) -> dict[str, Any]:
    """In the child: ask every flavor that may run code, in order; JSON out."""
    refused: dict[str, str] = {}
    for flavor in FLAVORS:
        if flavor.name not in PURE_DATA:
            try:
                return {"inspection": _inspection_to_json(flavor.inspect(Path(path)))}
            except NotThisFlavor as why:
                refused[flavor.name] = str(why)
    return {"refused": refused}


def _inspection_to_json(inspection: Inspection) -> dict[str, Any]:
    example = inspection.input_example
    return {
        "flavor": inspection.flavor,
        "signature": inspection.signature.model_dump(mode="json")
        if inspection.signature is not None
        else None,
        "details": inspection.details,
        "input_example": [[name, example.column(name).to_pylist()] for name in example.column_names]
        if example is not None
        else None,
        "unsafe_format": inspection.unsafe_format,
        "requirements": inspection.requirements,
    }


def _inspection_from_json(document: dict[str, Any], path: Path) -> Inspection:
    """An Inspection from a child's JSON, checked field by field: the child is not trusted."""
    flavor = document.get("flavor")
    if flavor not in {f.name for f in FLAVORS} - PURE_DATA:
        raise UnsupportedModel(f"inspecting the model named an unknown flavor {flavor!r}")
    details = document.get("details")
    if not isinstance(details, dict):
        raise UnsupportedModel("inspecting the model gave details that are not an object")
    try:
        signature = document.get("signature")
        example = document.get("input_example")
        inspection = Inspection(
            flavor=str(flavor),
            signature=Signature.model_validate(signature) if signature is not None else None,
            details=details,
            input_example=pa.table({str(name): values for name, values in example})
            if example is not None
            else None,
        )
    except (ValidationError, TypeError, ValueError, pa.ArrowException) as exc:
        raise UnsupportedModel(f"inspecting the model gave an unreadable answer: {exc}") from None
    requirements = document.get("requirements", [])
    if (
        not isinstance(requirements, list)
        or len(requirements) > _MAX_REQUIREMENTS
        or not all(isinstance(pin, str) for pin in requirements)
    ):
        raise UnsupportedModel("inspecting the model gave requirements that are not strings")
    try:
        inspection.requirements = parse_requirements(requirements, "detected requirements")
    except InvalidInput as exc:
        raise UnsupportedModel(f"inspecting the model gave {exc.message}") from None
    claims_safe = document.get("unsafe_format") is False
    may_be_safe = _MAY_BE_SAFE.get(inspection.flavor)
    inspection.unsafe_format = not (claims_safe and may_be_safe is not None and may_be_safe(path))
    return inspection
