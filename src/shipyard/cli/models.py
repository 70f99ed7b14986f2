"""`shipyard models …`: register, list, show, alias, archive, scale."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from shipyard.client import Client, LocalClient
    from shipyard.registry import records
    from shipyard.registry.service import Registry

app = typer.Typer(help="Register models and manage their versions.", no_args_is_help=True)

JsonOption = typer.Option(False, "--json", help="Print JSON instead of tables.")


def connect() -> Client | LocalClient:
    """The server at SHIPYARD_URL when set, otherwise the local home directly."""
    from shipyard.client import Client, LocalClient
    from shipyard.config import Settings

    settings = Settings()
    if settings.url:
        return Client(settings.url)  # SHIPYARD_API_KEY and SHIPYARD_CA_BUNDLE too
    return LocalClient.open(settings)


def local_registry(command: str, *, create: bool = False) -> Registry:
    """The registry in SHIPYARD_HOME (or SHIPYARD_DATABASE_URL), acting as the local user:
    for commands that work next to the database (batch jobs, image builds).

    Never an empty registry made up on the spot (printing empty tables from it would
    look like an answer): one that does not exist is an error, unless `create`."""
    from shipyard.client import LocalClient
    from shipyard.config import Settings
    from shipyard.errors import InvalidInput, NotFound
    from shipyard.registry.service import Registry

    settings = Settings()
    if settings.url and not settings.database_url:
        raise InvalidInput(
            f"`shipyard {command}` works next to the registry database, not through a "
            f"server: unset SHIPYARD_URL ({settings.url}) and set SHIPYARD_HOME or "
            "SHIPYARD_DATABASE_URL where it runs"
        )
    if not create and not Registry.exists(settings):
        raise NotFound(
            f"no Shipyard registry in {settings.home.resolve()}: set SHIPYARD_HOME to "
            "your home (or SHIPYARD_URL to a server)"
        )
    return LocalClient.open(settings).registry


def server_client() -> Client | None:
    """A client for SHIPYARD_URL when it is set (commands with a local and a remote path)."""
    from shipyard.client import Client
    from shipyard.config import Settings

    return Client() if Settings().url else None


def parse_pairs(pairs: list[str], option: str) -> dict[str, str]:
    from shipyard.errors import InvalidInput

    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{option} expects KEY=VALUE, got {pair!r}")
        parsed[key] = value
    return parsed


def parse_metrics(pairs: list[str]) -> dict[str, float]:
    from shipyard.errors import InvalidInput

    metrics: dict[str, float] = {}
    for key, value in parse_pairs(pairs, "--metric").items():
        try:
            metrics[key] = float(value)
        except ValueError as exc:
            raise InvalidInput(f"--metric {key} must be a number, got {value!r}") from exc
    return metrics


@app.command()
def register(
    path: Path = typer.Argument(..., help="Model file or folder."),
    name: str = typer.Option(..., "--name", "-n", help="Model name."),
    alias: list[str] = typer.Option([], "--alias", "-a", help="Point this alias at it."),
    tag: list[str] = typer.Option([], "--tag", "-t", help="KEY=VALUE tag on the version."),
    metric: list[str] = typer.Option([], "--metric", "-m", help="KEY=NUMBER metric."),
    param: list[str] = typer.Option([], "--param", "-p", help="KEY=VALUE training parameter."),
    signature_from: Path | None = typer.Option(
        None, help="Example .csv/.parquet: signature and reference sample."
    ),
    description: str = typer.Option("", help="Free description."),
    code_commit: str | None = typer.Option(None, help="Code commit (default: git HEAD)."),
    data_uri: str | None = typer.Option(None, help="Training data URI."),
    data_hash: str | None = typer.Option(None, help="Training data hash."),
    skip_unchanged: bool = typer.Option(
        False, help="Reuse the newest version if its artifact is byte-identical."
    ),
    requirements: Path | None = typer.Option(
        None,
        "--requirements",
        help="A requirements file pinning the packages the model needs (default: an MLflow "
        "folder's own, else the framework releases detected in the model).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Register a model file or folder as a new immutable version."""
    from shipyard.config import Settings
    from shipyard.registry import records
    from shipyard.registry.service import default_user
    from shipyard.runtimes.environments import read_requirements_file

    options = records.RegistrationOptions(
        name=name,
        aliases=alias,
        tags=parse_pairs(tag, "--tag"),
        description=description,
        lineage=records.Lineage(
            code_commit=code_commit,
            data_uri=data_uri,
            data_hash=data_hash,
            params=parse_pairs(param, "--param"),
            metrics=parse_metrics(metric),
        ),
        created_by=default_user(Settings()),
        skip_unchanged=skip_unchanged,
        requirements=read_requirements_file(requirements) if requirements else None,
    )
    with connect() as client:
        version = client.register(path, options, signature_from)
    if as_json:
        _print_json(version)
    else:
        _show_version(version)


