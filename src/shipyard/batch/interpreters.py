"""A pool of batch worker processes on another interpreter: a version's own environment.

`ProcessPoolExecutor` starts its workers with multiprocessing's spawn, which hands each
child the parent's import path: a worker would import the server's copies of the very
libraries the version's environment pins (runtimes/environments.py). So for such a
version the local executor uses this pool instead: plain subprocesses of the
environment's interpreter, each with one end of a socket pair wrapped as a
`multiprocessing.connection.Connection`, taking `(function, arguments)` and answering
`("ok", result)` or `("error", exception)`. It offers the two calls the executor makes
(`submit`, `shutdown`) with the same meaning, including `BrokenProcessPool` for every
chunk a pool held when one of its workers died.
"""

from __future__ import annotations

import os
import pickle
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from typing import Any

from shipyard.runtimes.environments import foreign_import_path
from shipyard.runtimes.lifetime import die_with_parent

_Item = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class _Worker:
    """One child on the environment's interpreter and the thread that feeds it."""

    def __init__(self, python: str, initializer: Callable[..., None], initargs: tuple[Any, ...]):
        ours, theirs = socket.socketpair()
        try:
            self.process = subprocess.Popen(
                [python, "-m", __name__, str(theirs.fileno()), str(os.getpid())],
                pass_fds=(theirs.fileno(),),
                env={**os.environ, "PYTHONPATH": os.pathsep.join(foreign_import_path())},
                stdin=subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.connection = Connection(ours.detach())
        self.connection.send((initializer, initargs))

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        """fn(*args) in the child; its exception raised here; BrokenProcessPool if it died."""
        try:
            self.connection.send((fn, args))
            kind, value = self.connection.recv()
        except (EOFError, OSError):
            raise BrokenProcessPool("a worker process died") from None
        if kind == "error":
            raise value
        return value

    def stop(self, wait: bool) -> None:
        self.connection.close()  # the child reads EOF and exits
        if wait:
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class InterpreterPool:
    """`workers` processes on `python`, each set up by `initializer(*initargs)` first."""

    def __init__(
        self,
        python: str,
        workers: int,
        initializer: Callable[..., None],
        initargs: tuple[Any, ...],
    ) -> None:
        self._tasks: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._broken = threading.Event()
        self._workers = [_Worker(python, initializer, initargs) for _ in range(max(1, workers))]
        self._threads = [
            threading.Thread(target=self._feed, args=(worker,), daemon=True, name="batch-feed")
            for worker in self._workers
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        if self._broken.is_set():
            future.set_exception(BrokenProcessPool("a worker process died"))
        else:
            self._tasks.put((future, fn, args))
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if cancel_futures:
            self._fail_queued(None)
        for _ in self._threads:
            self._tasks.put(None)
        if wait:
            for thread in self._threads:
                thread.join()
        for worker in self._workers:
            worker.stop(wait)

    def _feed(self, worker: _Worker) -> None:
        while (item := self._tasks.get()) is not None:
            future, fn, args = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(worker.call(fn, args))
            except BrokenProcessPool as exc:
                future.set_exception(exc)
                # As ProcessPoolExecutor: a dead worker breaks the pool, and every chunk
                # still waiting fails with it (the executor retries them on a new pool).
                self._broken.set()
                self._fail_queued(exc)
                return
            except BaseException as exc:
                future.set_exception(exc)

    def _fail_queued(self, exc: BaseException | None) -> None:
        """Fail (or, with None, cancel) every task no worker has taken yet."""
        while True:
            try:
                item = self._tasks.get_nowait()
            except queue.Empty:
                return
            if item is None:  # a sentinel: its thread still needs it
                self._tasks.put(None)
                return
            future = item[0]
            if exc is None:
                future.cancel()
            elif future.set_running_or_notify_cancel():
                future.set_exception(exc)


def _child_main(descriptor: int, parent: int) -> None:
    """The child's side: set up once, then answer calls until the parent hangs up."""
    die_with_parent(parent)
    connection = Connection(descriptor)
    try:
        initializer, initargs = connection.recv()
    except EOFError:
        return
    failed: Exception | None = None
    try:
        initializer(*initargs)
    except Exception as exc:  # e.g. the model does not load: every call says so
        failed = exc
    while True:
        try:
            fn, args = connection.recv()
        except EOFError:
            return
        try:
            if failed is not None:
                raise failed
            answer: tuple[str, Any] = ("ok", fn(*args))
        except Exception as exc:
            answer = ("error", exc)
        try:
            connection.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError):
            # An exception the parent could not rebuild: its words still get there.
            connection.send(("error", RuntimeError(f"{type(answer[1]).__name__}: {answer[1]}")))


if __name__ == "__main__":
    _child_main(int(sys.argv[1]), int(sys.argv[2]))
