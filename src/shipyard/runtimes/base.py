"""The small interface every framework module implements.

A flavor recognises a file or folder and says what it can about the model
(`inspect`, used at registration), and loads it into a `Runtime` that predicts
on a batch (`load`, used inside worker processes when serving).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from shipyard.signature import Signature

if TYPE_CHECKING:
    from shipyard.registry.records import ModelVersion


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
    requirements: list[str] = field(default_factory=list)
    """Pins of the libraries the model needs, as found at inspection (`scikit-learn==1.5.2`
    for a pickle that release saved); see runtimes.environments."""


Tensors = dict[str, np.ndarray]
"""Named arrays: a batch of inputs or outputs, first dimension = rows."""


class Runtime(Protocol):
    """A loaded model, ready to predict. Lives in a worker process."""

    def predict(self, inputs: Tensors, outputs: Sequence[str] | None = None) -> Tensors:
        """Predict on a batch of named inputs; return the named outputs asked for (all if None)."""
        ...


@dataclass
class LoadSpec:
    """What a flavor needs to load a model: where it is and what was recorded about it."""

    path: Path
    signature: Signature | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionSpec:
    """One model version fetched to a local path: all any process needs to load it.

    Picklable, so it crosses into serving workers, batch workers and Ray actors;
    `shipyard.runtimes.load` turns it into a Runtime there.
    """

    model: str
    version: int
    flavor: str
    path: str
    signature: Signature | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """The flavor's facts recorded at registration (`ModelVersion.flavor_details`)."""
    environment: list[str] = field(default_factory=list)
    """The version's recorded requirements (pins); see runtimes.environments."""
    environment_digest: str | None = None

    @classmethod
    def of(cls, record: ModelVersion, path: Path | str) -> VersionSpec:
        """The spec of a registered version whose artifact is materialised at `path`."""
        environment = record.environment
        return cls(
            model=record.model,
            version=record.version,
            flavor=record.flavor,
            path=str(path),
            signature=record.signature,
            details=dict(record.flavor_details),
            environment=list(environment.requirements) if environment is not None else [],
            environment_digest=environment.digest if environment is not None else None,
        )

    @property
    def key(self) -> str:
        """`name:version`, as logs, errors and process names show it."""
        return f"{self.model}:{self.version}"


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

    def load(self, spec: LoadSpec) -> Runtime:
        """Load the model for serving; MissingExtra if the library is absent."""
        ...
