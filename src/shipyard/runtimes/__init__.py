"""One module per model framework behind one small interface (see base.py).

`load(spec)` is the one way any process (a serving worker, a batch worker, a Ray
actor, the drift monitor) turns a model version into a Runtime.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.runtimes.base import LoadSpec, Runtime, VersionSpec

__all__ = ["Runtime", "VersionSpec", "load"]


def load(spec: VersionSpec) -> Runtime:
    """Load the version with its flavor; MissingExtra if the flavor's library is absent."""
    # Imported here: every flavor module comes with it, and only a process that loads needs them.
    from shipyard.runtimes.detect import flavor_named

    return flavor_named(spec.flavor).load(
        LoadSpec(Path(spec.path), spec.signature, dict(spec.details))
    )
