"""`shipyard server`: run the control plane."""

from __future__ import annotations

import typer


def server(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="REST port."),
    grpc_port: int = typer.Option(8001, help="gRPC port (-1 turns gRPC off)."),
) -> None:
    """Start the Shipyard server: control plane and every registered model."""
    from shipyard.config import Settings
    from shipyard.server import serve

    serve(Settings(), host=host, port=port, grpc_port=None if grpc_port < 0 else grpc_port)
