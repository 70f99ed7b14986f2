"""The autoscaling policy, walked through synthetic load traces: no processes, no sleeps.

Expected counts are worked out by hand beside each case. In the traces, the sample
ending at t covers (t - TICK, t], so a load that changes "after 3.0" first shows in the
sample ending at 3.5, which starts at 3.0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from shipyard.config import ScalingPolicy
from shipyard.scaling.policy import Verdict, decide, window_seconds
from shipyard.serving.types import LoadSample

TICK = 0.5


@dataclass(frozen=True, slots=True)
class Load:
    """What one interval of a trace looked like."""

    ongoing: float
    arrivals: int = 1
    p95_ms: float | None = None


Trace = Callable[[float], Load]
"""The load of the interval ending at t."""


@dataclass(frozen=True, slots=True)
class Change:
    at: float
    to: int
    reason: str


@dataclass(slots=True)
class Run:
    counts: list[tuple[float, int]]
    """The count in force after the decision at each tick."""
    changes: list[Change]

    def count_at(self, t: float) -> int:
        return next(n for at, n in self.counts if at == t)


def simulate(policy: ScalingPolicy, trace: Trace, start: int, until: float) -> Run:
    """Feed the trace to `decide` once a tick from 0, applying each verdict as the actuator
    would: the count changes at once, and `changed_at` moves with it."""
    current, changed_at, run = start, 0.0, Run([], [])
    window: list[LoadSample] = []
    keep = window_seconds(policy) + TICK
    for k in range(1, round(until / TICK) + 1):
        now = k * TICK
        load = trace(now)
        window.append(LoadSample(now, TICK, load.ongoing, load.arrivals, load.p95_ms, current))
        window = [s for s in window if s.at > now - keep]
        if current > 0:  # zero is unloaded: the next request reloads, not the policy
            verdict = decide(policy, window, current, changed_at, now)
            if verdict.desired != current:
                current, changed_at = verdict.desired, now
                run.changes.append(Change(now, current, verdict.reason))
        run.counts.append((now, current))
    return run


def sample(at: float, ongoing: float, p95_ms: float | None = None, arrivals: int = 1) -> LoadSample:
    return LoadSample(at, TICK, ongoing, arrivals, p95_ms, 1)


def samples(ongoing: list[float], end: float = 10.0) -> list[LoadSample]:
    """Back-to-back samples ending at `end`, oldest first."""
    first = end - TICK * (len(ongoing) - 1)
    return [sample(first + i * TICK, x) for i, x in enumerate(ongoing)]


# Target 2 per worker: ongoing 8 wants ceil(8 / 2) = 4 workers, ongoing 1 wants 1.
SCALING = ScalingPolicy(
    min_workers=1,
    max_workers=8,
    target_ongoing_requests=2.0,
    upscale_delay=2.0,
    downscale_delay=4.0,
)


def test_step_up_waits_for_the_delay_then_at_most_doubles() -> None:
    # Ongoing 1 until 3.0, then 8 (wants 4). The sample ending at 5.0 completes 2 s of
    # high load (3.0..5.0): min wanted 4 > 1, doubling caps it at 2. The next 2 s after
    # that resize end at 7.0: min wanted 4 > 2, 2 * 2 = 4 allows 4. Then 4 holds.
    run = simulate(SCALING, lambda t: Load(1 if t <= 3.0 else 8), start=1, until=12.0)
    assert run.changes == [Change(5.0, 2, "load"), Change(7.0, 4, "load")]
    assert run.count_at(4.5) == 1
    assert run.count_at(6.5) == 2
    assert run.count_at(12.0) == 4


def test_a_large_step_still_doubles_once_per_delay() -> None:
    # Ongoing 100 wants ceil(100 / 2) = 50, capped at max 8: 1 -> 2 at 5.0 (3.0 + 2),
    # -> 4 at 7.0, -> 8 at 9.0, each 2 s after the previous resize.
    run = simulate(SCALING, lambda t: Load(1 if t <= 3.0 else 100), start=1, until=12.0)
    assert [(c.at, c.to) for c in run.changes] == [(5.0, 2), (7.0, 4), (9.0, 8)]


@pytest.mark.parametrize(
    ("spike_ends", "changes"),
    [
        # High during (3.0, 4.5]: 1.5 s < 2 s, so every 2 s span holds a sample of 1.
        (4.5, []),
        # The boundary: high during (3.0, 5.0], exactly 2 s, so the span (3.0, 5.0] is
        # all high: 1 -> min(4, 2) = 2 at 5.0; then (5.0, 9.0] all want 1 < 2 ->
        # max(1, ceil(2 / 2) = 1) = 1 at 9.0.
        (5.0, [Change(5.0, 2, "load"), Change(9.0, 1, "load")]),
    ],
)
def test_a_spike_shorter_than_the_upscale_delay_never_scales(
    spike_ends: float, changes: list[Change]
) -> None:
    run = simulate(SCALING, lambda t: Load(8 if 3.0 < t <= spike_ends else 1), start=1, until=12.0)
    assert run.changes == changes


def test_slow_decay_steps_down_after_the_delay_to_the_span_peak_at_most_halving() -> None:
    # Ongoing 16 (wants 8) until 5.0, 10 (wants 5) until 10.0, 6 (wants 3) until 15.0,
    # then 1 (wants 1). Downscale span 4 s, counted from the last resize:
    #   9.0:  (5.0, 9.0] all want 5 < 8           -> max(5, ceil(8 / 2) = 4) = 5
    #   14.0: (10.0, 14.0] all want 3 < 5          -> max(3, ceil(5 / 2) = 3) = 3
    #         (13.5 still held 10.0, wanting 5)
    #   19.0: (15.0, 19.0] all want 1 < 3          -> max(1, ceil(3 / 2) = 2) = 2
    #   23.0: (19.0, 23.0] all want 1 < 2          -> max(1, ceil(2 / 2) = 1) = 1 = floor
    def trace(t: float) -> Load:
        return Load(16 if t <= 5.0 else 10 if t <= 10.0 else 6 if t <= 15.0 else 1)

    run = simulate(SCALING, trace, start=8, until=30.0)
    assert run.changes == [
        Change(9.0, 5, "load"),
        Change(14.0, 3, "load"),
        Change(19.0, 2, "load"),
        Change(23.0, 1, "load"),
    ]
    assert run.count_at(8.5) == 8
    assert run.count_at(13.5) == 5
    assert run.count_at(30.0) == 1


def test_downscale_keeps_what_the_peak_of_the_span_wants() -> None:
    # 4 workers; over the last 4 s the demand was 2 (wants 1) except one sample of 6
    # (wants 3): max wanted 3 < 4 -> max(3, ceil(4 / 2) = 2) = 3, not 1 or 2.
    window = samples([4, 4, 4, 4, 4, 4, 6, 4, 4, 4], end=10.0)  # 5.5..10.0, from 5.0
    assert decide(SCALING, window, 4, changed_at=0.0, now=10.0) == Verdict(3, "load")


def test_oscillating_load_never_flaps() -> None:
    # High (8, wants 4) for 1 s, low (2, wants 1) for 1 s, repeating. Every 2 s upscale
    # span holds 2 low samples (min wanted 1, not > 2) and every 4 s downscale span holds
    # 4 high ones (max wanted 4, not < 2): 2 workers throughout.
    run = simulate(SCALING, lambda t: Load(8 if (t - TICK) % 2 < 1 else 2), start=2, until=30.0)
    assert run.changes == []
    assert {n for _, n in run.counts} == {2}


# Idle after 6 s: ongoing 4 (wants 2) with 4 arrivals each tick until 5.0, then nothing.
IDLE = ScalingPolicy(
    min_workers=0,
    max_workers=4,
    target_ongoing_requests=2.0,
    upscale_delay=2.0,
    downscale_delay=4.0,
    scale_to_zero_after=6.0,
)


def _busy_then_idle(t: float) -> Load:
    return Load(4, arrivals=4) if t <= 5.0 else Load(0, arrivals=0)


def test_zero_traffic_unloads_after_scale_to_zero_after_whatever_the_last_resize() -> None:
    # Down at 9.0: (5.0, 9.0] wants max(1, 0) = 1 < 2 -> 1. Idle from 5.0, so the span
    # (5.0, 11.0] is all idle at 11.0 -> 0, though the resize was only 2 s before.
    run = simulate(IDLE, _busy_then_idle, start=2, until=15.0)
    assert run.changes == [Change(9.0, 1, "load"), Change(11.0, 0, "idle")]
    assert run.count_at(10.5) == 1
    assert run.count_at(15.0) == 0


@pytest.mark.parametrize(
    "policy",
    [replace(IDLE, scale_to_zero_after=None), replace(IDLE, min_workers=1)],
    ids=["never-to-zero", "min-workers-1"],
)
def test_zero_traffic_stays_at_the_floor(policy: ScalingPolicy) -> None:
    # Same trace: down to 1 at 9.0 as above, and no further.
    run = simulate(policy, _busy_then_idle, start=2, until=30.0)
    assert run.changes == [Change(9.0, 1, "load")]
    assert run.count_at(30.0) == 1


def test_a_request_still_in_flight_is_not_idle() -> None:
    # No arrivals for 6 s, but one long request ongoing the whole time: not idle.
    run = simulate(IDLE, lambda t: Load(1, arrivals=0), start=1, until=15.0)
    assert run.changes == []


def test_idle_needs_samples_over_the_whole_span() -> None:
    # 5 s of idle samples (5.5..10.0 start at 5.0) for a 6 s span starting at 4.0: hold.
    window = [sample(5.0 + i * TICK, 0, arrivals=0) for i in range(1, 11)]
    assert decide(IDLE, window, 1, changed_at=0.0, now=10.0) == Verdict(1, "hold")
    # Two more (4.5..10.0, from 4.0): the 6 s are covered.
    window = [sample(4.0 + i * TICK, 0, arrivals=0) for i in range(1, 13)]
    assert decide(IDLE, window, 1, changed_at=0.0, now=10.0) == Verdict(0, "idle")


# Latency target 100 ms; ongoing 1 wants only 1 worker throughout.
LATENCY = replace(SCALING, max_workers=4, target_p95_ms=100.0)


def test_latency_over_target_scales_up_one_at_a_time_and_blocks_downscale() -> None:
    # p95 250 ms > 100 ms from the start: every 2 s upscale span after a resize is all
    # slow -> +1 at 2.0, 4.0 and 6.0, reaching max 4. Load alone would go down (wanted
    # 1 < 4 over 4 s by 10.0), but the slow samples block it: 4 until the end.
    run = simulate(LATENCY, lambda t: Load(1, p95_ms=250.0), start=1, until=20.0)
    assert run.changes == [
        Change(2.0, 2, "latency"),
        Change(4.0, 3, "latency"),
        Change(6.0, 4, "latency"),
    ]
    assert run.count_at(20.0) == 4


def test_downscale_waits_for_latency_to_recover() -> None:
    # Slow until 10.0, 50 ms after. At 4 (max, from 6.0) the first downscale span with
    # no slow sample is (10.0, 14.0]: max wanted 1 -> max(1, ceil(4 / 2) = 2) = 2 at
    # 14.0; then (14.0, 18.0] -> max(1, ceil(2 / 2) = 1) = 1 at 18.0.
    run = simulate(
        LATENCY, lambda t: Load(1, p95_ms=250.0 if t <= 10.0 else 50.0), start=1, until=20.0
    )
    assert [(c.at, c.to, c.reason) for c in run.changes] == [
        (2.0, 2, "latency"),
        (4.0, 3, "latency"),
        (6.0, 4, "latency"),
        (14.0, 2, "load"),
        (18.0, 1, "load"),
    ]


@pytest.mark.parametrize(
    ("p95s", "expected"),
    [
        ([250, None, 300, None], Verdict(3, "latency")),  # unanswered samples do not veto
        ([250, 90, 300, 400], Verdict(2, "hold")),  # one fast sample is enough to wait
        ([None, None, None, None], Verdict(2, "hold")),  # nothing answered: no evidence
    ],
)
def test_latency_needs_every_answered_sample_of_the_span_slow(
    p95s: list[float | None], expected: Verdict
) -> None:
    # 2 s span at 10.0 = 4 samples (8.5..10.0); ongoing 2 wants 1, fewer than 2 held,
    # but the 4 s downscale span is not covered by these samples alone, so no downscale.
    window = [sample(8.5 + i * TICK, 2, p95) for i, p95 in enumerate(p95s)]
    assert decide(LATENCY, window, 2, changed_at=0.0, now=10.0) == expected


def test_load_beats_latency_when_both_ask_for_more() -> None:
    # Ongoing 8 wants 4 > 2 over the 2 s span: load goes to min(4, 2 * 2) = 4, not 3.
    window = [sample(8.5 + i * TICK, 8, 250.0) for i in range(4)]
    assert decide(LATENCY, window, 2, changed_at=0.0, now=10.0) == Verdict(4, "load")


def test_latency_stops_at_max() -> None:
    window = [sample(8.5 + i * TICK, 1, 250.0) for i in range(4)]
    assert decide(LATENCY, window, 4, changed_at=0.0, now=10.0) == Verdict(4, "hold")


@pytest.mark.parametrize(
    ("policy", "current", "expected"),
    [
        (SCALING, 12, Verdict(8, "policy")),  # above max 8
        (replace(SCALING, min_workers=3), 1, Verdict(3, "policy")),  # below min 3
        (replace(IDLE, max_workers=2), 3, Verdict(2, "policy")),  # before idle: 3 > max 2
    ],
)
def test_clamps_come_first(policy: ScalingPolicy, current: int, expected: Verdict) -> None:
    idle = [sample(i * TICK, 0, arrivals=0) for i in range(1, 21)]  # 0..10.0, all idle
    assert decide(policy, idle, current, changed_at=0.0, now=10.0) == expected


def test_samples_before_the_last_resize_do_not_count() -> None:
    # 2 s of ongoing 8 (wants 4) ending at 10.0, but a resize at 9.0 leaves only
    # (9.0, 10.0]: 1 s, not the 2 s span -> hold; at 11.0 with (9.0, 11.0] -> up.
    window = samples([8] * 8, end=11.0)  # 7.5..11.0
    assert decide(SCALING, window[:-2], 2, changed_at=9.0, now=10.0) == Verdict(2, "hold")
    assert decide(SCALING, window, 2, changed_at=9.0, now=11.0) == Verdict(4, "load")


def test_zero_delay_decides_on_the_latest_sample_after_the_resize() -> None:
    eager = replace(SCALING, upscale_delay=0.0, downscale_delay=0.0)
    # Latest wants ceil(8 / 2) = 4 > 1 -> min(4, 2) = 2, whatever came before.
    assert decide(eager, samples([1, 1, 8]), 1, 0.0, 10.0) == Verdict(2, "load")
    # Latest wants ceil(2 / 2) = 1 < 4 -> max(1, ceil(4 / 2)) = 2.
    assert decide(eager, samples([8, 8, 2]), 4, 0.0, 10.0) == Verdict(2, "load")
    # The latest sample ends at the resize itself: nothing to go on yet.
    assert decide(eager, samples([8, 8, 8]), 1, 10.0, 10.0) == Verdict(1, "hold")


@pytest.mark.parametrize(
    ("ongoing", "target", "current"),
    [
        (4.0, 2.0, 2),  # 4 / 2 = 2 exactly: 2 workers, not 3
        (2.1, 0.7, 3),  # 2.1 / 0.7 = 3.0000000000000004 in floats: 3, not 4
    ],
)
def test_an_exact_multiple_of_the_target_wants_exactly_that(
    ongoing: float, target: float, current: int
) -> None:
    policy = replace(SCALING, max_workers=20, target_ongoing_requests=target)
    window = samples([ongoing] * 20)  # 0.5..10.0: covers both spans
    assert decide(policy, window, current, 0.0, 10.0) == Verdict(current, "hold")


@pytest.mark.parametrize(
    ("policy", "seconds"),
    [
        (ScalingPolicy(upscale_delay=3.0, downscale_delay=60.0), 60.0),
        (ScalingPolicy(upscale_delay=3.0, downscale_delay=60.0, scale_to_zero_after=300), 300.0),
        (ScalingPolicy(upscale_delay=5.0, downscale_delay=1.0), 5.0),
    ],
)
def test_window_seconds_is_the_longest_span_decide_reads(
    policy: ScalingPolicy, seconds: float
) -> None:
    assert window_seconds(policy) == seconds
