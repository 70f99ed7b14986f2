"""Which arm of a deployment answers: pure functions of the arms, a key and a draw.

A pinned version (checked against the caller's role by the transport's gate) wins;
else a sticky key hashes to a fixed point of the weight line, so one caller always
gets the same arm while the weights stay the same; else a uniform draw picks by
weight. The main arm, what a deployment mostly serves (the stable version during a
rollout), is defined once here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from shipyard.registry.manifest import Sticky
from shipyard.serving.types import InferRequest


class Weighted(Protocol):
    @property
    def weight(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Arm:
    version: str
    weight: float


def main_index(arms: Sequence[Weighted]) -> int:
    """The heaviest arm's position; the first of equals (a 50/50 split keeps its first)."""
    if not arms:
        raise ValueError("a deployment routes to at least one version")
    best = 0
    for index, arm in enumerate(arms):
        if arm.weight > arms[best].weight:
            best = index
    return best


def sticky_point(key: bytes) -> float:
    """A stable point in [0, 1) for a sticky key: the same key, the same point, on any host."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2**64


def choose(arms: Sequence[Weighted], point: float) -> int:
    """The arm a point in [0, 1) falls on, the weight line laid out in route order."""
    total = sum(arm.weight for arm in arms)
    remaining = point * total
    for index, arm in enumerate(arms):
        if remaining < arm.weight:
            return index
        remaining -= arm.weight
    return len(arms) - 1


def sticky_key(
    sticky: Sticky | None, request: InferRequest, metadata: Callable[[str], str | None]
) -> bytes | None:
    """What a sticky deployment keys on: a header/metadata value or an input's first value."""
    if sticky is None:
        return None
    if sticky.header is not None:
        value = metadata(sticky.header.lower())
        return value.encode() if value is not None else None
    for tensor in request.inputs:
        if tensor.name == sticky.input and tensor.data.size:
            first = tensor.data.reshape(-1)[0]
            return first if isinstance(first, bytes) else str(first).encode()
    return None
