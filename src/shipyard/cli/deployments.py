"""`shipyard apply` and `shipyard deployments …`: declarative endpoints with revisions."""

from __future__ import annotations

from pathlib import Path

import typer

from shipyard.cli.models import JsonOption, connect

app = typer.Typer(help="Deployments: list, show, history, rollback.", no_args_is_help=True)


def apply(
    file: Path = typer.Option(
        ..., "-f", "--file", exists=True, dir_okay=False, help="The deployment manifest (YAML)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the diff; change nothing."),
) -> None:
    """Make a manifest live: a new revision if it differs from the live one."""
    with connect() as client:
        result = client.apply(file.read_text(), dry_run=dry_run)
    for line in result.diff:
        typer.echo(line)
    if result.dry_run:
        typer.echo(f"dry run: {'would change' if result.changed else 'no change to'} "
                   f"{result.deployment} (live revision {result.revision})", err=True)  # fmt: skip
    elif result.changed:
        typer.echo(f"{result.deployment}: revision {result.revision} applied", err=True)
    else:
        typer.echo(f"{result.deployment}: unchanged (revision {result.revision})", err=True)


@app.command("list")
def list_deployments(json_output: bool = JsonOption) -> None:
    """Every deployment with its live revision."""
    with connect() as client:
        rows = client.list_deployments()
    if json_output:
        typer.echo("[" + ",".join(r.model_dump_json() for r in rows) + "]")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("deployment", "revision", "model", "routes", "by", "at")
    for r in rows:
        routes = ", ".join(
            f"{route.get('version', route.get('alias'))}:{route.get('weight', 100):g}"
            for route in r.manifest.get("routes", [])
        )
        table.add_row(r.deployment, str(r.revision), r.manifest.get("model", ""), routes,
                      r.created_by, f"{r.created_at:%Y-%m-%d %H:%M:%S}")  # fmt: skip
    Console().print(table)


@app.command("show")
def show(name: str, json_output: bool = JsonOption) -> None:
    """The live revision's manifest."""
    import yaml

    with connect() as client:
        live = client.get_deployment(name)
    if json_output:
        typer.echo(live.model_dump_json())
        return
    typer.echo(f"# {live.deployment} revision {live.revision} by {live.created_by} "
               f"at {live.created_at:%Y-%m-%d %H:%M:%S}")  # fmt: skip
    typer.echo(yaml.safe_dump(live.manifest, sort_keys=False).rstrip())


@app.command("history")
def history(name: str, json_output: bool = JsonOption) -> None:
    """Every revision, oldest first."""
    with connect() as client:
        rows = client.deployment_history(name)
    if json_output:
        typer.echo("[" + ",".join(r.model_dump_json() for r in rows) + "]")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("revision", "reason", "by", "at")
    for r in rows:
        table.add_row(str(r.revision), r.reason, r.created_by, f"{r.created_at:%Y-%m-%d %H:%M:%S}")
    Console().print(table)


@app.command("rollback")
def rollback(
    name: str, to: int = typer.Option(..., "--to", help="Revision to go back to.")
) -> None:
    """Make an earlier revision live again (as a new revision)."""
    with connect() as client:
        live = client.rollback_deployment(name, to)
    typer.echo(f"{name}: revision {live.revision} now live (the manifest of revision {to})")
