"""The small interface every framework module implements.

For registration a flavor only needs to *recognise* a file or folder and say
what it can about the model (signature, details). Loading and predicting are
the serving layer's concern and join this interface there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from shipyard.signature import Signature


class NotThisFlavor(Exception):
    """Raised by `Flavor.inspect` when the path is not a model of that flavor.

    The message says why, so a refusal can list what every flavor saw.
    """


@dataclass
class Inspection:
    """What a flavor learned about a model at registration time."""

    flavor: str
    signature: Signature | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """Flavor-specific facts worth recording (estimator class, format, library version)."""
    input_example: pa.Table | None = None
    """An example the model ships with (MLflow's input example), if any."""
    unsafe_format: bool = False
    """True for formats that execute code when loaded (pickle, joblib, plain Python)."""


class Flavor(Protocol):
    """Recognises one kind of model file or folder."""

    name: str
    extra: str
    """The pip extra that installs this flavor's library (`shipyard[extra]`)."""

    def inspect(self, path: Path) -> Inspection:
        """Describe the model at `path`, or raise NotThisFlavor saying why not.

        Raise shipyard.errors.MissingExtra when the path looks like this flavor
        but its library is not installed.
        """
        ...
