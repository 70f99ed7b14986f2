"""Cost per 1,000 predictions, from the CPU time workers spent and the rows they scored.

A replica here is one worker process, sized to one core. With a configured price
per replica-hour, the cost of a version's predictions is the CPU-hours its
workers used times that price; divided by the rows predicted, per 1,000. Idle
workers cost CPU-time nothing here; the `provisioned` figure prices the
workers' wall-clock lifetime instead, for capacity that is paid for regardless.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psutil

from shipyard.serving.types import ModelKey, VersionSnapshot


@dataclass
class _Usage:
    cpu_seconds_done: float = 0.0
    """CPU time of this version's workers that have exited."""
    live: dict[int, float] = field(default_factory=dict)
    """pid -> CPU seconds last read, for workers still running."""
    started: dict[int, float] = field(default_factory=dict)
    """pid -> when the worker process started (unix seconds)."""
    replica_seconds_done: float = 0.0


@dataclass(frozen=True)
class VersionCost:
    model: str
    version: str
    rows: int
    cpu_seconds: float
    replica_seconds: float
    replicas: int
    cost_per_1k: float | None
    """From CPU time used; None before the first prediction."""
    provisioned_cost_per_1k: float | None
    """From the workers' lifetime (what reserved replicas cost)."""


class CostMeter:
    """Prices each serving version's predictions from its workers' CPU time.

    `versions` snapshots what the model manager serves (ModelManager.snapshot).
    """

    def __init__(
        self, versions: Callable[[], Sequence[VersionSnapshot]], price_per_replica_hour: float
    ) -> None:
        self.versions = versions
        self.price = price_per_replica_hour
        self._usage: dict[ModelKey, _Usage] = {}

    def read(self) -> list[VersionCost]:
        """Sample the workers' CPU time now (cheap: one /proc read per worker)."""
        now = time.time()
        costs = []
        for version in self.versions():
            pool = version.pool
            if pool is None:
                continue
            usage = self._usage.setdefault(version.key, _Usage())
            pids = set()
            for pid in pool.pids:
                pids.add(pid)
                try:
                    process = psutil.Process(pid)
                    if pid not in usage.started:
                        usage.started[pid] = process.create_time()
                    times = process.cpu_times()
                except psutil.Error:
                    continue
                usage.live[pid] = times.user + times.system
            for gone in set(usage.live) - pids:  # replaced workers: keep what they used
                usage.cpu_seconds_done += usage.live.pop(gone)
                usage.replica_seconds_done += now - usage.started.pop(gone, now)
            cpu = usage.cpu_seconds_done + sum(usage.live.values())
            lifetime = usage.replica_seconds_done + sum(now - t for t in usage.started.values())
            rows = pool.rows
            costs.append(
                VersionCost(
                    model=version.key.model,
                    version=str(version.key.version),
                    rows=rows,
                    cpu_seconds=cpu,
                    replica_seconds=lifetime,
                    replicas=len(pids),
                    cost_per_1k=self._per_1k(cpu, rows),
                    provisioned_cost_per_1k=self._per_1k(lifetime, rows),
                )
            )
        return costs

    def _per_1k(self, seconds: float, rows: int) -> float | None:
        if rows == 0:
            return None
        return self.price * (seconds / 3600.0) / rows * 1000.0
