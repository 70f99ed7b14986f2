"""scikit-learn models saved with joblib/pickle, or with skops (the safe format)."""

from __future__ import annotations

import importlib
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
# skops trusts few types by default (not even sklearn's tree internals), and asks about
# the rest. We trust library classes only: a function is never data, and trusting one
# (numpy.save, sklearn.datasets.dump_svmlight_file in a FunctionTransformer) lets a
# "safe" file write wherever it likes when it predicts.
TRUSTED_MODULE_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.")


def _resolve(name: str) -> object | None:
    """The object a dotted name such as `sklearn.tree._tree.Tree` names, if it imports."""
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        except Exception:  # a library module that fails to import is not trusted either
            return None
        try:
            for attribute in parts[cut:]:
                found = getattr(found, attribute)
        except AttributeError:
            return None
        return found
    return None


def is_trusted_type(name: str) -> bool:
    """A class from scikit-learn, a NumPy scalar type or dtype, or a SciPy sparse matrix."""
    if not name.startswith(TRUSTED_MODULE_PREFIXES):
        return False
    found = _resolve(name)
    if not isinstance(found, type):
        return False
    if name.startswith("numpy."):
        return issubclass(found, np.generic | np.dtype)
    return True


def trusted_skops_types(path: Path) -> list[str]:
    """The types outside skops' defaults the file needs, refused unless all are trusted."""
    import skops.io as sio

    untrusted: list[str] = sio.get_untrusted_types(file=path)
    refused = [name for name in untrusted if not is_trusted_type(name)]
    if refused:
        raise UnsupportedModel(
            f"{path.name} contains types Shipyard will not load from a skops file: "
            f"{', '.join(refused)} (only scikit-learn classes, NumPy scalar types and "
            "SciPy sparse matrices are trusted, never a function)"
        )
    return untrusted


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


def _pinned(inspection: Inspection, caught: list[warnings.WarningMessage]) -> Inspection:
    """Pin the scikit-learn release that saved the model: the estimators' own
    `_sklearn_version`, which scikit-learn reports (InconsistentVersionWarning) when it
    differs from the release installed here; else the installed one."""
    import sklearn

    saved = next(
        (
            str(found.message.original_sklearn_version)
            for found in caught
            if hasattr(found.message, "original_sklearn_version")
        ),
        None,
    )
    if saved is not None:
        inspection.details["saved_with"] = saved
    inspection.requirements = [f"scikit-learn=={saved or sklearn.__version__}"]
    return inspection


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
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = joblib.load(path)
        except MemoryError:  # the memory limit of the inspecting process: said as such
            raise
        except Exception as exc:  # a corrupt pickle can raise almost anything
            raise NotThisFlavor(f"cannot unpickle: {type(exc).__name__}: {exc}") from None
        inspection = _describe(model, self.name, path.suffix.lower().lstrip("."), path, unsafe=True)
        return _pinned(inspection, caught)

    def load(self, spec: LoadSpec) -> EstimatorRuntime:
        try:
            import joblib
        except ImportError:
            raise MissingExtra("joblib", self.extra) from None
        return EstimatorRuntime(joblib.load(spec.path), spec)


class SkopsFlavor:
    """skops files: loaded only when every type inside is trusted by skops or by
    `is_trusted_type` (library classes, never functions)."""

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
            untrusted = trusted_skops_types(path)
        except UnsupportedModel:
            raise
        except Exception as exc:
            raise NotThisFlavor(f"not a readable skops file: {exc}") from None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = sio.load(path, trusted=untrusted)
        inspection = _describe(model, self.name, "skops", path, unsafe=False)
        inspection.details["trusted_types"] = untrusted
        return _pinned(inspection, caught)

    def load(self, spec: LoadSpec) -> EstimatorRuntime:
        try:
            import skops.io as sio
        except ImportError:
            raise MissingExtra("skops", self.extra) from None
        # Asked of the file again, not taken from the record: what is trusted is decided
        # here, by the rule above, whatever was recorded at registration.
        trusted = trusted_skops_types(spec.path)
        return EstimatorRuntime(sio.load(spec.path, trusted=trusted), spec)
