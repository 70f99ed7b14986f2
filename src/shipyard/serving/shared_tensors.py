"""Large tensors cross the server/worker boundary through shared memory, not the pipe.

Pickling a 64 MiB array over a pipe costs three copies (pickle, pipe, unpickle)
and keeps the event loop busy for the whole write. Above a threshold the sender
copies the array once into a named segment and sends only its handle; the
receiver maps the segment and reads it in place. Small arrays stay on the pipe,
where a segment's create/map/unlink costs more than the copy it saves.

Ownership: whoever creates a segment unlinks it once the other side has
answered (the server for inputs, after the reply; the server for outputs,
right after copying them out). The standard library's resource tracker, which
spawned workers share with the server, removes any segment a crash leaves.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np

from shipyard.runtimes.base import Tensors

SHARED_MEMORY_MIN_BYTES = 1 << 20
SEGMENT_PREFIX = "shipyard-"
_names = itertools.count()


@dataclass(frozen=True, slots=True)
class SharedArray:
    """A picklable handle on an array that lives in a shared-memory segment."""

    segment: str
    dtype: str
    shape: tuple[int, ...]


Wire = dict[str, Any]
"""Tensors as they travel: each value an ndarray or a SharedArray handle."""


def _segment_name() -> str:
    # Recognisable in /dev/shm, unique across processes and calls.
    return f"{SEGMENT_PREFIX}{os.getpid()}-{next(_names)}"


def share(tensors: Tensors, min_bytes: int = SHARED_MEMORY_MIN_BYTES) -> tuple[Wire, list[str]]:
    """Move every large numeric array into its own segment; return what to send and the names."""
    wire: Wire = {}
    created: list[str] = []
    for name, array in tensors.items():
        if array.nbytes < min_bytes or array.dtype.kind == "O" or array.dtype.hasobject:
            wire[name] = array
            continue
        segment = shared_memory.SharedMemory(_segment_name(), create=True, size=array.nbytes)
        try:
            np.ndarray(array.shape, array.dtype, buffer=segment.buf)[...] = array
        finally:
            segment.close()  # the mapping goes; the segment stays until unlinked
        created.append(segment.name)
        wire[name] = SharedArray(segment.name, array.dtype.str, array.shape)
    return wire, created


class Attached:
    """Arrays mapped from segments another process made; release() when done with them."""

    def __init__(self, wire: Wire) -> None:
        self._segments: list[shared_memory.SharedMemory] = []
        self._shared_names: set[str] = set()
        self.tensors: Tensors = {}
        for name, value in wire.items():
            if isinstance(value, SharedArray):
                segment = shared_memory.SharedMemory(value.segment)
                self._segments.append(segment)
                self._shared_names.add(name)
                dtype = np.dtype(value.dtype)
                self.tensors[name] = np.ndarray(value.shape, dtype, buffer=segment.buf)
            else:
                self.tensors[name] = value

    def copied(self) -> Tensors:
        """Private copies of the shared arrays, so the segments can go."""
        return {
            name: np.array(array, copy=True) if name in self._shared_names else array
            for name, array in self.tensors.items()
        }

    def release(self) -> None:
        self.tensors = {}
        for segment in self._segments:
            # A model that kept a view keeps the mapping until that view goes.
            with contextlib.suppress(BufferError):
                segment.close()
        self._segments = []


def unlink(names: list[str]) -> None:
    for name in names:
        try:
            segment = shared_memory.SharedMemory(name)
        except FileNotFoundError:
            continue
        segment.close()
        segment.unlink()


def take(wire: Wire) -> Tensors:
    """The tensors of a reply, shared arrays copied out and their segments unlinked."""
    if not any(isinstance(value, SharedArray) for value in wire.values()):
        return wire
    attached = Attached(wire)
    try:
        return attached.copied()
    finally:
        attached.release()
        unlink([v.segment for v in wire.values() if isinstance(v, SharedArray)])
