"""`shipyard server`: run the control plane."""

from __future__ import annotations

import typer


def server(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="Port to listen on."),
) -> None:
    """Start the Shipyard server (control-plane API) in the foreground."""
    from shipyard.config import Settings
    from shipyard.server import serve

    serve(Settings(), host=host, port=port)
