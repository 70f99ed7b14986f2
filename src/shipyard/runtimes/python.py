"""Plain-Python models: a class with `load()` and `predict()`, found by parsing only.

Registration never imports or runs the user's file (and parses it in a throw-away
process, as every flavor that may run code is inspected); serving does, in a worker,
and so does the drift monitor, in a throw-away process (`runtimes.isolated`).
The contract: `predict(inputs)` receives a dict of numpy arrays (one per input,
first dimension = rows) and returns an array (the output `predict`) or a dict
of named arrays.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.runtimes.base import Inspection, LoadSpec, NotThisFlavor, Tensors


def find_model_class(source: str) -> str | None:
    """The first top-level class that defines both `load` and `predict`."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = {
                item.name
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            }
            if {"load", "predict"} <= methods:
                return node.name
    return None


class PythonRuntime:
    def __init__(self, instance: Any) -> None:
        self.instance = instance

    def predict(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> Tensors:
        result = self.instance.predict(inputs)
        if isinstance(result, dict):
            return {str(k): np.asarray(v) for k, v in result.items()}
        return {"predict": np.asarray(result)}


class PythonFlavor:
    name = "python"
    extra = ""

    def inspect(self, path: Path) -> Inspection:
        if path.is_file():
            if path.suffix != ".py":
                raise NotThisFlavor("not a .py file")
            candidates = [(path, path.name)]
        elif path.is_dir():
            files = sorted(path.rglob("*.py"))
            candidates = [(f, f.relative_to(path).as_posix()) for f in files]
            if not candidates:
                raise NotThisFlavor("a folder with no .py files")
        else:
            raise NotThisFlavor("not a file or folder")
        for file, module in candidates:
            class_name = find_model_class(file.read_text(errors="replace"))
            if class_name is not None:
                return Inspection(
                    flavor=self.name,
                    details={"module": module, "class": class_name},
                    unsafe_format=True,
                )
        raise NotThisFlavor("no class with both load() and predict()")

    def load(self, spec: LoadSpec) -> PythonRuntime:
        folder = spec.path if spec.path.is_dir() else spec.path.parent
        module_file = folder / spec.details["module"]
        if not module_file.resolve().is_relative_to(folder.resolve()):
            raise InvalidInput(
                f"the model's module {spec.details['module']!r} is outside its folder"
            )
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))  # so the model can import its helper modules
        module_spec = importlib.util.spec_from_file_location(
            f"shipyard_user_model_{abs(hash(module_file))}", module_file
        )
        if module_spec is None or module_spec.loader is None:
            raise InvalidInput(f"cannot import {module_file.name}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        instance = getattr(module, spec.details["class"])()
        instance.load()
        return PythonRuntime(instance)
