"""scikit-learn models saved with joblib/pickle, or with skops (the safe format)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard.errors import MissingExtra, UnsupportedModel
from shipyard.runtimes.base import Inspection, LoadSpec, NotThisFlavor, Tensors
from shipyard.runtimes.tabular import feature_matrix
from shipyard.signature import DEFAULT_INPUT, Signature, TensorSpec, datatype_from_numpy

PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
# skops trusts few types by default (not even sklearn's tree internals). Types
# from these libraries are library classes, not user code, so we accept them;
# anything else (a user's class, a builtin function) is refused.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.")


def estimator_signature(model: Any) -> Signature | None:
    """What an sklearn-API estimator tells about its inputs and outputs."""
    names = getattr(model, "feature_names_in_", None)
    count = getattr(model, "n_features_in_", None)
    if names is not None:
        inputs = [TensorSpec(name=str(n), datatype="FP64", shape=[-1]) for n in names]
    elif count is not None:
        inputs = [TensorSpec(name=DEFAULT_INPUT, datatype="FP64", shape=[-1, int(count)])]
    else:
        return None
    classes = getattr(model, "classes_", None)
    predict_type = datatype_from_numpy(classes.dtype) if classes is not None else "FP64"
    outputs = [TensorSpec(name="predict", datatype=predict_type, shape=[-1])]
    if classes is not None and hasattr(model, "predict_proba"):
        outputs.append(TensorSpec(name="predict_proba", datatype="FP64", shape=[-1, len(classes)]))
    return Signature(inputs=inputs, outputs=outputs)


def _describe(model: Any, flavor: str, fmt: str, path: Path, unsafe: bool) -> Inspection:
    if not callable(getattr(model, "predict", None)):
        raise NotThisFlavor(f"{path.name} holds a {type(model).__name__}, which has no predict()")
    import sklearn

    return Inspection(
        flavor=flavor,
        signature=estimator_signature(model),
        details={
            "estimator": f"{type(model).__module__}.{type(model).__qualname__}",
            "format": fmt,
            "library_version": sklearn.__version__,
        },
        unsafe_format=unsafe,
    )


class EstimatorRuntime:
    """Any estimator with the scikit-learn API.

    `predict` by default; `predict_proba` when asked for by name. Computing both for
    every request doubled the cost of a tree ensemble (BENCHMARKS.md), and it is
    what MLServer and MLflow answer by default too.
    """

    def __init__(self, model: Any, spec: LoadSpec) -> None:
        self.model = model
        self.signature = spec.signature
        self.has_proba = hasattr(model, "predict_proba") and hasattr(model, "classes_")

    def predict(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> Tensors:
        features = feature_matrix(inputs, self.signature)
        wanted = outputs or ("predict",)
        result: Tensors = {}
        with warnings.catch_warnings():
            # Fitted on a DataFrame, predicting on an array: the columns are already
            # in signature order, so the feature-name warning says nothing useful.
            warnings.filterwarnings("ignore", message="X does not have valid feature names")
            if "predict" in wanted:
                result["predict"] = np.asarray(self.model.predict(features))
            if self.has_proba and "predict_proba" in wanted:
                result["predict_proba"] = np.asarray(self.model.predict_proba(features))
        return result


class SklearnFlavor:
    """joblib or pickle files. Loading runs code, so the format is marked unsafe."""

    name = "sklearn"
    extra = "sklearn"

    def inspect(self, path: Path) -> Inspection:
        if not path.is_file() or path.suffix.lower() not in PICKLE_SUFFIXES:
            raise NotThisFlavor("not a .joblib/.pkl/.pickle file")
        try:
            import joblib
        except ImportError:
            raise MissingExtra("joblib", self.extra) from None
        try:
            model = joblib.load(path)
        except Exception as exc:  # a corrupt pickle can raise almost anything
            raise NotThisFlavor(f"cannot unpickle: {type(exc).__name__}: {exc}") from None
        return _describe(model, self.name, path.suffix.lower().lstrip("."), path, unsafe=True)

    def load(self, spec: LoadSpec) -> EstimatorRuntime:
        try:
            import joblib
        except ImportError:
            raise MissingExtra("joblib", self.extra) from None
        return EstimatorRuntime(joblib.load(spec.path), spec)


class SkopsFlavor:
    """skops files: loaded only when every type inside is one skops trusts."""

    name = "skops"
    extra = "sklearn"

    def inspect(self, path: Path) -> Inspection:
        if not path.is_file() or path.suffix.lower() != ".skops":
            raise NotThisFlavor("not a .skops file")
        try:
            import skops.io as sio
        except ImportError:
            raise MissingExtra("skops", self.extra) from None
        try:
            untrusted = sio.get_untrusted_types(file=path)
        except Exception as exc:
            raise NotThisFlavor(f"not a readable skops file: {exc}") from None
        refused = [t for t in untrusted if not t.startswith(TRUSTED_MODULE_PREFIXES)]
        if refused:
            raise UnsupportedModel(
                f"{path} contains types Shipyard will not load from a skops file: "
                f"{', '.join(refused)} (only scikit-learn, NumPy and SciPy types are trusted)"
            )
        model = sio.load(path, trusted=untrusted)
        inspection = _describe(model, self.name, "skops", path, unsafe=False)
        inspection.details["trusted_types"] = untrusted
        return inspection

    def load(self, spec: LoadSpec) -> EstimatorRuntime:
        try:
            import skops.io as sio
        except ImportError:
            raise MissingExtra("skops", self.extra) from None
        trusted = list(spec.details.get("trusted_types", []))
        return EstimatorRuntime(sio.load(spec.path, trusted=trusted), spec)
