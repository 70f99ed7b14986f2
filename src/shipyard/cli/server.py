"""`shipyard server`: run the control plane."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError

if TYPE_CHECKING:
    from shipyard.config import Settings


def server(
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="REST port."),
    grpc_port: int = typer.Option(8001, help="gRPC port (-1 turns gRPC off)."),
    tls_cert: Path | None = typer.Option(None, help="PEM certificate chain: serve over TLS."),
    tls_key: Path | None = typer.Option(None, help="PEM private key for --tls-cert."),
    insecure: bool = typer.Option(
        False, help="Allow listening beyond 127.0.0.1 with no API keys (anyone may do anything)."
    ),
    http_processes: str | None = typer.Option(
        None,
        help="HTTP processes sharing the port and the model workers: a number, or auto "
        "(a quarter of the cores). Default: SHIPYARD_HTTP_PROCESSES, else 1.",
    ),
) -> None:
    """Start the Shipyard server: control plane and every registered model."""
    from shipyard.server import serve

    options = tls_options(tls_cert, tls_key)
    if http_processes is not None:
        options["http_processes"] = http_processes
    settings = settings_from(options)
    grpc = None if grpc_port < 0 else grpc_port
    serve(settings, host=host, port=port, grpc_port=grpc, insecure=insecure)


def settings_from(options: dict[str, Any]) -> Settings:
    """Settings from the environment and these command-line options; a bad value is the
    command line's error, said in one line."""
    from shipyard.config import Settings

    try:
        return Settings(**options)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise typer.BadParameter(f"{where}: {error['msg']}") from None


def tls_options(cert: Path | None, key: Path | None) -> dict[str, Any]:
    if (cert is None) != (key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    return {"tls_cert": cert, "tls_key": key} if cert and key else {}
