"""Signature enforcement: a request is checked against the version's signature
before it can reach a model. Every violation names the input, what was expected
and what came; nothing of the payload itself is echoed.
"""

from __future__ import annotations

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.runtimes.base import Tensors
from shipyard.serving.types import Tensor
from shipyard.signature import NUMPY_DTYPES, Signature, TensorSpec, describe


def _fits_shape(expected: list[int], actual: tuple[int, ...]) -> bool:
    return len(expected) == len(actual) and all(
        e == -1 or e == a for e, a in zip(expected, actual, strict=True)
    )


def _conform_one(spec: TensorSpec, tensor: Tensor) -> np.ndarray:
    where = f"input {spec.name!r}"
    array = tensor.data
    if tensor.datatype != spec.datatype:
        target = NUMPY_DTYPES[spec.datatype]
        # Only casts that lose nothing: INT32 -> FP64 yes, FP64 -> INT8 no.
        if (
            spec.datatype == "BYTES"
            or tensor.datatype == "BYTES"
            or not np.can_cast(array.dtype, target, casting="safe")
        ):
            raise InvalidInput(
                f"{where}: expected {spec.datatype}, got {tensor.datatype} "
                "(only lossless casts are applied)"
            )
        array = array.astype(target)
    shape = array.shape
    # A column declared [-1] also accepts [n, 1]: how many clients send one column.
    if spec.shape == [-1] and array.ndim == 2 and shape[1] == 1:
        array = array.reshape(-1)
        shape = array.shape
    if not _fits_shape(spec.shape, shape):
        raise InvalidInput(f"{where}: expected shape {spec.shape}, got {list(tensor.shape)}")
    return array


def conform(inputs: list[Tensor], signature: Signature | None) -> Tensors:
    """Check and cast request tensors to the signature; return name -> array for the model."""
    for tensor in inputs:
        if tensor.data.size == 0:
            raise InvalidInput(f"input {tensor.name!r} is empty: send at least one row")
    if signature is None or not signature.inputs:
        return {tensor.name: tensor.data for tensor in inputs}
    specs = signature.inputs
    if len(inputs) == 1 and len(specs) == 1 and inputs[0].name == specs[0].name:
        # One input, named as the signature names it: nothing extra, missing or disagreeing.
        return {specs[0].name: _conform_one(specs[0], inputs[0])}
    given = {tensor.name: tensor for tensor in inputs}
    expected = {spec.name: spec for spec in signature.inputs}
    extra = [name for name in given if name not in expected]
    if extra:
        raise InvalidInput(f"unexpected input {extra[0]!r}; the model takes {', '.join(expected)}")
    missing = [spec for name, spec in expected.items() if name not in given]
    if missing:
        raise InvalidInput(f"missing input {missing[0].name!r} (expected {describe(missing[0])})")
    conformed = {name: _conform_one(spec, given[name]) for name, spec in expected.items()}
    rows = {name: array.shape[0] for name, array in conformed.items() if array.ndim}
    if len(set(rows.values())) > 1:
        counts = ", ".join(f"{name}: {count}" for name, count in rows.items())
        raise InvalidInput(f"inputs disagree on the number of rows ({counts})")
    return conformed
