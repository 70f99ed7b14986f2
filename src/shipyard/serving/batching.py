"""Dynamic batching: requests that queued while a worker was busy run as one predict.

Pure functions over a queue of pending requests; the worker pool drives them.
Adaptive by construction: a request that finds a worker idle goes at once (no
fixed wait); under load, everything that queued meanwhile goes together.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from shipyard.runtimes.base import Tensors
from shipyard.serving.types import RequestContext

BatchKey = tuple[object, ...]


@dataclass(slots=True, eq=False)
class Pending:
    """One request waiting for a worker."""

    inputs: Tensors
    outputs: tuple[str, ...] | None
    future: asyncio.Future[Tensors]
    deadline: float
    arrived: float = 0.0
    rows: int | None = field(default=None)
    """Rows shared by every input, or None when it cannot join a batch."""
    key: BatchKey | None = field(default=None)
    solo: bool = False
    """Run alone: set when a batch it was in failed, to find which request broke it."""
    context: RequestContext | None = None
    """Where the pool stamps queue and predict times, when the caller keeps a timeline."""
    stated_timeout: float = 0.0
    """The deadline the caller set, in seconds, for the 504 that names it."""

    def __post_init__(self) -> None:
        if len(self.inputs) == 1:  # the common case, without the set and the sort
            ((name, array),) = self.inputs.items()
            if array.ndim and array.shape[0] > 0:
                self.rows = array.shape[0]
                self.key = (self.outputs, ((name, array.dtype.str, array.shape[1:]),))
            return
        counts = {a.shape[0] if a.ndim else -1 for a in self.inputs.values()}
        if len(counts) == 1 and (rows := counts.pop()) > 0:
            self.rows = rows
            self.key = (
                self.outputs,
                tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(self.inputs.items())),
            )


def take_batch(queue: deque[Pending], max_rows: int) -> list[Pending]:
    """Remove and return the oldest request and every compatible one that fits."""
    first = queue.popleft()
    if first.solo or first.key is None or first.rows is None:
        return [first]
    batch, rows = [first], first.rows
    kept: deque[Pending] = deque()
    while queue:
        item = queue.popleft()
        item_rows = item.rows or 0
        fits = item.rows is not None and rows + item_rows <= max_rows
        if not item.solo and item.key == first.key and fits:
            batch.append(item)
            rows += item_rows
        else:
            kept.append(item)
    queue.extendleft(reversed(kept))
    return batch


def concat(batch: list[Pending]) -> Tensors:
    if len(batch) == 1:
        return batch[0].inputs
    return {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}


def split(outputs: Tensors, batch: list[Pending]) -> list[Tensors] | None:
    """Each request's own rows of every output; None if an output is not per-row."""
    if len(batch) == 1:
        return [outputs]
    rows = [p.rows or 0 for p in batch]
    total = sum(rows)
    if any(a.ndim == 0 or a.shape[0] != total for a in outputs.values()):
        return None
    edges = np.cumsum(rows)[:-1]
    parts = {name: np.split(array, edges) for name, array in outputs.items()}
    return [{name: parts[name][i] for name in outputs} for i in range(len(batch))]
