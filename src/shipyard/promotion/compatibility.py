"""Can the candidate replace the champion without breaking its callers?

Compares two signatures from the caller's side: callers keep sending the champion's
inputs and reading the champion's outputs. Anything that makes those requests fail,
or those readings wrong, is breaking; anything callers can ignore is not.

Rules (each finding names the tensor):
- breaking: an input removed (a rename shows as removed plus new), an input or output
  retyped, an output removed, an input shape narrowed (a -1 dim becoming fixed, a fixed
  dim changing, or a different rank), and any NEW input: TensorSpec has no optional
  flag, so every input is required and callers do not send the new one;
- non-breaking: an output added, an input shape widened (fixed -> -1);
- output shapes: widened is non-breaking; any other change is breaking, since callers
  parse the champion's output shape (e.g. a class-score width).
"""

from __future__ import annotations

from typing import Any

from shipyard.signature import Signature, TensorSpec


def signature_compatibility(
    champion: Signature | None, candidate: Signature | None
) -> dict[str, Any]:
    """{"compatible": bool, "breaking": [str], "non_breaking": [str]} for the candidate."""
    if champion is None:
        note = "champion has no signature: could not compare"
        if candidate is None:
            note = "neither version has a signature: could not compare"
        return _result([], [note])
    if candidate is None:
        return _result(["candidate has no signature"], [])

    breaking: list[str] = []
    non_breaking: list[str] = []
    _compare_inputs(champion.inputs, candidate.inputs, breaking, non_breaking)
    _compare_outputs(champion.outputs, candidate.outputs, breaking, non_breaking)
    return _result(breaking, non_breaking)


def _result(breaking: list[str], non_breaking: list[str]) -> dict[str, Any]:
    return {"compatible": not breaking, "breaking": breaking, "non_breaking": non_breaking}


def _compare_inputs(
    champion: list[TensorSpec],
    candidate: list[TensorSpec],
    breaking: list[str],
    non_breaking: list[str],
) -> None:
    _compare_shared("input", champion, candidate, breaking, non_breaking)
    known = {spec.name for spec in champion}
    for spec in candidate:
        if spec.name not in known:
            breaking.append(
                f"new input {spec.name} ({spec.datatype} {spec.shape}): "
                "the champion did not take it, so callers do not send it"
            )


def _compare_outputs(
    champion: list[TensorSpec],
    candidate: list[TensorSpec],
    breaking: list[str],
    non_breaking: list[str],
) -> None:
    _compare_shared("output", champion, candidate, breaking, non_breaking)
    known = {spec.name for spec in champion}
    for spec in candidate:
        if spec.name not in known:
            non_breaking.append(f"output {spec.name} added ({spec.datatype} {spec.shape})")


def _compare_shared(
    kind: str,
    champion: list[TensorSpec],
    candidate: list[TensorSpec],
    breaking: list[str],
    non_breaking: list[str],
) -> None:
    """Findings for the champion's tensors: removed, retyped, reshaped."""
    new = {spec.name: spec for spec in candidate}
    for old in champion:
        spec = new.get(old.name)
        if spec is None:
            breaking.append(f"{kind} {old.name} removed")
            continue
        if spec.datatype != old.datatype:
            breaking.append(f"{kind} {old.name}: {old.datatype} → {spec.datatype}")
        change = _shape_change(old.shape, spec.shape)
        if change is None:
            continue
        message = f"{kind} {old.name}: shape {old.shape} → {spec.shape} ({change})"
        (non_breaking if change == "widened" else breaking).append(message)


def _shape_change(old: list[int], new: list[int]) -> str | None:
    """None when equal, else "widened", "narrowed" or "rank changed"."""
    if old == new:
        return None
    if len(old) != len(new):
        return "rank changed"
    # One narrowed dim is enough to break callers, whatever the other dims do.
    narrowed = any(o != n and n != -1 for o, n in zip(old, new, strict=True))
    return "narrowed" if narrowed else "widened"
