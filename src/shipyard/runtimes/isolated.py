"""Run a model's code for the server in a throw-away process, within a time and a memory limit.

Registration inspects uploaded models and the drift monitor predicts a version's reference
sample; both may run code the model brings (a pickle's `__reduce__`, a plain-Python
model's `predict`). That code never runs in the server: `run_isolated` starts a fresh
interpreter (`subprocess`, not a multiprocessing child, so that the environment is
scrubbed from the first instruction: no `SHIPYARD_*` settings such as database URLs, no
cloud credentials) in its own session, in an empty temporary folder, with `RLIMIT_AS`
capping its memory; it is killed with its whole process group after the time limit.

The answer comes back as JSON, never as a pickle: unpickling what the child wrote would
run the child's code in the server after all. What is sent to the child is pickled (the
server is trusted), so the function must be importable by name.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pickle
import select
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shipyard import errors
from shipyard.config import IsolationLimits
from shipyard.errors import MissingExtra, ShipyardError, UnsupportedModel
from shipyard.runtimes.base import Tensors, VersionSpec
from shipyard.runtimes.environments import foreign_import_path
from shipyard.runtimes.threads import NATIVE_THREAD_ENV

MAX_ANSWER_BYTES = 256 * 1024 * 1024
"""Largest answer read back from a child (a drift sample's predictions are far smaller)."""
# Environment variables a child keeps: locale and search path only, nothing secret.
_KEPT_ENV = ("PATH", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ")
# One thread per library: the child does little work, and every thread's stack and
# malloc arena counts against RLIMIT_AS.
_CHILD_ENV = {
    **dict.fromkeys(NATIVE_THREAD_ENV, "1"),
    "MALLOC_ARENA_MAX": "2",
    "CUDA_VISIBLE_DEVICES": "",  # CPU only: a GPU context alone reserves gigabytes
    "PYTHONDONTWRITEBYTECODE": "1",  # leave the model's folder as registered
}
_CRASH_SIGNALS = (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS)


def run_isolated(
    fn: Callable[..., Any],
    *args: Any,
    limits: IsolationLimits,
    task: str,
    python: str | None = None,
) -> Any:
    """`fn(*args)` in a child process; its JSON-shaped return value, or a 4xx saying why not.

    `python`: the child's interpreter, a version's own environment (None: the server's).
    `task` names the work in errors ("inspecting the model took longer than 60 s"). A
    ShipyardError with a 4xx (or 501) status raised in the child is raised here as the
    same class; any other failure (timeout, memory, a crash, an exception) as
    UnsupportedModel.
    """
    # The child may leave anything in its folder; removing it must not fail the request.
    with tempfile.TemporaryDirectory(
        prefix="shipyard-isolated-", ignore_cleanup_errors=True
    ) as scratch:
        folder = Path(scratch)
        request, answer, output = folder / "request", folder / "answer.json", folder / "output"
        work = folder / "work"
        work.mkdir()
        request.write_bytes(pickle.dumps((fn, args)))
        command = [
            python or sys.executable, "-m", __name__,
            str(request), str(answer), str(limits.memory_bytes), str(os.getpid()),
        ]  # fmt: skip
        with output.open("wb") as log:
            child = subprocess.Popen(
                command,
                cwd=work,
                env=_child_env(work, own_site=python is None),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole, below
            )
        try:
            finished = _wait(child, limits.seconds)
        finally:
            # Whatever the model started goes too; the child is not reaped yet, so its
            # id (the group's id) cannot have been reused.
            _kill_group(child.pid)
            returncode = child.wait()
        if not finished:
            raise UnsupportedModel(
                f"{task} took longer than {limits.seconds:g} s (SHIPYARD_ISOLATION_TIMEOUT)"
            )
        return _answer(answer, output, returncode, limits, task)


def predict_isolated(
    spec: VersionSpec,
    inputs: Tensors,
    outputs: Sequence[str] | None,
    limits: IsolationLimits,
    task: str | None = None,
    python: str | None = None,
) -> Tensors:
    """Load the version and predict on `inputs` in a child process (see `run_isolated`)."""
    answer = run_isolated(
        _predict_here, spec, inputs, list(outputs) if outputs is not None else None,
        limits=limits, task=task or f"predicting with {spec.key}", python=python,
    )  # fmt: skip
    if not isinstance(answer, dict) or not all(isinstance(v, str) for v in answer.values()):
        raise UnsupportedModel(f"predicting with {spec.key} gave an answer of the wrong shape")
    try:
        return {str(name): _decode_array(value) for name, value in answer.items()}
    except (ValueError, OSError, EOFError) as exc:
        raise UnsupportedModel(
            f"predicting with {spec.key} gave unreadable arrays: {exc}"
        ) from None


def _predict_here(spec: VersionSpec, inputs: Tensors, outputs: list[str] | None) -> Any:
    """In the child: load and predict; arrays travel as .npy bytes (no pickles)."""
    from shipyard.runtimes import load

    result = load(spec).predict(inputs, outputs)
    return {str(name): _encode_array(np.asarray(array)) for name, array in result.items()}


def _encode_array(array: np.ndarray) -> str:
    if array.dtype == object:
        array = array.astype(str)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _decode_array(text: str) -> np.ndarray:
    decoded: np.ndarray = np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)
    return decoded


def _child_env(work: Path, own_site: bool = True) -> dict[str, str]:
    env = {name: os.environ[name] for name in _KEPT_ENV if name in os.environ}
    # The server's import path (its working folder too), as serving workers get it, so
    # a model that imports a module the server can import loads the same way here. On
    # an environment's interpreter, less the server's site-packages: the environment
    # appends those after its own pins.
    path = [os.path.abspath(entry) if entry else os.getcwd() for entry in sys.path]
    if not own_site:
        path = foreign_import_path()
    return {
        **env,
        **_CHILD_ENV,
        "HOME": str(work),
        "TMPDIR": str(work),
        "PYTHONPATH": os.pathsep.join(path),
    }


def _wait(child: subprocess.Popen[bytes], seconds: float) -> bool:
    """Wait until the child exits or `seconds` pass, without reaping it: did it exit?"""
    try:
        pidfd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):
        pidfd = -1
    if pidfd >= 0:
        try:
            # poll, not select: a busy server's descriptors may number beyond FD_SETSIZE.
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            return bool(poller.poll(seconds * 1000))
        finally:
            os.close(pidfd)
    try:  # no pidfd (not Linux): reaping here leaves a small window for reuse of its id
        child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):  # already gone
        os.killpg(pgid, signal.SIGKILL)


