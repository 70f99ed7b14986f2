"""Rows per second of a loaded model at batch 1 and batch 32, measured where it was loaded.

Each measurement repeats predicts on the gate's rows (cycling through them) for at least
`MIN_CALLS` calls and `MIN_SECONDS`, so a fast model is not timed on a handful of calls
and a slow one does not stall the export. The child processes run with one thread per
library (runtimes/isolated.py), as serving workers do, so before and after compare alike.
"""

from __future__ import annotations

import time

import numpy as np

from shipyard.runtimes.base import Runtime, Tensors

BATCH_SIZES = (1, 32)
MIN_CALLS = 20
MIN_SECONDS = 0.25
MAX_CALLS = 20_000


def rows_per_second(
    runtime: Runtime, inputs: Tensors, outputs: list[str] | None
) -> dict[str, float]:
    """`{"batch_1": rows/s, "batch_32": rows/s}` of `runtime.predict` on `inputs`' rows."""
    count = len(next(iter(inputs.values())))
    speeds: dict[str, float] = {}
    for size in BATCH_SIZES:
        batches = [
            {n: a[(np.arange(size) + start) % count] for n, a in inputs.items()}
            for start in range(0, max(count, size), size)
        ]
        runtime.predict(batches[0], outputs)  # first call: lazy initialisation, not timed
        calls, started = 0, time.perf_counter()
        elapsed = 0.0
        while calls < MAX_CALLS and (calls < MIN_CALLS or elapsed < MIN_SECONDS):
            runtime.predict(batches[calls % len(batches)], outputs)
            calls += 1
            elapsed = time.perf_counter() - started
        speeds[f"batch_{size}"] = calls * size / elapsed if elapsed > 0 else 0.0
    return speeds
