"""The internal request and response every transport decodes into and encodes from.

Plain slotted dataclasses over numpy arrays: no validation framework on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(slots=True)
class InferRequest:
    inputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    """Request-level `binary_data_output`: every output as raw bytes."""


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    """Answered from the result cache (transports may say so in a header)."""


@dataclass(slots=True)
class RequestContext:
    """One request's identity and timeline, filled in by each layer it passes.

    Stamps are `time.perf_counter()` readings (0.0: the stage did not happen).
    Monitoring reads the finished context after the answer is sent: metrics,
    the access log line, the prediction log and trace spans all come from it,
    so the layers themselves only write a few floats.
    """

    request_id: str
    started: float
    """perf_counter() when the request arrived."""
    wall: float
    """time.time() when the request arrived (for logs, spans and the prediction log)."""
    transport: str = "rest"
    route: str = ""
    """The path template or gRPC method."""
    traceparent: str | None = None
    """The caller's W3C trace context header, if it sent one."""
    deployment: str | None = None
    model: str | None = None
    version: str | None = None
    status: int = 200
    error: str | None = None
    rows: int = 0
    cached: bool = False
    decoded: float = 0.0
    """The body is parsed into tensors."""
    queued: float = 0.0
    """Entered its version's worker queue."""
    dispatched: float = 0.0
    """Left the queue in a batch bound for a worker."""
    predicted: float = 0.0
    """The worker's answer is back."""
    finished: float = 0.0
    """The answer is encoded and about to be sent."""
    batch_rows: int = 0
    """Rows in the batch that carried it to the worker."""
    batch_wait: float = 0.0
    """Seconds it was held with a worker free, waiting for a fuller batch (max_batch_delay)."""
