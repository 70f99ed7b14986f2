"""Live numbers for the console: per-version traffic of a deployment over the last
minutes, from the arm reports every replica already writes each second (the rollout
gates' and guardrails' source: registry/fleet.py), so a chart shows the whole fleet."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from shipyard.registry.service import Registry

WINDOW = timedelta(minutes=5)
BUCKET_SECONDS = 10


@dataclass
class Series:
    """One version's traffic in equal buckets, oldest first (None: no request then)."""

    version: str
    rate: list[float] = field(default_factory=list)
    """requests per second"""
    errors: list[float | None] = field(default_factory=list)
    """share of requests that failed"""
    p95_ms: list[float | None] = field(default_factory=list)
    requests: int = 0
    failed: int = 0
    copies_compared: int = 0
    copies_agreed: int = 0

    @property
    def agreement(self) -> float | None:
        return self.copies_agreed / self.copies_compared if self.copies_compared else None

    @property
    def error_rate(self) -> float | None:
        return self.failed / self.requests if self.requests else None

    @property
    def latest_rate(self) -> float:
        return self.rate[-1] if self.rate else 0.0

    @property
    def latest_p95(self) -> float | None:
        known = [v for v in self.p95_ms if v is not None]
        return known[-1] if known else None


def traffic(registry: Registry, deployment: str, now: datetime | None = None) -> list[Series]:
    """Each version's series over the last WINDOW, in BUCKET_SECONDS buckets."""
    now = now or datetime.now(UTC)
    since = now - WINDOW
    buckets = math.ceil(WINDOW.total_seconds() / BUCKET_SECONDS)
    counts: dict[str, list[list[float]]] = defaultdict(lambda: [[0, 0] for _ in range(buckets)])
    latencies: dict[str, list[list[float]]] = defaultdict(lambda: [[] for _ in range(buckets)])
    series: dict[str, Series] = {}
    for at, report in registry.fleet.timeline(deployment, since):
        index = min(int((at - since).total_seconds() // BUCKET_SECONDS), buckets - 1)
        version = report.version
        found = series.setdefault(version, Series(version))
        counts[version][index][0] += report.requests
        counts[version][index][1] += report.errors
        latencies[version][index].extend(report.latencies)
        found.requests += report.requests
        found.failed += report.errors
        found.copies_compared += report.copies_sent - report.copies_failed
        found.copies_agreed += report.copies_agreed
    for version, found in series.items():
        for (requests, errors), sample in zip(counts[version], latencies[version], strict=True):
            found.rate.append(requests / BUCKET_SECONDS)
            found.errors.append(errors / requests if requests else None)
            found.p95_ms.append(float(np.percentile(sample, 95)) * 1000 if sample else None)
    return sorted(series.values(), key=lambda s: s.version)
