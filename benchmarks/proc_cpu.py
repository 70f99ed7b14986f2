"""CPU time of a process tree, read from /proc/PID/stat: steadier than req/s on shared cores."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 is index 0)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants, the process first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop(0)
        tree.append(current)
        todo += children.get(current, [])
    return tree


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime (fields 14 and 15 of /proc/PID/stat, clock ticks) of each live pid."""
    ticks = {}
    for pid in pids:
        try:
            fields = _stat(pid)
        except OSError:
            continue  # exited
        ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


@dataclass(frozen=True)
class TreeTicks:
    """CPU clock ticks a process tree has used so far, split into its root and the rest."""

    root: int
    rest: int


def tree_ticks(root: int) -> TreeTicks:
    """The root's own utime+stime, and everything below it.

    The rest includes reaped children (cutime + cstime, fields 16 and 17) of every process
    in the tree, so a worker that stopped between two readings still counts in full: its
    parent waited for it, and the kernel added its time to the parent's.
    """
    own = rest = 0
    for pid in process_tree(root):
        try:
            fields = _stat(pid)
        except OSError:
            continue
        mine, reaped = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
        if pid == root:
            own, rest = own + mine, rest + reaped
        else:
            rest += mine + reaped
    return TreeTicks(own, rest)
