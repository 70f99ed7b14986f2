"""A rollout step is judged only once it has baked and the candidate has answered enough:
the controller's decision, driven directly with hand-built windows and clocks.

The end-to-end rollout tests see early judging only by luck (a gate that happens to trip
on a thin window); these fail at once.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from shipyard.registry.records import Rollout, RolloutGates, RolloutState
from shipyard.routing.deployments import ArmWindow
from shipyard.routing.rollouts import ready_to_judge

STARTED = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
BAKE_SECONDS = 60.0
MIN_REQUESTS = 20


def rollout(step_started_at: datetime | None = STARTED) -> Rollout:
    return Rollout(
        id=1,
        deployment="svc",
        stable_version=1,
        candidate_version=2,
        steps=[10, 50, 100],
        step_index=0,
        step_started_at=step_started_at,
        bake_seconds=BAKE_SECONDS,
        min_requests=MIN_REQUESTS,
        gates=RolloutGates(),
        state=RolloutState.RUNNING,
        created_by="tester",
        created_at=STARTED,
        updated_at=STARTED,
    )


def answered(requests: int, errors: int = 0) -> ArmWindow:
    """A candidate window that saw `requests` requests, `errors` of them failed."""
    window = ArmWindow()
    for _ in range(requests - errors):
        window.record(0.01, {"y": np.array([1.0])})
    for _ in range(errors):
        window.record(0.01, None)
    return window


@pytest.mark.parametrize(
    ("seconds_in", "requests", "judged"),
    [
        (0.0, 1000, False),  # plenty of traffic, no bake yet
        (59.999, 1000, False),  # a millisecond short of the bake
        (60.0, 20, True),  # both reached exactly
        (60.0, 19, False),  # baked, one request short
        (3600.0, 19, False),  # however long it bakes, min_requests still holds it
        (3600.0, 0, False),  # a candidate nobody called is never judged
        (61.0, 21, True),
    ],
)
def test_a_step_waits_for_its_bake_time_and_min_requests(
    seconds_in: float, requests: int, judged: bool
) -> None:
    now = STARTED + timedelta(seconds=seconds_in)
    assert ready_to_judge(rollout(), answered(requests), now) is judged


def test_failed_requests_count_toward_min_requests() -> None:
    """A candidate that fails every call is judged (and rolled back), not waited on."""
    now = STARTED + timedelta(seconds=BAKE_SECONDS)
    assert ready_to_judge(rollout(), answered(MIN_REQUESTS, errors=MIN_REQUESTS), now)
    assert not ready_to_judge(rollout(), answered(MIN_REQUESTS - 1, errors=5), now)


def test_a_step_not_yet_started_is_not_judged() -> None:
    """The step starts when the router serves its revision; until then there is no window."""
    far_later = STARTED + timedelta(days=1)
    assert not ready_to_judge(rollout(step_started_at=None), answered(1000), far_later)
