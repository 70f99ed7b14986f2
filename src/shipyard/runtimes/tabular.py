"""Turning named input tensors into the one feature matrix tabular libraries expect."""

from __future__ import annotations

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.runtimes.base import Tensors
from shipyard.signature import Signature


def feature_matrix(inputs: Tensors, signature: Signature | None) -> np.ndarray:
    """One 2-D array: a single matrix input as is, or column inputs stacked in signature order."""
    if len(inputs) == 1:
        (only,) = inputs.values()
        return only if only.ndim == 2 else only.reshape(-1, 1)
    order = [spec.name for spec in signature.inputs] if signature else sorted(inputs)
    missing = [name for name in order if name not in inputs]
    if missing:
        raise InvalidInput(f"missing input {missing[0]!r}")
    columns = [inputs[name].reshape(len(inputs[name]), -1) for name in order]
    return np.hstack(columns)
