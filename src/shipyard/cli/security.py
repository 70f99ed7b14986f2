"""`shipyard keys …` and `shipyard audit`: run where the registry database is reachable."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from shipyard.cli.models import JsonOption, local_registry, server_client

if TYPE_CHECKING:
    from shipyard.registry import records

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
    remote = server_client()
    if remote is not None:
        with remote:
            token, record = remote.create_key(
                role, name=name, models=model or None, expires=expires, rate_per_second=rate
            )
        typer.echo(token)
        typer.echo(
            f"key {record.id} ({record.role}) created; this is the only time it is shown",
            err=True,
        )
        return
    registry = local_registry("keys create", create=True)
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
def list_keys(as_json: bool = JsonOption) -> None:
    """Every key, without secrets."""
    from shipyard.cli.output import print_json, print_table

    rows = _keys()
    if as_json:
        print_json(rows)
        return
    print_table(
        None,
        ["id", "name", "role", "models", "expires", "revoked", "last used"],
        [
            [
                r.id,
                r.name,
                r.role,
                ", ".join(r.models or []) or "all",
                f"{r.expires_at:%Y-%m-%d %H:%M}" if r.expires_at else "never",
                f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "",
                f"{r.last_used_at:%Y-%m-%d %H:%M}" if r.last_used_at else "",
            ]
            for r in rows
        ],
    )


def _keys() -> list[records.ApiKey]:
    from shipyard.security.keys import KeyStore

    remote = server_client()
    if remote is not None:
        with remote:
            return remote.list_keys()
    registry = local_registry("keys list")
    try:
        return KeyStore(registry.sessions).list()
    finally:
        registry.close()


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (second part of the key)."),
) -> None:
    """Revoke a key; servers stop accepting it within seconds."""
    from shipyard.security.keys import KeyStore

    remote = server_client()
    if remote is not None:
        with remote:
            warning = remote.revoke_key(key_id)
    else:
        registry = local_registry("keys revoke")
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
    remote = server_client()
    if remote is not None:
        with remote:
            events = remote.audit_events(since=start, limit=limit)
    else:
        registry = local_registry("audit")
        try:
            events = registry.audit.events(since=start, limit=limit)
        finally:
            registry.close()
    if json_output:
        for event in events:
            typer.echo(event.model_dump_json())
        return
    # One block per event rather than a table: its changes are data of any length,
    # and a seven-column table at 80 columns wrapped them a few letters per line.
    for e in events:
        typer.echo(f"{e.at:%Y-%m-%d %H:%M:%S}  {e.action}  {e.target}")
        typer.echo(f"  by {e.actor} from {e.source}")
        for line in _change(e.before, e.after).splitlines():
            typer.echo(f"  {line}")


def _change(before: object, after: object) -> str:
    """`key: old -> new` for what changed, `key=value` for what is new, one per line
    (`--json` has the records whole)."""
    before = {} if before is None and isinstance(after, dict) else before
    after = {} if after is None and isinstance(before, dict) else after
    if not isinstance(before, dict) or not isinstance(after, dict):
        shown = [_plain(v) for v in (before, after) if v not in (None, {}, [])]
        return " -> ".join(shown)
    lines = []
    for key in dict.fromkeys([*before, *after]):
        old, new = before.get(key), after.get(key)
        if key in before and key in after:
            if old != new:
                lines.append(f"{key}: {_plain(old)} -> {_plain(new)}")
        elif key in after:
            lines.append(f"{key}={_plain(new)}")
        else:
            lines.append(f"{key}: {_plain(old)} -> (removed)")
    return "\n".join(lines)


def _plain(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items()) or "{}"
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value) or "[]"
    return str(value)
