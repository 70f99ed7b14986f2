"""One module per model framework behind one small interface (see base.py).

`load(spec)` is the one way any process (a serving worker, a batch worker, a Ray
actor, the drift monitor) turns a model version into a Runtime.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from shipyard.runtimes.base import LoadSpec, Runtime, VersionSpec

__all__ = ["Runtime", "VersionSpec", "load", "preload"]


def load(spec: VersionSpec) -> Runtime:
    """Load the version with its flavor; MissingExtra if the flavor's library is absent."""
    # Imported here: every flavor module comes with it, and only a process that loads needs them.
    from shipyard.runtimes.detect import flavor_named

    return flavor_named(spec.flavor).load(
        LoadSpec(Path(spec.path), spec.signature, dict(spec.details))
    )


_LIBRARIES: dict[str, tuple[str, ...]] = {
    # What unpickling or loading a model of the flavor imports: most of a cold start's time
    # on a small model (scikit-learn's ensemble modules take over a second here).
    "sklearn": ("joblib", "sklearn.ensemble", "sklearn.linear_model", "sklearn.pipeline"),
    "skops": ("skops.io", "sklearn.ensemble", "sklearn.linear_model", "sklearn.pipeline"),
    "xgboost": ("xgboost",),
    "lightgbm": ("lightgbm",),
    "onnx": ("onnxruntime",),
    "torchscript": ("torch",),
    "mlflow": ("mlflow.pyfunc",),
}


def preload(flavor: str) -> None:
    """Import what loading a model of `flavor` needs, ahead of the load (a spare worker
    does this while it waits). A library that is missing is left for load() to report."""
    from shipyard.runtimes.detect import flavor_named

    try:
        flavor_named(flavor)
    except Exception:  # an unknown flavor: load() will say so
        return
    for module in _LIBRARIES.get(flavor, ()):
        try:
            import_module(module)
        except ImportError:
            return
