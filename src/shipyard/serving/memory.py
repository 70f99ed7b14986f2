"""Resident memory of worker processes, for the server's memory budget."""

from __future__ import annotations

from collections.abc import Iterable

import psutil


def resident_bytes(pids: Iterable[int]) -> int:
    """Sum of the processes' resident set sizes; a process gone already counts 0."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total
