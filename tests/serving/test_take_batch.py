"""`take_batch` at its boundaries, with sizes worked out by hand: a batch may reach the row
limit exactly, never pass it, and what is left behind keeps its order.

Direct and fast on purpose: an off-by-one here otherwise shows only as a slow request.
"""

from __future__ import annotations

import asyncio
from collections import deque

import numpy as np
import pytest

from shipyard.serving.batching import Pending, take_batch


def request(rows: int, width: int = 1, solo: bool = False) -> Pending:
    """A queued request of `rows` rows; `width` other than 1 makes it incompatible."""
    loop = asyncio.new_event_loop()
    try:
        item = Pending({"v": np.zeros((rows, width))}, None, loop.create_future(), 0.0)
    finally:
        loop.close()
    item.solo = solo
    return item


def sizes(batch: list[Pending] | deque[Pending]) -> list[int | None]:
    return [item.rows for item in batch]


@pytest.mark.parametrize(
    ("queued", "max_rows", "batch", "left"),
    [
        ([4, 6], 10, [4, 6], []),  # 4 + 6 = 10: exactly the limit joins
        ([4, 7], 10, [4], [7]),  # 4 + 7 = 11: one over, stays queued
        ([4, 6, 1], 10, [4, 6], [1]),  # full at 10: the 1 waits
        ([9, 1, 1], 10, [9, 1], [1]),  # the second 1 would make 11
        ([1, 1, 1], 1, [1], [1, 1]),  # a limit of one row: one request at a time
        ([1, 1, 1], 3, [1, 1, 1], []),
        ([5, 6, 5], 10, [5, 5], [6]),  # 6 does not fit, the later 5 still does
        ([10, 1], 10, [10], [1]),  # the first alone fills the batch
        ([12, 1], 10, [12], [1]),  # over the limit alone: it runs, by itself
        ([3, 3, 3, 3], 9, [3, 3, 3], [3]),
    ],
)
def test_batch_sizes_at_the_row_limit(
    queued: list[int], max_rows: int, batch: list[int], left: list[int]
) -> None:
    queue = deque(request(rows) for rows in queued)
    assert sizes(take_batch(queue, max_rows)) == batch
    assert sizes(queue) == left


def test_skipped_requests_keep_their_place_in_the_queue() -> None:
    first, wide, big, fits, solo, last = (
        request(2), request(1, width=3), request(9), request(3), request(1, solo=True), request(5)
    )  # fmt: skip
    queue = deque([first, wide, big, fits, solo, last])
    assert take_batch(queue, max_rows=10) == [first, fits, last]  # 2 + 3 + 5 = 10
    assert list(queue) == [wide, big, solo]
    assert take_batch(queue, max_rows=10) == [wide]
    assert take_batch(queue, max_rows=10) == [big]  # the solo one cannot join it
    assert take_batch(queue, max_rows=10) == [solo]
    assert not queue


def test_requests_that_cannot_batch_leave_alone() -> None:
    loop = asyncio.new_event_loop()
    try:
        scalar = Pending({"v": np.asarray(1.0)}, None, loop.create_future(), 0.0)
    finally:
        loop.close()
    other = request(1)
    queue = deque([scalar, other])
    assert take_batch(queue, max_rows=10) == [scalar]  # no row count: cannot be split back
    assert list(queue) == [other]

    solo, after = request(1, solo=True), request(1)
    queue = deque([solo, after])
    assert take_batch(queue, max_rows=10) == [solo]
    assert list(queue) == [after]


def test_requests_for_other_outputs_do_not_join() -> None:
    loop = asyncio.new_event_loop()
    try:
        both = Pending({"v": np.zeros((2, 1))}, None, loop.create_future(), 0.0)
        only_label = Pending({"v": np.zeros((2, 1))}, ("label",), loop.create_future(), 0.0)
    finally:
        loop.close()
    queue = deque([both, only_label])
    assert take_batch(queue, max_rows=10) == [both]
    assert list(queue) == [only_label]
