"""Signature enforcement: a request is checked against the version's signature
before it can reach a model. Every violation names the input, what was expected
and what came; of the payload itself, only a value its type cannot hold is named.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shipyard.errors import InvalidInput
from shipyard.runtimes.base import Tensors
from shipyard.serving.types import Tensor
from shipyard.signature import NUMPY_DTYPES, Signature, TensorSpec, describe


def _fits_shape(expected: list[int], actual: tuple[int, ...]) -> bool:
    return len(expected) == len(actual) and all(
        e == -1 or e == a for e, a in zip(expected, actual, strict=True)
    )


def out_of_range(array: np.ndarray, target: np.dtype[Any]) -> int | float | None:
    """A value of `array` that `target` cannot hold (None: every one fits).

    Integers must lie within the target's range (numpy would wrap 300 to 44 in INT8).
    Floats must stay finite: 1e40 in FP32 is infinity. Rounding to the nearest value
    the target holds is no loss here (FP64 -> FP32 is how float32 models are fed),
    nor are NaN and infinities, which stay what they were.
    """
    if not array.size:
        return None
    if target.kind in "iu":
        # Python ints: exact for every pair of integer types (UINT64 vs INT64 included).
        lowest, highest = int(array.min()), int(array.max())
        limits = np.iinfo(target)
        if lowest < limits.min:
            return lowest
        return highest if highest > limits.max else None
    with np.errstate(over="ignore"):  # the overflow is what is looked for
        overflowed = np.isinf(array.astype(target)) & np.isfinite(array)
    return float(array[overflowed].flat[0]) if overflowed.any() else None


def _cast(array: np.ndarray, given: str, spec: TensorSpec, where: str) -> np.ndarray:
    """`array`, sent as `given`, as the signature's datatype, if no value changes in kind
    or range: INT32 -> FP64 always; INT64 -> INT8 and FP64 -> FP32 when the values fit;
    FP64 -> INT8, INT64 -> FP32 and BYTES to or from anything never."""
    target = NUMPY_DTYPES[spec.datatype]
    if spec.datatype != "BYTES" and given != "BYTES":
        if np.can_cast(array.dtype, target, casting="safe"):
            return array.astype(target)
        kinds = array.dtype.kind + target.kind
        if kinds in ("ii", "iu", "ui", "uu", "ff"):  # one family: it depends on the values
            value = out_of_range(array, target)
            if value is not None:
                raise InvalidInput(
                    f"{where}: value {value!r} does not fit {spec.datatype} (sent as {given}); "
                    "only casts that keep every value are applied"
                )
            return array.astype(target)
    raise InvalidInput(
        f"{where}: expected {spec.datatype}, got {given} "
        f"(this cast could change values; send {spec.datatype})"
    )


def _conform_one(spec: TensorSpec, tensor: Tensor) -> np.ndarray:
    where = f"input {spec.name!r}"
    array = tensor.data
    if tensor.datatype != spec.datatype:
        array = _cast(array, tensor.datatype, spec, where)
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
