"""The autoscaling decision: a window of load samples in, a desired worker count out.

A pure function, like Ray Serve's autoscaling policy: no processes, no clock, no I/O,
so tests walk synthetic traces through it. The rules, first match wins:

1. Clamp: a count below `policy.floor` or above `max_workers` moves there ("policy").
2. Idle: with `scale_to_zero_after` set and `min_workers` 0, a span of that length
   covered by samples with no arrivals and nothing ongoing unloads the pool (0, "idle"),
   however recent the last resize.
3. Only samples ending after the last resize (`changed_at`) count for rules 4-6, and a
   delay's span counts only when those samples reach back over all of it; with delay 0
   the latest sample alone decides.
4. Load up: when every sample of the upscale span wants more than `current`
   (wanted = ceil(ongoing / target), within floor..max), go to the least of them, at
   most doubling ("load"). A spike shorter than `upscale_delay` never scales.
5. Latency up: with `target_p95_ms` set, when every sample of the upscale span that
   answered something was over it (and at least one did), add one worker ("latency").
6. Down: when every sample of the downscale span wants fewer than `current` and none
   was over `target_p95_ms`, go to the most of them, at most halving ("load").
7. Otherwise hold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from shipyard.config import ScalingPolicy
from shipyard.serving.types import LoadSample

_COVER_SLACK = 1e-6
"""Seconds of float slack when checking that samples reach back over a span."""
_CEIL_SLACK = 1e-9
"""So that 4.0 / 2.0 (or 2.1 / 0.7 = 3.0000000000000004) asks for exactly the integer."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """The worker count a pool should have, and why."""

    desired: int
    reason: str
    """hold when desired equals current; else load, latency, idle or policy."""


def window_seconds(policy: ScalingPolicy) -> float:
    """How far back `decide` looks: samples older than this can be dropped."""
    return max(policy.upscale_delay, policy.downscale_delay, policy.scale_to_zero_after or 0.0)


def decide(
    policy: ScalingPolicy,
    window: Sequence[LoadSample],
    current: int,
    changed_at: float,
    now: float,
) -> Verdict:
    """The count `current` workers should move to, given the recent samples (any order).

    `current` is at least one (zero means unloaded, and loading is not this decision);
    `changed_at` is when the count last changed, `now` the time of the latest sample or
    later, both on the samples' monotonic clock.
    """
    if current < policy.floor:
        return Verdict(policy.floor, "policy")
    if current > policy.max_workers:
        return Verdict(policy.max_workers, "policy")

    idle_after = policy.scale_to_zero_after
    if idle_after is not None and policy.min_workers == 0:
        # Idleness is about requests, not resizes: every sample counts, changed_at or not.
        idle = _span(window, now, idle_after, since=-math.inf)
        if idle and all(s.arrivals == 0 and s.ongoing == 0 for s in idle):
            return Verdict(0, "idle")

    up = _span(window, now, policy.upscale_delay, since=changed_at)
    if up:
        # The least any sample wants: a spike shorter than the delay leaves one sample
        # in the span that does not ask for more.
        least = min(_wanted(policy, s) for s in up)
        if least > current:
            return Verdict(min(least, 2 * current), "load")
        target = policy.target_p95_ms
        answered = [s.p95_ms for s in up if s.p95_ms is not None]
        if (
            target is not None
            and current < policy.max_workers
            and answered
            and all(p95 > target for p95 in answered)
        ):
            # Latency says nothing about how many more workers: one at a time.
            return Verdict(current + 1, "latency")

    down = _span(window, now, policy.downscale_delay, since=changed_at)
    if down and not _slow(policy, down):
        most = max(_wanted(policy, s) for s in down)
        if most < current:
            return Verdict(max(most, -(-current // 2)), "load")

    return Verdict(current, "hold")


def _span(window: Sequence[LoadSample], now: float, delay: float, since: float) -> list[LoadSample]:
    """The samples ending after `since` within the last `delay` seconds, or [] when they
    do not reach back over all of it (a decision on part of the span would be a guess)."""
    recent = [s for s in window if s.at > since]
    if not recent:
        return []
    if delay <= 0:
        return [max(recent, key=lambda s: s.at)]
    start = now - delay
    span = [s for s in recent if s.at > start]
    if not span or min(s.at - s.seconds for s in span) > start + _COVER_SLACK:
        return []
    return span


def _wanted(policy: ScalingPolicy, sample: LoadSample) -> int:
    """Workers that would carry this sample's load at the target, within floor..max."""
    need = math.ceil(sample.ongoing / policy.target_ongoing_requests - _CEIL_SLACK)
    return min(max(need, policy.floor), policy.max_workers)


def _slow(policy: ScalingPolicy, span: list[LoadSample]) -> bool:
    """Whether any sample in the span was over the latency target (one blocks downscale)."""
    target = policy.target_p95_ms
    if target is None:
        return False
    return any(s.p95_ms is not None and s.p95_ms > target for s in span)
