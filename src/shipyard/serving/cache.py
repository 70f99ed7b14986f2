"""Result cache: the same inputs to the same version get the stored answer.

Opt-in. The key is the version plus a sha256 of the canonical input bytes
(names, datatypes, shapes, values after signature casting), so a hit is the
very tensors a fresh predict gave, and the encoder turns them into the same
bytes. Bounded by entries and by bytes (LRU), entries expire after a TTL.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shipyard.runtimes.base import Tensors
from shipyard.serving.types import CacheLookups, CacheSnapshot, ModelKey


def cache_key(version: ModelKey, inputs: Tensors, outputs: list[str] | None) -> bytes:
    """The key of these inputs to this version."""
    digest = hashlib.sha256(f"{version.model}:{version.version}".encode())
    digest.update(repr(sorted(outputs) if outputs else None).encode())
    for name in sorted(inputs):
        array = inputs[name]
        digest.update(f"|{name}|{array.dtype.str}|{array.shape}|".encode())
        if array.dtype.kind == "O":
            for item in array.reshape(-1):
                raw = item if isinstance(item, bytes) else str(item).encode()
                digest.update(len(raw).to_bytes(8, "little") + raw)
        else:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.digest()


@dataclass
class _Entry:
    outputs: Tensors
    size: int
    stored_at: float


class ResultCache:
    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._by_version: dict[ModelKey, list[int]] = {}
        """version -> [hits, misses] since start, read through snapshot()."""
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def get(self, key: bytes, version: ModelKey) -> Tensors | None:
        """The stored answer, or None; the lookup counts for `version`."""
        counts = self._by_version.get(version)
        if counts is None:
            counts = self._by_version[version] = [0, 0]
        entry = self._entries.get(key)
        if entry is None or self.clock() - entry.stored_at >= self.ttl_seconds:
            if entry is not None:
                self._drop(key)
            self.misses += 1
            counts[1] += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        counts[0] += 1
        return entry.outputs

    def snapshot(self) -> CacheSnapshot:
        """Entries, bytes and each version's lookups now, for monitoring."""
        return CacheSnapshot(
            entries=len(self._entries),
            bytes=self.bytes,
            lookups=tuple(
                CacheLookups(key, hits, misses)
                for key, (hits, misses) in list(self._by_version.items())
            ),
        )

    def put(self, key: bytes, outputs: Tensors) -> None:
        size = len(key) + sum(a.nbytes for a in outputs.values())
        if size > self.max_bytes or self.max_entries < 1:
            return  # one answer bigger than the whole cache is not worth keeping
        if key in self._entries:
            self._drop(key)
        self._entries[key] = _Entry(outputs, size, self.clock())
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: bytes) -> None:
        self.bytes -= self._entries.pop(key).size
