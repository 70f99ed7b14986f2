"""Signature compatibility: hand-written champion/candidate pairs and the findings expected."""

from __future__ import annotations

from typing import Any

import pytest

from shipyard.promotion.compatibility import signature_compatibility
from shipyard.signature import Datatype, Signature, TensorSpec


def spec(name: str, datatype: Datatype = "FP64", shape: list[int] | None = None) -> TensorSpec:
    return TensorSpec(name=name, datatype=datatype, shape=shape or [-1])


def sig(inputs: list[TensorSpec], outputs: list[TensorSpec] | None = None) -> Signature:
    return Signature(inputs=inputs, outputs=outputs or [spec("predict", "INT64")])


BASE = sig([spec("f0"), spec("f1"), spec("f2"), spec("f3")])

# (case, candidate, breaking, non_breaking) — compared against BASE as the champion.
CASES: list[tuple[str, Signature, list[str], list[str]]] = [
    ("identical", BASE, [], []),
    (
        "input removed",
        sig([spec("f0"), spec("f1"), spec("f2")]),
        ["input f3 removed"],
        [],
    ),
    (
        "input retyped",
        sig([spec("f0", "INT64"), spec("f1"), spec("f2"), spec("f3")]),
        ["input f0: FP64 → INT64"],
        [],
    ),
    (
        "input renamed",
        sig([spec("f0"), spec("f1"), spec("f2"), spec("g3")]),
        [
            "input f3 removed",
            "new input g3 (FP64 [-1]): the champion did not take it, so callers do not send it",
        ],
        [],
    ),
    (
        "new input",
        sig([spec("f0"), spec("f1"), spec("f2"), spec("f3"), spec("f4", "BYTES")]),
        ["new input f4 (BYTES [-1]): the champion did not take it, so callers do not send it"],
        [],
    ),
    (
        "input reordered",
        sig([spec("f3"), spec("f2"), spec("f1"), spec("f0")]),
        [],
        [],
    ),
    (
        "output added",
        sig(BASE.inputs, [spec("predict", "INT64"), spec("predict_proba", "FP64", [-1, 2])]),
        [],
        ["output predict_proba added (FP64 [-1, 2])"],
    ),
    (
        "output removed",
        sig(BASE.inputs, [spec("label", "INT64")]),
        ["output predict removed"],
        ["output label added (INT64 [-1])"],
    ),
    (
        "output retyped",
        sig(BASE.inputs, [spec("predict", "FP32")]),
        ["output predict: INT64 → FP32"],
        [],
    ),
]


@pytest.mark.parametrize(("case", "candidate", "breaking", "non_breaking"), CASES)
def test_findings_against_the_champion(
    case: str, candidate: Signature, breaking: list[str], non_breaking: list[str]
) -> None:
    result = signature_compatibility(BASE, candidate)
    assert result == {
        "compatible": not breaking,
        "breaking": breaking,
        "non_breaking": non_breaking,
    }, case


# (case, champion shape, candidate shape, breaking?, change word) for one input "x".
SHAPES: list[tuple[str, list[int], list[int], bool, str]] = [
    ("any rows to fixed rows", [-1, 4], [32, 4], True, "narrowed"),
    ("fixed width changes", [-1, 4], [-1, 5], True, "narrowed"),
    ("fixed width to any", [-1, 4], [-1, -1], False, "widened"),
    ("rank grows", [-1], [-1, 1], True, "rank changed"),
    ("one dim widens, one narrows", [8, -1], [-1, 3], True, "narrowed"),
]


@pytest.mark.parametrize(("case", "old", "new", "breaks", "word"), SHAPES)
def test_input_shapes(case: str, old: list[int], new: list[int], breaks: bool, word: str) -> None:
    result = signature_compatibility(sig([spec("x", shape=old)]), sig([spec("x", shape=new)]))
    message = f"input x: shape {old} → {new} ({word})"
    assert result["compatible"] is not breaks, case
    assert result["breaking" if breaks else "non_breaking"] == [message], case
    assert result["non_breaking" if breaks else "breaking"] == [], case


# Output shapes: only widening is harmless; callers parse the champion's shape.
OUTPUT_SHAPES: list[tuple[list[int], list[int], bool, str]] = [
    ([-1, 2], [-1, -1], False, "widened"),
    ([-1, 2], [-1, 3], True, "narrowed"),
    ([-1, -1], [-1, 3], True, "narrowed"),
]


@pytest.mark.parametrize(("old", "new", "breaks", "word"), OUTPUT_SHAPES)
def test_output_shapes(old: list[int], new: list[int], breaks: bool, word: str) -> None:
    champion = sig([spec("x")], [spec("proba", shape=old)])
    candidate = sig([spec("x")], [spec("proba", shape=new)])
    result = signature_compatibility(champion, candidate)
    message = f"output proba: shape {old} → {new} ({word})"
    assert result["compatible"] is not breaks
    assert result["breaking" if breaks else "non_breaking"] == [message]


def test_retyped_and_reshaped_input_reports_both() -> None:
    champion = sig([spec("x", "FP64", [-1, 4])])
    candidate = sig([spec("x", "FP32", [-1, 3])])
    result = signature_compatibility(champion, candidate)
    assert result["breaking"] == [
        "input x: FP64 → FP32",
        "input x: shape [-1, 4] → [-1, 3] (narrowed)",
    ]


MISSING: list[tuple[Signature | None, Signature | None, dict[str, Any]]] = [
    (
        None,
        BASE,
        {
            "compatible": True,
            "breaking": [],
            "non_breaking": ["champion has no signature: could not compare"],
        },
    ),
    (
        None,
        None,
        {
            "compatible": True,
            "breaking": [],
            "non_breaking": ["neither version has a signature: could not compare"],
        },
    ),
    (
        BASE,
        None,
        {"compatible": False, "breaking": ["candidate has no signature"], "non_breaking": []},
    ),
]


@pytest.mark.parametrize(("champion", "candidate", "expected"), MISSING)
def test_missing_signatures(
    champion: Signature | None, candidate: Signature | None, expected: dict[str, Any]
) -> None:
    assert signature_compatibility(champion, candidate) == expected
