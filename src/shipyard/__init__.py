"""Shipyard: deploy machine-learning models and keep them healthy in production."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# A deliberate exception to the layers: the package's face re-exports the SDK
# (`from shipyard import Client`), for type checkers only and lazily at run time, so
# nothing below layer 5 ever imports it.
if TYPE_CHECKING:
    from shipyard.client import Client

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported lazily so `import shipyard` (and the CLI's --help) stays instant.
    if name == "Client":
        from shipyard.client import Client

        return Client
    raise AttributeError(f"module 'shipyard' has no attribute {name!r}")
