"""Worker processes that end when the process that started them ends, however it ends.

A worker busy in a model's load or predict does not read its pipe, so it cannot see
the EOF a dead parent leaves, and `kill -9` of the parent runs none of its cleanup:
without help, such a worker lives on, holding a model in memory. On Linux the kernel
can signal a child when its parent goes (PR_SET_PDEATHSIG); elsewhere this is a no-op
and workers rely on their pipes.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Have the kernel SIGKILL this process when its parent exits; answer whether it will.

    Call it first thing in a worker's entry point. `parent_pid` is the process that
    started this one (default: the multiprocessing parent). If that one is already gone,
    the signal would never come, so this process ends at once instead.

    Caveat: the kernel signals when the *thread* that started the child exits, not the
    whole process, so start workers from a thread that lives as long as they should
    (the main thread, the event loop's thread, the thread that runs a batch job).
    """
    if not sys.platform.startswith("linux"):
        return False
    if parent_pid is None:
        parent = multiprocessing.parent_process()
        parent_pid = parent.pid if parent is not None else None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    if prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return False
    # The parent may have died between this process's start and the call above; then
    # this process was already handed to init (or a subreaper) and no signal will come.
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    return True
