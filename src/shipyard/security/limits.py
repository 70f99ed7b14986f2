"""Rate limits in one process's memory: token buckets by name, bounded in number.

Written here rather than taken from a library: a bucket is ten lines, lives in
one process's memory, and must cost nanoseconds per request.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """`rate` requests per second, bursts up to `burst` (default: one second's worth)."""

    rate: float
    burst: float | None = None
    tokens: float = field(default=0.0)
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.capacity

    @property
    def capacity(self) -> float:
        return self.burst if self.burst is not None else max(1.0, self.rate)

    def take(self) -> float:
        """0 if a request may go now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def give_back(self) -> None:
        """Return what `take` took: what it was taken for did not count after all."""
        self.tokens = min(self.capacity, self.tokens + 1.0)


class Buckets:
    """A bucket per name (a key, a JWT subject, a client address); past `most`
    names, the least recently used is forgotten, so a flood of names costs no memory."""

    def __init__(self, most: int = 10_000) -> None:
        self.most = most
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def get(self, name: str, rate: float, burst: float | None = None) -> TokenBucket:
        bucket = self._buckets.get(name)
        if bucket is not None and bucket.rate == rate and bucket.burst == burst:
            self._buckets.move_to_end(name)
            return bucket
        bucket = self._buckets[name] = TokenBucket(rate, burst)
        self._buckets.move_to_end(name)
        if len(self._buckets) > self.most:
            self._buckets.popitem(last=False)
        return bucket


def client_host(source: str) -> str:
    """The address part of a transport's peer: `127.0.0.1:5123`, `ipv4:10.0.0.7:5123` and
    `ipv6:[::1]:5123` give `127.0.0.1`, `10.0.0.7` and `::1`."""
    for scheme in ("ipv4:", "ipv6:"):
        source = source.removeprefix(scheme)
    host, colon, port = source.rpartition(":")
    if colon and port.isdigit():
        source = host
    return source.strip("[]") or "?"