@app.command("list")
def list_models(
    prefix: str | None = typer.Option(None, help="Only names starting with this."),
    tag: str | None = typer.Option(None, help="Only models with tag KEY or KEY=VALUE."),
    alias: str | None = typer.Option(None, help="Only models that have this alias."),
    archived: bool = typer.Option(False, "--archived", help="Include archived models."),
    limit: int = typer.Option(100, help="Page size."),
    page_token: str | None = typer.Option(None, help="Token from the previous page."),
    as_json: bool = JsonOption,
) -> None:
    """List models."""
    with connect() as client:
        page = client.list_models(
            prefix=prefix,
            tag=tag,
            alias=alias,
            include_archived=archived,
            limit=limit,
            page_token=page_token,
        )
    if as_json:
        _print_json(page)
        return
    from shipyard.cli.output import console, print_table

    print_table(
        None,
        ["name", "latest", "versions", "aliases", "tags", "updated"],
        [
            (
                m.name + (" (archived)" if m.archived else ""),
                m.latest_version,
                m.version_count,
                ", ".join(f"{a}→{v}" for a, v in m.aliases.items()),
                ", ".join(f"{k}={v}" for k, v in m.tags.items()),
                m.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
            for m in page.models
        ],
    )
    if page.next_page_token:
        console.print(f"more: --page-token {page.next_page_token}")


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    as_json: bool = JsonOption,
) -> None:
    """Show a model and its versions, or one version in full."""
    from shipyard.registry.refs import parse_ref

    parsed = parse_ref(ref)
    with connect() as client:
        if not parsed.is_model:
            version = client.get_version(parsed)
            evaluations = client.evaluations(parsed)
            if as_json:
                # The version's own fields, plus its evaluations (newest first).
                document = version.model_dump(mode="json")
                document["evaluations"] = [e.model_dump(mode="json") for e in evaluations]
                _print_json(document)
                return
            _show_version(version)
            if evaluations:
                from shipyard.cli.promotion import show_evaluations

                show_evaluations(evaluations)
            return
        model = client.get_model(parsed.name)
        versions = client.list_versions(parsed.name, include_archived=True, limit=1000).versions
    if as_json:
        _print_json(
            {
                "model": model.model_dump(mode="json"),
                "versions": [v.model_dump(mode="json") for v in versions],
            }
        )
        return
    from shipyard.cli.output import print_fields, print_table

    print_fields(
        f"model {model.name}",
        [
            ("description", model.description),
            ("latest", model.latest_version),
            ("aliases", ", ".join(f"{a}→{v}" for a, v in model.aliases.items())),
            ("tags", ", ".join(f"{k}={v}" for k, v in model.tags.items())),
            ("archived", model.archived),
        ],
    )
    print_table(
        "versions",
        ["version", "flavor", "aliases", "digest", "created", "by", "state"],
        [
            (
                v.version,
                v.flavor,
                ", ".join(v.aliases),
                v.artifact.digest[:12],
                v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                v.created_by,
                "archived" if v.archived else "live",
            )
            for v in versions
        ],
    )


@app.command("alias")
def set_alias(
    name: str = typer.Argument(..., help="Model name."),
    alias: str = typer.Argument(..., help="Alias, e.g. production."),
    version: int = typer.Argument(..., help="Version number the alias points at."),
    as_json: bool = JsonOption,
) -> None:
    """Point an alias at a version (creating or moving it)."""
    with connect() as client:
        result = client.set_alias(name, alias, version)
    if as_json:
        _print_json(result)
    else:
        typer.echo(f"{result.model}@{result.alias} → version {result.version}")


@app.command("unalias")
def delete_alias(
    name: str = typer.Argument(..., help="Model name."),
    alias: str = typer.Argument(..., help="Alias to remove."),
) -> None:
    """Remove an alias."""
    with connect() as client:
        client.delete_alias(name, alias)
    typer.echo(f"removed {name}@{alias}")


@app.command()
def archive(
    ref: str = typer.Argument(..., help="NAME:VERSION (one version) or NAME (the model)."),
    as_json: bool = JsonOption,
) -> None:
    """Archive a version or a whole model (nothing is ever deleted)."""
    from shipyard.registry.refs import parse_ref

    parsed = parse_ref(ref)
    with connect() as client:
        result: Any = (
            client.archive_model(parsed.name) if parsed.is_model else client.archive_version(parsed)
        )
    if as_json:
        _print_json(result)
    else:
        typer.echo(f"archived {ref}")


