"""How many threads a model's native libraries (OpenMP, OpenBLAS, MKL) may start."""

from __future__ import annotations

import os

NATIVE_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
"""The variables that size native thread pools, which otherwise take one thread per core."""


def limit_native_threads(threads: int) -> None:
    """Size the native pools of libraries loaded from now on (this process and its children).

    An operator's own setting wins: each variable is set only where it is not set yet.
    Pools already started keep their size.
    """
    for name in NATIVE_THREAD_ENV:
        os.environ.setdefault(name, str(threads))
