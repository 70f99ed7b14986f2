"""`shipyard keys …` and `shipyard audit`: run where the registry database is reachable."""

from __future__ import annotations

import typer

from shipyard.cli.models import local_registry

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)


@keys_app.command("create")
def create(
    role: str = typer.Option(..., help="viewer, predictor, deployer or admin."),
    model: list[str] = typer.Option([], "--model", help="Limit the key to this model (repeat)."),
    expires: str | None = typer.Option(None, help="Lifetime like 30d, 12h or 45m."),
    rate: float | None = typer.Option(None, help="Requests per second allowed to this key."),
    name: str = typer.Option("", help="A note saying what the key is for."),
) -> None:
    """Make a key and print it once: it is stored only as a salted hash."""
    from shipyard.config import Settings
    from shipyard.durations import parse_duration
    from shipyard.registry.service import default_user
    from shipyard.security.keys import KeyStore

    lifetime = parse_duration(expires, "expiry") if expires else None
    registry = local_registry()
    try:
        token, record = KeyStore(registry.sessions).create(
            role,
            created_by=default_user(Settings()),
            name=name,
            models=model or None,
            expires_in=lifetime,
            rate_per_second=rate,
        )
    finally:
        registry.close()
    typer.echo(token)
    typer.echo(
        f"key {record.id} ({record.role}) created; this is the only time it is shown", err=True
    )


@keys_app.command("list")
def list_keys() -> None:
    """Every key, without secrets."""
    from rich.console import Console
    from rich.table import Table

    from shipyard.security.keys import KeyStore

    registry = local_registry()
    try:
        rows = KeyStore(registry.sessions).list()
    finally:
        registry.close()
    table = Table("id", "name", "role", "models", "expires", "revoked", "last used")
    for r in rows:
        table.add_row(
            r.id,
            r.name,
            r.role,
            ", ".join(r.models or []) or "all",
            f"{r.expires_at:%Y-%m-%d %H:%M}" if r.expires_at else "never",
            f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "",
            f"{r.last_used_at:%Y-%m-%d %H:%M}" if r.last_used_at else "",
        )
    Console().print(table)


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (second part of the key)."),
) -> None:
    """Revoke a key; servers stop accepting it within seconds."""
    from shipyard.security.keys import KeyStore

    registry = local_registry()
    try:
        keys = KeyStore(registry.sessions)
        keys.revoke(key_id)
        warning = keys.lockout_warning()
    finally:
        registry.close()
    typer.echo(f"key {key_id} revoked")
    if warning:
        typer.echo(f"warning: {warning}", err=True)


def audit(
    since: str | None = typer.Option(None, help="ISO time, or a span back like 30m, 12h, 7d."),
    limit: int = typer.Option(100, min=1, help="Most events to show (newest)."),
    json_output: bool = typer.Option(False, "--json", help="Print JSON lines."),
) -> None:
    """The audit trail: who changed what, when, from where."""
    from datetime import UTC, datetime

    from shipyard.durations import parse_duration
    from shipyard.errors import InvalidInput

    start = None
    if since:
        try:
            start = datetime.fromisoformat(since)
            start = start if start.tzinfo else start.replace(tzinfo=UTC)
        except ValueError:
            try:
                start = datetime.now(UTC) - parse_duration(since)
            except InvalidInput:
                raise InvalidInput(
                    f"--since {since!r} is neither an ISO time nor like 30m"
                ) from None
    registry = local_registry()
    try:
        events = registry.audit.events(since=start, limit=limit)
    finally:
        registry.close()
    if json_output:
        for event in events:
            typer.echo(event.model_dump_json())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("at", "actor", "source", "action", "target", "before", "after")
    for e in events:
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}",
            e.actor,
            e.source,
            e.action,
            e.target,
            str(e.before or ""),
            str(e.after or ""),
        )
    Console().print(table)
