"""Choosing an arm: pure functions, checked against hand-laid weight lines."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from shipyard.registry.manifest import Sticky
from shipyard.routing.arms import Arm, choose, main_index, sticky_key, sticky_point
from shipyard.serving.types import InferRequest, Tensor

SPLIT = [Arm("1", 70), Arm("2", 30)]


@pytest.mark.parametrize(
    ("point", "arm"),
    [(0.0, 0), (0.25, 0), (0.6999, 0), (0.7, 1), (0.99, 1), (0.999999, 1)],
)
def test_a_point_falls_on_the_weight_line_in_route_order(point: float, arm: int) -> None:
    # 70 + 30: [0, 0.7) is the first route, [0.7, 1) the second.
    assert choose(SPLIT, point) == arm


def test_three_way_line_with_unnormalised_weights() -> None:
    arms = [Arm("a", 1), Arm("b", 2), Arm("c", 1)]  # quarters: a | b b | c
    assert [choose(arms, p) for p in (0.1, 0.3, 0.6, 0.8)] == [0, 1, 1, 2]


def test_main_arm_is_the_heaviest_and_the_first_of_equals() -> None:
    assert main_index(SPLIT) == 0
    assert main_index([Arm("1", 5), Arm("2", 95)]) == 1
    assert main_index([Arm("1", 50), Arm("2", 50)]) == 0
    assert main_index([Arm("9", 10), Arm("3", 45), Arm("4", 45)]) == 1
    with pytest.raises(ValueError):
        main_index([])


def test_sticky_points_are_stable_uniform_and_split_by_weight() -> None:
    users = [f"user-{i}".encode() for i in range(4_000)]
    points = [sticky_point(user) for user in users]
    assert points == [sticky_point(user) for user in users]  # same key, same point
    assert all(0.0 <= p < 1.0 for p in points)
    share = Counter(choose(SPLIT, p) for p in points)[1] / len(users)
    assert abs(share - 0.3) < 5 * (0.3 * 0.7 / len(users)) ** 0.5


def _request(**columns: np.ndarray) -> InferRequest:
    return InferRequest([Tensor(name, "BYTES", data) for name, data in columns.items()])


def test_sticky_key_reads_the_named_header_or_input() -> None:
    headers = {"x-user": "alice"}
    request = _request(user_id=np.array([b"bob", b"carol"]), amount=np.array([3.5]))
    assert sticky_key(Sticky(header="X-User"), request, headers.get) == b"alice"
    assert sticky_key(Sticky(header="x-other"), request, headers.get) is None
    assert sticky_key(Sticky(input="user_id"), request, headers.get) == b"bob"
    assert sticky_key(Sticky(input="amount"), request, headers.get) == b"3.5"
    assert sticky_key(Sticky(input="missing"), request, headers.get) is None
    assert sticky_key(None, request, headers.get) is None
