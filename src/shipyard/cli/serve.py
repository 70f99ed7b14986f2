"""`shipyard serve`: one model, from a file, a folder or a registry reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from shipyard.config import Settings
    from shipyard.registry.refs import ModelRef


def serve(
    model: str = typer.Argument(..., help="A model file or folder, or NAME[:VERSION|@ALIAS]."),
    host: str = typer.Option("127.0.0.1", help="Address to bind."),
    port: int = typer.Option(8000, help="REST port."),
    grpc_port: int | None = typer.Option(
        None,
        help="gRPC port (-1 turns gRPC off) [default: the REST port + 1, so that two "
        "servers on different REST ports never meet on one gRPC port].",
    ),
    workers: int | None = typer.Option(
        None, min=1, help="Worker processes for the model [default: one per core]."
    ),
    max_batch_size: int | None = typer.Option(
        None, min=1, help="Most rows in one dynamic batch (1 = no batching) [default: 64]."
    ),
    max_batch_delay_ms: float | None = typer.Option(
        None, min=0, help="Wait up to this long for a fuller batch [default: 0, adaptive only]."
    ),
    cache: bool = typer.Option(False, help="Cache answers (same inputs, same version)."),
    http_processes: str | None = typer.Option(
        None,
        help="HTTP processes sharing the port and the model workers: a number, or auto "
        "(a quarter of the cores). Default: SHIPYARD_HTTP_PROCESSES, else 1.",
    ),
    tls_cert: Path | None = typer.Option(None, help="PEM certificate chain: serve over TLS."),
    tls_key: Path | None = typer.Option(None, help="PEM private key for --tls-cert."),
    insecure: bool = typer.Option(
        False, help="Allow listening beyond 127.0.0.1 with no API keys (anyone may do anything)."
    ),
    signature_from: Path | None = typer.Option(
        None, help="Example .csv/.parquet giving a file's signature."
    ),
) -> None:
    """Serve one model over Open Inference Protocol V2 and MLflow /invocations.

    A path is served straight from a throwaway registry (nothing is written to
    your home); a reference is served from the registry in SHIPYARD_HOME. API
    keys always come from the registry in SHIPYARD_HOME, when there is one.
    """
    import tempfile

    from shipyard.cli.server import settings_from, tls_options
    from shipyard.config import Settings
    from shipyard.logs import configure_logging
    from shipyard.registry.records import RegistrationOptions
    from shipyard.registry.refs import ModelRef
    from shipyard.registry.service import Registry
    from shipyard.server import serve_app

    configure_logging(json_lines=Settings().log_format == "json")
    given = {
        "workers_per_model": workers,
        "max_batch_size": max_batch_size,
        "max_batch_delay_ms": max_batch_delay_ms,
        "cache": cache or None,
        "http_processes": http_processes,
    }
    options: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    options.update(tls_options(tls_cert, tls_key))
    settings = settings_from(options)
    path = Path(model)
    trust_settings = None
    if path.exists():
        if Registry.exists(settings):
            trust_settings = settings
        # A throwaway registry, whatever SHIPYARD_DATABASE_URL/ARTIFACT_ROOT say.
        scratch = Path(tempfile.mkdtemp(prefix="shipyard-serve-"))
        settings = Settings(
            home=scratch,
            database_url=f"sqlite:///{scratch / 'registry.db'}",
            artifact_root=str(scratch / "artifacts"),
            **options,
        )
        registry = Registry.open(settings)
        name = "".join(c if c.isalnum() or c in "._-" else "-" for c in path.stem) or "model"
        version = registry.register(path, RegistrationOptions(name=name), signature_from)
        ref = ModelRef(name, version=version.version)
    else:
        ref = _registered(model, settings)
        registry = Registry.open(settings)
    serve_app(
        settings,
        host=host,
        port=port,
        grpc_port=_grpc_port(port, grpc_port),
        insecure=insecure,
        registry=registry,
        default_model=ref,
        trust_settings=trust_settings,
    )


def _grpc_port(rest_port: int, given: int | None) -> int | None:
    if given is None:
        return rest_port + 1 if rest_port else 0  # REST on any free port: gRPC too
    return given if given >= 0 else None


MODEL_SUFFIXES = (".joblib", ".pkl", ".pickle", ".skops", ".json", ".ubj", ".txt", ".onnx",
                  ".pt", ".pth", ".torchscript", ".py")  # fmt: skip


def _registered(model: str, settings: Settings) -> ModelRef:
    """The registry reference `model` names, checked before anything starts: a typo'd
    file name is "no such file or model", never a server that fails to start."""
    from shipyard.errors import NotFound
    from shipyard.registry.refs import parse_ref
    from shipyard.registry.service import Registry

    missing = f"no such file or model: {model!r}"
    if "/" in model or model.startswith(".") or model.endswith(MODEL_SUFFIXES):
        raise NotFound(f"{missing} (there is no file at {Path(model).resolve()})")
    ref = parse_ref(model)
    if not Registry.exists(settings):
        raise NotFound(
            f"{missing}: no file of that name here, and no registry in "
            f"{settings.home.resolve()} to look it up in (set SHIPYARD_HOME)"
        )
    registry = Registry.open(settings)
    try:
        registry.models.get_version(ref)
    except NotFound:
        raise NotFound(
            f"{missing}: no file of that name here, and the registry in "
            f"{settings.home.resolve()} has no such model version"
        ) from None
    finally:
        registry.close()
    return ref
