"""`shipyard env …`: a version's Python environment (its recorded pins), shown or built.

Against a server (SHIPYARD_URL) both ask the server's host; otherwise this host, with
the local home's registry."""

from __future__ import annotations

from typing import Any

import typer

app = typer.Typer(
    help="Show or build a version's Python environment (its recorded requirements).",
    no_args_is_help=True,
)

JsonOption = typer.Option(False, "--json", help="Print JSON instead of tables.")


def _here(ref: str, build: bool) -> dict[str, Any]:
    """The document the server's route gives, computed on this host."""
    from shipyard.api.environments import environment_document
    from shipyard.client import LocalClient
    from shipyard.config import Settings
    from shipyard.runtimes.environments import EnvironmentBuilder

    settings = Settings()
    with LocalClient.open(settings) as local:
        record = local.get_version(ref)
    requirements = list(record.environment.requirements) if record.environment else []
    builder = EnvironmentBuilder.from_settings(settings)
    state = builder.build(requirements) if build else builder.state(requirements)
    return environment_document(record, state)


def _fetch(ref: str, build: bool) -> dict[str, Any]:
    from shipyard.client import Client
    from shipyard.config import Settings
    from shipyard.registry.refs import parse_ref

    parsed = parse_ref(ref)
    if parsed.is_model:
        from shipyard.errors import InvalidInput

        raise InvalidInput(f"name a version: {ref}:VERSION or {ref}@ALIAS")
    if not Settings().url:
        return _here(ref, build)
    with Client() as client:
        return client.build_environment(parsed) if build else client.environment(parsed)


@app.command()
def show(
    ref: str = typer.Argument(..., help="NAME:VERSION or NAME@ALIAS."),
    as_json: bool = JsonOption,
) -> None:
    """The version's requirements, where they came from, and whether this host (or the
    server's, with SHIPYARD_URL) satisfies them or has their environment built."""
    document = _fetch(ref, build=False)
    if as_json:
        from shipyard.cli.output import print_json

        print_json(document)
        return
    _print(document)


@app.command()
def build(
    ref: str = typer.Argument(..., help="NAME:VERSION or NAME@ALIAS."),
    as_json: bool = JsonOption,
) -> None:
    """Build the version's environment ahead of its first load, on this host (or on the
    server's, with SHIPYARD_URL); a build that failed before is retried."""
    document = _fetch(ref, build=True)
    if as_json:
        from shipyard.cli.output import print_json

        print_json(document)
        return
    _print(document)


def _print(document: dict[str, Any]) -> None:
    from shipyard.cli.output import print_fields

    recorded = document["recorded"] or {}
    here = document["here"]
    if not here["unsatisfied"]:
        status = "satisfied by the server's own packages: nothing to build"
    elif not here["needed"]:
        status = "not satisfied, but SHIPYARD_ENV_MANAGER=local runs it in the server's packages"
    elif here["built"]:
        status = "built"
    else:
        status = "not built yet (built at the version's first load, or with `shipyard env build`)"
    seconds = here.get("seconds")
    fields = [
        ("requirements", ", ".join(recorded.get("requirements", [])) or "(none)"),
        ("source", recorded.get("source")),
        ("digest", recorded.get("digest")),
        ("python", recorded.get("python")),
        ("unsatisfied here", ", ".join(here["unsatisfied"]) or "none"),
        ("status", status),
        ("built in", f"{seconds:.1f} s" if seconds is not None else None),
        ("path", here["path"] if here["needed"] else None),
        ("interpreter", here["python"]),
        ("log", here["log"] if here["needed"] else None),
        ("last failure", here["failure"]),
    ]
    title = f"environment of {document['model']}:{document['version']}"
    print_fields(title, [(key, value) for key, value in fields if value is not None])