@app.command()
def scale(
    ref: str = typer.Argument(..., help="NAME (what it serves), NAME:VERSION or NAME@ALIAS."),
    min_workers: int | None = typer.Option(
        None, "--min", min=0, help="Fewest workers; 1 or more keeps the version loaded."
    ),
    max_workers: int | None = typer.Option(None, "--max", min=1, help="Most workers."),
    as_json: bool = JsonOption,
) -> None:
    """Set a version's worker bounds on the running server at SHIPYARD_URL."""
    from shipyard.client import SERVER_NEEDED
    from shipyard.config import Settings
    from shipyard.errors import Conflict, InvalidInput
    from shipyard.registry.refs import parse_ref

    parsed = parse_ref(ref)
    if min_workers is None and max_workers is None:
        raise InvalidInput("give --min, --max or both")
    if not Settings().url:
        raise Conflict(SERVER_NEEDED)
    with connect() as client:
        version = parsed.version or parsed.alias  # None: what the name serves
        document = client.scale_model(
            parsed.name, version, min_workers=min_workers, max_workers=max_workers
        )
    if as_json:
        _print_json(document)
    else:
        show_serving([document])


def show_serving(documents: list[dict[str, Any]]) -> None:
    """Version serving documents (the server's API): workers, then recent decisions."""
    from datetime import datetime

    from shipyard.cli.output import print_table

    print_table(
        "serving",
        ["version", "state", "min", "max", "desired", "ready", "starting", "draining",
         "memory", "cold starts"],
        [
            (
                f"{d['model']}:{d['version']}", d["state"], d["min_workers"], d["max_workers"],
                *(d["workers"][s] for s in ("desired", "ready", "starting", "draining")),
                f"{d['memory_bytes'] / 2**20:.0f} MiB", d["cold_starts"],
            )
            for d in documents
        ],
    )  # fmt: skip
    decisions = [(d, c) for d in documents for c in d["recent_decisions"]]
    if not decisions:
        return
    print_table(
        "recent scaling decisions",
        ["version", "at", "from", "to", "direction", "reason", "ongoing", "p95 ms"],
        [
            (
                f"{d['model']}:{d['version']}",
                f"{datetime.fromtimestamp(c['at']):%Y-%m-%d %H:%M:%S}",
                c["from"], c["to"], c["direction"], c["reason"], c["ongoing"], c["p95_ms"],
            )
            for d, c in decisions
        ],
    )  # fmt: skip


def _print_json(value: Any) -> None:
    from shipyard.cli.output import print_json

    print_json(value)


def _environment_fields(environment: records.Environment | None) -> list[tuple[str, Any]]:
    """The version's recorded requirements (`shipyard env show` says how this host has them)."""
    if environment is None:
        return [("environment", "not recorded")]
    pins = ", ".join(environment.requirements) or "(none)"
    return [
        ("requirements", f"{pins} (from {environment.source}, Python {environment.python})"),
        ("environment", environment.digest),
    ]


def _converter(derivation: dict[str, Any]) -> str:
    """ "skl2onnx 1.20.0, opset 17, float32" from an export's derivation record."""
    converter = str(derivation.get("converter", "?"))
    versions = derivation.get("versions") or {}
    parts = [f"{converter} {versions.get(converter, '')}".strip()]
    opset = derivation.get("opset")
    if isinstance(opset, dict):  # by domain: the main one is "" (ai.onnx)
        opset = opset.get("") or opset.get("ai.onnx")
    if opset:
        parts.append(f"opset {opset}")
    parts.append(str(derivation.get("quantize") or "float32"))
    return ", ".join(parts)


def _show_version(version: records.ModelVersion) -> None:
    from shipyard.cli.output import print_fields, print_table

    lineage = version.lineage
    print_fields(
        f"{version.model}:{version.version}",
        [
            ("flavor", version.flavor),
            ("digest", version.artifact.digest),
            ("size", f"{version.artifact.size} bytes"),
            ("aliases", ", ".join(version.aliases)),
            ("tags", ", ".join(f"{k}={v}" for k, v in version.tags.items())),
            ("reference rows", version.reference_sample.rows if version.reference_sample else None),
            ("unsafe format", "yes (runs code when loaded)" if version.unsafe_format else "no"),
            *_environment_fields(version.environment),
            ("description", version.description),
            ("created", f"{version.created_at:%Y-%m-%d %H:%M:%S} by {version.created_by}"),
            ("state", "archived" if version.archived else "live"),
        ],
    )
    derivation = lineage.derivation
    print_fields(
        "lineage",
        [
            ("source", lineage.source_uri),
            ("code commit", lineage.code_commit or "(not in a git repository)"),
            ("data", " ".join(filter(None, [lineage.data_uri, lineage.data_hash]))),
            ("params", ", ".join(f"{k}={v}" for k, v in lineage.params.items())),
            ("metrics", ", ".join(f"{k}={v}" for k, v in lineage.metrics.items())),
            *([("derived from", lineage.derived_from)] if lineage.derived_from else []),
            *([("converter", _converter(derivation))] if derivation else []),
        ],
    )
    if version.signature:
        rows = [("input", s.name, s.datatype, s.shape) for s in version.signature.inputs]
        rows += [("output", s.name, s.datatype, s.shape) for s in version.signature.outputs]
        print_table("signature", ["", "name", "datatype", "shape"], rows)
