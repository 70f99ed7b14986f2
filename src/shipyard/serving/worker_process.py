"""The code that runs inside a worker process: start, load, answer.

A worker is spawned for one version (`worker_main`), or started ahead as a spare with a
framework's libraries imported (`spare_main`) and handed its version later. Either way it
reports how long each phase of its start took, then answers predict requests on its pipe
until the server goes away.

With several HTTP front processes (`shipyard server --http-processes N`) a worker also
listens on a Unix socket in the server's private run folder (`WORKER_SOCKETS_ENV`): every
front connects to it and sends batches there, so all fronts share one set of workers per
version. The worker answers each batch on the connection it came from, taking ready
connections in turn so that no front starves another.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from shipyard.runtimes.base import Runtime, VersionSpec
from shipyard.runtimes.lifetime import die_with_parent
from shipyard.serving.shared_tensors import Attached, share
from shipyard.signature import NUMPY_DTYPES, Signature

log = logging.getLogger("shipyard.workers")
WORKER_SOCKETS_ENV = "SHIPYARD_WORKER_SOCKETS"
"""A private folder (0700) where workers listen for front processes; unset: pipe only."""


def _warm_up(runtime: Runtime, signature: Signature | None) -> None:
    """One tiny predict so the first real request does not pay lazy initialisation."""
    if signature is None or not signature.inputs:
        return
    inputs = {}
    for spec in signature.inputs:
        if spec.datatype == "BYTES" or any(d == 0 for d in spec.shape):
            return
        shape = [1 if d == -1 else d for d in spec.shape]
        inputs[spec.name] = np.zeros(shape, dtype=NUMPY_DTYPES[spec.datatype])
    try:
        runtime.predict(inputs)
    except Exception as exc:  # a model may reject zeros; that is not a load failure
        log.info("warm-up predict of %s skipped: %s", type(runtime).__name__, exc)


def worker_main(connection: Connection, spec: VersionSpec, spawned_at: float) -> None:
    """Entry point of a worker process: load, report, then answer requests forever."""
    entered = time.time()
    _start_process()
    started = time.perf_counter()
    from shipyard.runtimes import preload

    preload(spec.flavor)
    phases = {"spawn": entered - spawned_at, "imports": time.perf_counter() - started}
    _serve(connection, spec, phases)


def spare_main(connection: Connection, flavor: str) -> None:
    """Entry point of a spare worker: start and import `flavor`'s libraries now, then wait
    for the version to serve. A cold start or a scale-up that takes it skips both."""
    _start_process()
    from shipyard.runtimes import preload

    preload(flavor)
    try:
        spec, taken_at = connection.recv()
    except EOFError:
        return  # the server stopped before it needed this spare
    # Spawn and imports happened before the taker asked, except what is left of them
    # when it asks early: that remainder is all the taker waits for.
    _serve(connection, spec, {"spare_wait": max(0.0, time.time() - taken_at)})


def _start_process() -> None:
    # Ctrl-C reaches the server's whole process group; the server stops its workers
    # itself, and a worker must not die mid-request (or print a traceback) before that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The pipe's EOF says the server is gone only between requests; a worker busy in a
    # load or a predict when the server is killed would otherwise finish it, or never.
    die_with_parent()
    # A spawned process starts with no logging set up: log like the server does.
    from shipyard.logs import configure_logging

    configure_logging(json_lines=os.environ.get("SHIPYARD_LOG_FORMAT", "json") != "text")


def _serve(connection: Connection, spec: VersionSpec, phases: dict[str, float]) -> None:
    """Load and warm the version, report how long each phase took, then answer forever."""
    from shipyard.runtimes import load

    try:
        started = time.perf_counter()
        runtime = load(spec)
        phases["load"] = time.perf_counter() - started
        started = time.perf_counter()
        _warm_up(runtime, spec.signature)
        phases["warm_up"] = time.perf_counter() - started
    except BaseException as exc:
        connection.send(("failed", f"{type(exc).__name__}: {exc}", None))
        return
    listener = _listen()
    address = listener.getsockname() if listener is not None else None
    connection.send(("ready", phases, address))
    if listener is None:
        _answer(connection, runtime)
    else:
        _answer_all(connection, listener, runtime)


def _listen() -> socket.socket | None:
    folder = os.environ.get(WORKER_SOCKETS_ENV)
    if not folder:
        return None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(folder, f"worker-{os.getpid()}.sock"))
    listener.listen(64)
    return listener


def _answer(connection: Connection, runtime: Runtime) -> None:
    """Answer the server's batches, one at a time, until its pipe closes."""
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return  # the server went away
        connection.send(_predict(runtime, message))


