"""The actuator: observe every loaded version's pool, ask the policy, apply its answer.

Every `tick` seconds each pool reports its load since the last tick (`WorkerPool.observe`:
time-averaged requests in flight plus queued, arrivals, p95 of queue wait plus predict).
The samples of the last `window_seconds(policy)` go to the pure policy; a changed count
is applied at once (the pool starts workers warm, or drains them) or, for zero, the
version is unloaded and its next request is a cold start. A scale-up takes only the
memory budget and worker cap left free: it never unloads another version. Every decision
is logged with its inputs and kept for the metrics and the API.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field

from shipyard.scaling.policy import decide, window_seconds
from shipyard.serving.types import (
    Capacity,
    Elastic,
    ElasticPool,
    LoadSample,
    ModelKey,
    ScalingDecision,
)

log = logging.getLogger("shipyard.scaling")


@dataclass
class _Watch:
    """What the autoscaler keeps per pool: its recent samples and its last resize."""

    pool: ElasticPool
    changed_at: float
    samples: deque[LoadSample] = field(default_factory=deque)


class Autoscaler:
    """Moves each loaded version's worker count with its load (see module docstring)."""

    def __init__(self, manager: Capacity, tick: float = 0.5) -> None:
        self.manager = manager
        self.tick = tick
        self._watches: dict[ModelKey, _Watch] = {}

    async def run(self) -> None:
        """Observe and decide every tick until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.tick)  # a sampling cadence, not a sync point
            try:
                await self.step(loop.time())
            except Exception:
                log.exception("autoscaling step failed")

    async def step(self, now: float) -> None:
        """One round: a sample from every serving pool, a decision for each."""
        serving = {version.key: version for version in self.manager.elastic()}
        for key in [k for k in self._watches if k not in serving]:
            del self._watches[key]
        for version in serving.values():
            await self._step_one(version, now)

    async def _step_one(self, version: Elastic, now: float) -> None:
        key, pool = version.key, version.pool
        watch = self._watches.get(key)
        if watch is None or watch.pool is not pool:  # a new load: a new history
            pool.observe(now)  # drop what the load itself looked like
            self._watches[key] = _Watch(pool, changed_at=now)
            return
        policy = version.policy
        sample = pool.observe(now)
        watch.samples.append(sample)
        keep_after = now - window_seconds(policy) - self.tick
        while watch.samples and watch.samples[0].at < keep_after:
            watch.samples.popleft()
        current = pool.desired
        verdict = decide(policy, watch.samples, current, watch.changed_at, now)
        if verdict.desired == current:
            pool.wanted = current
            return
        if verdict.desired == 0:
            if await self.manager.park(key, verdict.reason):
                self._explain(key, current, 0, verdict.reason, sample)
                del self._watches[key]
            return
        desired, reason = verdict.desired, verdict.reason
        pool.wanted = desired
        if desired > current:
            fits = self.manager.room_for(key, desired - current)
            if fits < desired - current:
                desired, reason = current + fits, "budget"
                if fits == 0:
                    return  # logged when something fits; the cap holds meanwhile
        decision = ScalingDecision(
            at=time.time(),
            current=current,
            desired=desired,
            direction="up" if desired > current else "down",
            reason=reason,
            ongoing=sample.ongoing,
            p95_ms=sample.p95_ms,
        )
        self.manager.record(key, decision)
        pool.scale_to(desired)
        watch.changed_at = now
        self._explain(key, current, desired, reason, sample)

    @staticmethod
    def _explain(
        key: ModelKey, current: int, desired: int, reason: str, sample: LoadSample
    ) -> None:
        log.info(
            "scaling %s from %d to %d workers (%s)",
            key,
            current,
            desired,
            reason,
            extra={
                "fields": {
                    "model": key.model,
                    "version": key.version,
                    "from": current,
                    "to": desired,
                    "reason": reason,
                    "ongoing": round(sample.ongoing, 3),
                    "arrivals": sample.arrivals,
                    "p95_ms": None if sample.p95_ms is None else round(sample.p95_ms, 3),
                    "ready": sample.workers,
                }
            },
        )
