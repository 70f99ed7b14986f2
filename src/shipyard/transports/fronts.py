"""The primary's supervisor of its HTTP front processes (`--http-processes N`).

The primary binds the port once and hands the listening socket down to N-1 spawned
front processes, so every process accepts on the one socket it bound: no other process
can join the port, as SO_REUSEPORT would let one. A front that dies (`kill -9`, a crash)
fails only the requests it held; the others keep accepting, and it is started again.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import socket
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from shipyard.serving.attached import Channel

log = logging.getLogger("shipyard.fronts")
SPAWN = multiprocessing.get_context("spawn")  # fork would copy the server's threads
_MAX_BACKOFF = 30.0
"""Longest wait, in seconds, before starting again a front that keeps dying."""
_STEADY_SECONDS = 60.0
"""A front that lived this long resets the back-off."""

FrontMain = Callable[..., None]
"""Entry point of a front: (index, listening socket, pipe to the primary, *args)."""


class FrontProcesses:
    def __init__(
        self,
        count: int,
        listener: socket.socket,
        target: FrontMain,
        args: tuple[object, ...],
        on_start: Callable[[int, Channel], None],
        on_exit: Callable[[int], None],
    ) -> None:
        self.count = count
        self.listener = listener
        self.target = target
        self.args = args
        self.on_start = on_start
        """Given each front's index and pipe once it is spawned."""
        self.on_exit = on_exit
        self.running: dict[int, BaseProcess] = {}

    def _start(self, index: int) -> BaseProcess:
        ours, theirs = SPAWN.Pipe()
        process = SPAWN.Process(
            target=self.target,
            args=(index, self.listener, theirs, *self.args),
            daemon=True,
            name=f"shipyard-front-{index}",
        )
        process.start()
        theirs.close()
        log.info("front process %d started (pid %s)", index, process.pid)
        self.on_start(index, Channel(ours))
        return process

    async def run(self) -> None:
        """Start every front, start again any that exits, stop them all when cancelled."""
        loop = asyncio.get_running_loop()
        failures = dict.fromkeys(range(1, self.count + 1), 0)
        started = {}
        try:
            for index in failures:
                self.running[index] = self._start(index)
                started[index] = loop.time()
            while True:
                index = await self._first_exit(loop)
                process = self.running.pop(index)
                await asyncio.to_thread(process.join)
                self.on_exit(index)
                lived = loop.time() - started[index]
                failures[index] = 0 if lived >= _STEADY_SECONDS else failures[index] + 1
                backoff = min(_MAX_BACKOFF, 0.1 * 2 ** failures[index])
                log.warning(
                    "front process %d (pid %s) exited with code %s; starting it again in %.1f s",
                    index, process.pid, process.exitcode, backoff,
                )  # fmt: skip
                await asyncio.sleep(backoff)  # a back-off, not a sync point
                self.running[index] = self._start(index)
                started[index] = loop.time()
        finally:
            processes, self.running = list(self.running.values()), {}
            await asyncio.to_thread(_stop, processes)

    async def _first_exit(self, loop: asyncio.AbstractEventLoop) -> int:
        """The index of the first running front to exit (its sentinel becomes readable)."""
        exited: asyncio.Future[int] = loop.create_future()
        watched = []
        for index, process in self.running.items():

            def done(index: int = index) -> None:
                if not exited.done():
                    exited.set_result(index)

            loop.add_reader(process.sentinel, done)
            watched.append(process.sentinel)
        try:
            return await exited
        finally:
            for sentinel in watched:
                loop.remove_reader(sentinel)


def _stop(processes: list[BaseProcess]) -> None:
    """Ask each front to finish its requests and stop (SIGTERM), then make sure."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
