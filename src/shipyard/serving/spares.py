"""Spare worker processes: started ahead, a framework's libraries imported, no model yet.

Spawning an interpreter and importing scikit-learn takes 1.5 s on this machine, against
tens of milliseconds to unpickle a small model into it (see docs/scaling.md). So a worker
pool takes a spare when it has one, and the spares are topped up behind it: a cold start
after scale to zero, a scale-up and a crash replacement skip spawn and imports. Spares
are per framework (what a spare imported is what it is good for), started only for the
frameworks of versions this server has loaded.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import socket
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Protocol

from shipyard.runtimes.base import VersionSpec
from shipyard.runtimes.environments import foreign_import_path
from shipyard.runtimes.threads import limit_native_threads
from shipyard.serving.worker_process import spare_main

log = logging.getLogger("shipyard.workers")
SPAWN = multiprocessing.get_context("spawn")  # fork would copy the server's threads


@dataclass
class Spare:
    """A started spare: its process and the server's end of its pipe."""

    process: BaseProcess
    connection: Connection

    def stop(self) -> None:
        """Close and reap it (blocking)."""
        self.connection.close()  # the spare reads EOF and exits
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)


def start_process(
    target: Callable[..., None], args: tuple[object, ...], name: str
) -> tuple[BaseProcess, Connection]:
    """Spawn a worker-like process with one native thread and a pipe to it."""
    # One native thread per worker, set before spawning so the child inherits it (the
    # parent's own pools are already sized). Processes are the unit of parallelism here;
    # on 2 cores, idle BLAS/OpenMP threads spinning in a worker took the CPU the server
    # needed (heavy one-row p50: 5.8 ms before, see BENCHMARKS.md).
    limit_native_threads(1)
    connection, child = SPAWN.Pipe()
    process = SPAWN.Process(target=target, args=(child, *args), daemon=True, name=name)
    process.start()
    child.close()
    return process, connection


class ProcessHandle(Protocol):
    """What the pools use of a worker's process: multiprocessing's BaseProcess has it, and
    so does `InterpreterProcess`."""

    @property
    def pid(self) -> int | None: ...

    @property
    def exitcode(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...

    def kill(self) -> None: ...

    def terminate(self) -> None: ...


class InterpreterProcess:
    """A worker running on another interpreter (its version's own environment), seen
    through the BaseProcess methods the pools use."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen

    @property
    def pid(self) -> int | None:
        return self._popen.pid

    @property
    def exitcode(self) -> int | None:
        return self._popen.poll()

    def is_alive(self) -> bool:
        return self._popen.poll() is None

    def join(self, timeout: float | None = None) -> None:
        # Like BaseProcess.join: no error on timeout; the caller asks is_alive() next.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._popen.wait(timeout)

    def kill(self) -> None:
        self._popen.kill()

    def terminate(self) -> None:
        self._popen.terminate()


def start_in_environment(python: str, spec: VersionSpec) -> tuple[InterpreterProcess, Connection]:
    """Start a worker for `spec` on `python`, an environment's interpreter.

    Not multiprocessing's spawn: spawn hands the child the server's import path, and the
    child would import the server's copies of the very libraries the environment pins.
    A plain subprocess gets the server's path less its site-packages (the environment
    appends those after its own), one end of a socket pair wrapped as the same
    Connection a spawned worker has (so the pickle protocol on it is unchanged), and the
    server's resource tracker (which removes shared-memory segments a crash leaves)."""
    limit_native_threads(1)
    ours, theirs = socket.socketpair()
    resource_tracker.ensure_running()
    tracker = resource_tracker.getfd()
    passed = (theirs.fileno(),) if tracker is None else (theirs.fileno(), tracker)
    try:
        popen = subprocess.Popen(
            [python, "-m", "shipyard.serving.worker_process",
             str(theirs.fileno()), str(-1 if tracker is None else tracker), str(os.getpid())],
            pass_fds=passed,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(foreign_import_path())},
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    connection = Connection(ours.detach())
    connection.send((spec, time.time()))
    return InterpreterProcess(popen), connection


class Spares:
    """Up to `per_flavor` spare processes for each framework in use."""

    def __init__(self, per_flavor: int) -> None:
        self.per_flavor = max(0, per_flavor)
        self._ready: defaultdict[str, list[Spare]] = defaultdict(list)
        self._closed = False

    def take(self, flavor: str) -> Spare | None:
        """A spare for `flavor` (possibly still importing), or None; starts its successor."""
        while self._ready[flavor]:
            spare = self._ready[flavor].pop(0)
            if spare.process.is_alive():
                self.keep(flavor)
                return spare
            spare.connection.close()
        self.keep(flavor)
        return None

    def keep(self, flavor: str) -> None:
        """Start spares for `flavor` until it has `per_flavor` of them."""
        while not self._closed and len(self._ready[flavor]) < self.per_flavor:
            process, connection = start_process(spare_main, (flavor,), f"shipyard-spare-{flavor}")
            self._ready[flavor].append(Spare(process, connection))

    def shed(self) -> Spare | None:
        """Give up one spare (to free memory for a model); the caller stops it."""
        for spares in self._ready.values():
            if spares:
                return spares.pop()
        return None

    def pids(self) -> list[int]:
        return [s.process.pid for spares in self._ready.values() for s in spares if s.process.pid]

    def close(self) -> list[Spare]:
        """Stop starting spares; return those started, for the caller to stop."""
        self._closed = True
        spares = [s for group in self._ready.values() for s in group]
        self._ready.clear()
        return spares


def hand_over(spare: Spare, spec: object) -> None:
    """Give a spare the version it will serve."""
    spare.connection.send((spec, time.time()))