def _answer_all(parent: Connection, listener: socket.socket, runtime: Runtime) -> None:
    """Answer batches from the server's pipe and from every front that connects; a front
    that goes away loses only its connection.

    Batches that arrive together from several fronts run as one predict where they can
    (`_predict_together`): each front batches only its own requests, and one predict of
    their sum costs less than one each. When the server closes its pipe (it drains this
    worker, or stops), the worker takes no new front but answers those still connected
    until each lets go (a front lets go of a worker the server no longer lists once its
    batches there are answered)."""
    fronts: list[Connection] = []
    watched: list[Any] = [parent, listener]

    def drop(connection: Connection) -> None:
        if connection in fronts:
            fronts.remove(connection)
            connection.close()

    try:
        while watched or fronts:
            received: list[tuple[Connection, Message]] = []
            for ready in wait([*watched, *fronts]):
                if ready is listener:
                    accepted, _ = listener.accept()
                    fronts.append(Connection(accepted.detach()))
                    continue
                assert isinstance(ready, Connection)
                try:
                    received.append((ready, ready.recv()))
                except (EOFError, OSError):
                    if ready is parent:
                        watched = []  # draining: no new fronts, no server
                    drop(ready)
            for connection, reply in _predict_together(runtime, received):
                try:
                    connection.send(reply)
                except OSError:  # that front died mid-batch: its requests failed with it
                    drop(connection)
    finally:
        os.unlink(listener.getsockname())
        listener.close()


Message = tuple[int, Any, list[str] | None]
Reply = tuple[int, bool, Any]


def _predict(runtime: Runtime, message: Message) -> Reply:
    request_id, wire, outputs = message
    attached = Attached(wire)
    try:
        result = runtime.predict(attached.tensors, outputs)
        reply: Reply = (request_id, True, share(result)[0])
        del result  # may be a view of a shared input, which release() unmaps
    except Exception as exc:
        reply = (request_id, False, predict_failure(exc))
    attached.release()
    return reply


def _predict_together(
    runtime: Runtime, received: list[tuple[Connection, Message]]
) -> list[tuple[Connection, Reply]]:
    """One predict for batches of the same shape (inputs' names, dtypes and trailing
    dimensions, and the outputs asked for), split back by rows; alone, any that cannot
    join, or all of them when the joint predict fails (one front's bad input must not
    fail another's batch) or gives an output that is not one row per input row."""
    groups: dict[object, list[tuple[Connection, Message]]] = {}
    for connection, message in received:
        groups.setdefault(_joinable(message), []).append((connection, message))
    replies = []
    for key, group in groups.items():
        joint = _joint(runtime, group) if key is not None and len(group) > 1 else None
        if joint is None:
            replies += [(connection, _predict(runtime, message)) for connection, message in group]
        else:
            replies += joint
    return replies


def _joinable(message: Message) -> object:
    """What batches must share to run as one predict, or None (shared memory, scalars)."""
    _, wire, outputs = message
    if not wire or not all(isinstance(a, np.ndarray) and a.ndim for a in wire.values()):
        return None
    if len({a.shape[0] for a in wire.values()}) != 1:
        return None
    shapes = tuple(sorted((name, a.dtype.str, a.shape[1:]) for name, a in wire.items()))
    return (tuple(outputs) if outputs else None, shapes)


def _joint(
    runtime: Runtime, group: list[tuple[Connection, Message]]
) -> list[tuple[Connection, Reply]] | None:
    wires = [message[1] for _, message in group]
    rows = [next(iter(wire.values())).shape[0] for wire in wires]
    inputs = {name: np.concatenate([wire[name] for wire in wires]) for name in wires[0]}
    try:
        result = runtime.predict(inputs, group[0][1][2])
    except Exception:
        return None
    total = sum(rows)
    if not all(
        isinstance(a, np.ndarray) and a.ndim and a.shape[0] == total for a in result.values()
    ):
        return None
    edges = np.cumsum(rows)[:-1]
    parts = {name: np.split(array, edges) for name, array in result.items()}
    return [
        (connection, (message[0], True, share({n: parts[n][i] for n in parts})[0]))
        for i, (connection, message) in enumerate(group)
    ]


_MODEL_WORDS_LIMIT = 2000
"""Characters of a model's exception text kept for the server log."""


def predict_failure(exc: Exception) -> tuple[bool, str]:
    """What a worker reports of a predict that raised: is it the input's fault, and the
    model's words (for the server log only).

    ValueError and TypeError are how Python libraries say "not this argument"
    (scikit-learn's "Input X contains NaN", XGBoost's XGBoostError, numpy's casts);
    onnxruntime says it with its own InvalidArgument, matched by name because the
    server never imports it. Anything else is the model failing, not the caller.
    """
    refused = isinstance(exc, ValueError | TypeError) or type(exc).__name__ == "InvalidArgument"
    try:
        words = f"{type(exc).__name__}: {exc}"
    except Exception:  # an exception whose __str__ raises still gets reported
        words = type(exc).__name__
    return refused, words[:_MODEL_WORDS_LIMIT]


def _environment_worker_main(descriptor: int, tracker: int, parent: int) -> None:
    """Entry point of a worker on a version's own interpreter (spares.start_in_environment):
    the server's pipe is an inherited socket, the first message on it the version."""
    from multiprocessing import resource_tracker

    die_with_parent(parent)
    # The server's tracker, as a spawned child would have it: segments this worker
    # creates are removed by it if both processes crash.
    if tracker >= 0:
        resource_tracker._resource_tracker._fd = tracker  # type: ignore[attr-defined]
    connection = Connection(descriptor)
    try:
        spec, spawned_at = connection.recv()
    except EOFError:
        return  # the server went away before it sent the version
    worker_main(connection, spec, spawned_at)


if __name__ == "__main__":
    import sys

    _environment_worker_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
