"""`shipyard keys signing …`: the Ed25519 keys that sign edge bundles, kept in the home."""

from __future__ import annotations

from pathlib import Path

import typer

from shipyard.cli.models import JsonOption

app = typer.Typer(help="Ed25519 keys that sign edge bundles.", no_args_is_help=True)


def _home() -> Path:
    from shipyard.config import Settings

    return Settings().home


@app.command("create")
def create(
    name: str = typer.Argument("default", help="Key name; a server signs with `default`."),
) -> None:
    """Make a signing key: HOME/signing/NAME.key (mode 0600) and NAME.pub."""
    from shipyard.security.signing import create_key

    info = create_key(_home(), name)
    typer.echo(f"signing key {info.name} created: key id {info.key_id}")
    typer.echo(f"public key (give it to devices): {info.public_path}")


@app.command("list")
def list_keys(as_json: bool = JsonOption) -> None:
    """The home's signing keys, without their private halves."""
    from shipyard.cli.output import print_json, print_table
    from shipyard.security.signing import list_keys as stored_keys

    keys = stored_keys(_home())
    if as_json:
        print_json(
            {
                "keys": [
                    {"name": k.name, "key_id": k.key_id, "public_key": str(k.public_path),
                     "created_at": k.created_at.isoformat()}
                    for k in keys
                ]
            }
        )  # fmt: skip
        return
    print_table(
        None,
        ["name", "key id", "public key", "created"],
        [(k.name, k.key_id, k.public_path, f"{k.created_at:%Y-%m-%d %H:%M:%S}") for k in keys],
        ids=frozenset({"key id"}),
    )


@app.command("export-public")
def export_public(
    name: str = typer.Argument("default", help="Key name."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write here, not stdout."),
) -> None:
    """Print (or write) the public key, PEM: what devices trust (`edge sync --public-key`)."""
    from shipyard.security.signing import load_private_key, named_key_path, public_pem

    pem = public_pem(load_private_key(named_key_path(_home(), name)).public_key())
    if output is None:
        typer.echo(pem.decode(), nl=False)
    else:
        output.write_bytes(pem)
        typer.echo(f"wrote {output}", err=True)
