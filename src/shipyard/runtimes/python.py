"""Plain-Python models: a class with `load()` and `predict()`, found by parsing only.

Registration never imports or runs the user's file; serving does, in a worker.
"""

from __future__ import annotations

import ast
from pathlib import Path

from shipyard.runtimes.base import Inspection, NotThisFlavor


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