def _answer(answer: Path, output: Path, returncode: int, limits: IsolationLimits, task: str) -> Any:
    """Read the child's answer, trusting nothing in it but its JSON shape."""
    megabytes = limits.memory_bytes // 2**20
    document: Any = None
    text = _read_regular_file(answer, MAX_ANSWER_BYTES + 1)
    if len(text) > MAX_ANSWER_BYTES:
        raise UnsupportedModel(f"{task} gave an answer over {MAX_ANSWER_BYTES} bytes")
    try:
        document = json.loads(text) if text else None
    except ValueError:
        document = None
    if returncode == 0 and isinstance(document, dict):
        if "value" in document:
            return document["value"]
        if document.get("memory") is True:
            raise UnsupportedModel(
                f"{task} needed more than {megabytes} MiB of memory "
                "(SHIPYARD_ISOLATION_MEMORY_BYTES)"
            )
        if isinstance(document.get("error"), str):
            raise _rebuilt(document, task)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = ""
        if limits.memory_bytes and -returncode in _CRASH_SIGNALS:
            hint = f"; it may have needed more than {megabytes} MiB of memory"
        raise UnsupportedModel(f"{task} crashed (killed by {name}){hint}")
    if returncode == 0:
        raise UnsupportedModel(f"{task} ended without an answer")
    raise UnsupportedModel(f"{task} crashed (exit status {returncode}){_last_line(output)}")


def _rebuilt(document: dict[str, Any], task: str) -> ShipyardError:
    """The error the child reported, if it is one a caller may see; else UnsupportedModel."""
    message = str(document.get("message", ""))[:4000]
    name = document["error"]
    if name == "MissingExtra":
        return MissingExtra(str(document.get("package")), str(document.get("extra")))
    found = getattr(errors, name, None)
    if isinstance(found, type) and issubclass(found, ShipyardError) and 400 <= found.status < 500:
        try:
            return found(message)
        except TypeError:  # a class built from other arguments
            pass
    return UnsupportedModel(f"{task} failed: {message}")


def _last_line(output: Path) -> str:
    """The last line the child printed (a Python fatal error, say), shortened."""
    lines = _read_regular_file(output, 2000, tail=True).decode(errors="replace").splitlines()
    return f": {lines[-1].strip()[:300]}" if lines else ""


def _read_regular_file(path: Path, most: int, tail: bool = False) -> bytes:
    """At most `most` bytes of a file the child could have replaced: never through a
    link, never from a FIFO or a device (/dev/zero never ends); b"" if not a plain file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return b""
    with os.fdopen(fd, "rb") as stream:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            return b""
        if tail:
            stream.seek(max(0, status.st_size - most))
        return stream.read(most)


def _child(request: Path, answer: Path, memory_bytes: int, parent_pid: int) -> int:
    """The child's side: limit itself, run the function, write what happened as JSON."""
    import resource

    from shipyard.runtimes.lifetime import die_with_parent

    die_with_parent(parent_pid)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_bytes > 0:  # soft and hard: the model's code cannot raise it again
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    with answer.open("w") as out:  # opened before the model runs, while memory is free
        document: dict[str, Any]
        try:
            fn, args = pickle.loads(request.read_bytes())
            document = {"value": fn(*args)}
        except MemoryError:
            document = {"memory": True}
        except MissingExtra as exc:
            document = {"error": "MissingExtra", "package": exc.package, "extra": exc.extra}
        except ShipyardError as exc:
            document = {"error": type(exc).__name__, "message": exc.message}
        except BaseException as exc:  # the model's own failure, reported by type and message
            document = {"error": "raised", "message": f"{type(exc).__name__}: {exc}"}
        try:
            text = json.dumps(document)
        except MemoryError:
            text = json.dumps({"memory": True})
        except (TypeError, ValueError) as exc:
            text = json.dumps({"error": "raised", "message": f"an answer that is not JSON: {exc}"})
        out.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
