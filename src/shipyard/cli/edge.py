"""`shipyard bundle` and `shipyard edge …`: signed bundles for devices, and the device side
(sync from a server, roll back, status, run offline). See docs/edge.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from shipyard.cli.models import JsonOption

if TYPE_CHECKING:
    from shipyard.config import Settings
    from shipyard.security.signing import Signer

app = typer.Typer(help="Run signed bundles on a device, updated over the air.",
                  no_args_is_help=True)  # fmt: skip

DirOption = typer.Option(..., "--dir", "-d", help="The device's bundle folder.")


def bundle(
    ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the .zip."),
    sign_key: str | None = typer.Option(
        None,
        "--sign-key",
        help="A signing key's name in the home, or a private key file "
        "(default: SHIPYARD_SIGNING_KEY, else the home's `default` key).",
    ),
    as_json: bool = JsonOption,
) -> None:
    """Write a signed, self-contained bundle of a version's ONNX model (local, or from
    the server at SHIPYARD_URL, which signs with its own key)."""
    import os
    import shutil
    import uuid

    from shipyard.cli.models import connect
    from shipyard.client import Client
    from shipyard.config import Settings
    from shipyard.errors import InvalidInput
    from shipyard.packaging.bundle import bundle_for, url_segment
    from shipyard.registry.refs import parse_ref

    parsed = parse_ref(ref)
    settings = Settings()
    partial = output.with_name(f".{output.name}.{uuid.uuid4().hex}")
    try:
        with connect() as client:
            if isinstance(client, Client):
                if sign_key:
                    raise InvalidInput(
                        "--sign-key signs locally, but SHIPYARD_URL is set: the server signs "
                        "with its own key; leave --sign-key out or unset SHIPYARD_URL"
                    )
                with partial.open("wb") as sink:
                    client.download_bundle(parsed.name, url_segment(parsed), sink)
            else:
                cached = bundle_for(client.registry, parsed, lambda: _signer(settings, sign_key))
                shutil.copyfile(cached.path, partial)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    summary = _summary(output)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(
        f"wrote {output}: {summary['model']}:{summary['version']}, {summary['size']} bytes, "
        f"digest {summary['digest']}, signed by key {summary['key_id']}"
    )


def _signer(settings: Settings, sign_key: str | None) -> Signer:
    from shipyard.security.signing import named_key_path, server_signer, signer_from

    if sign_key is None:
        return server_signer(settings)
    given = Path(sign_key)
    if given.is_file():
        return signer_from(given)
    return signer_from(named_key_path(settings.home, sign_key))


def _summary(path: Path) -> dict[str, Any]:
    """What a written bundle holds, read back from it."""
    import hashlib
    import zipfile

    from shipyard.packaging.edge_runner import MANIFEST_FILE, SIGNATURE_FILE

    with zipfile.ZipFile(path) as archive:
        manifest_bytes = archive.read(MANIFEST_FILE)
        signed = json.loads(archive.read(SIGNATURE_FILE))
    manifest = json.loads(manifest_bytes)
    return {
        "path": str(path),
        "model": manifest["model"],
        "version": manifest["version"],
        "alias": manifest["alias"],
        "derived_from": manifest["derived_from"],
        "digest": hashlib.sha256(manifest_bytes).hexdigest(),
        "key_id": signed["key_id"],
        "size": path.stat().st_size,
        "files": manifest["files"],
    }


@app.command("sync")
def sync(
    ref: str = typer.Argument(..., help="NAME@ALIAS (or NAME:VERSION) to follow."),
    folder: Path = DirOption,
    public_key: Path = typer.Option(
        ...,
        "--public-key",
        help="The trusted signing public key (PEM or raw); never the server's word.",
    ),
    url: str | None = typer.Option(None, help="The server (default: SHIPYARD_URL)."),
    as_json: bool = JsonOption,
) -> None:
    """Fetch the bundle if its digest changed, verify it, and swap it in atomically."""
    from dataclasses import asdict

    from shipyard.client import Client
    from shipyard.config import Settings
    from shipyard.errors import InvalidInput
    from shipyard.packaging.edge import sync as sync_folder
    from shipyard.registry.refs import parse_ref
    from shipyard.security.signing import load_public_key

    parsed = parse_ref(ref)
    trusted = load_public_key(public_key)
    settings = Settings()
    server = url or settings.url
    if not server:
        raise InvalidInput("edge sync needs a server: --url URL or SHIPYARD_URL")
    key = settings.api_key.get_secret_value() if settings.api_key else None
    with Client(server, headers={"authorization": f"Bearer {key}"} if key else None) as client:
        result = sync_folder(client, parsed, folder, trusted)
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=2))
    elif not result.changed:
        typer.echo(f"up to date: {result.model}:{result.version} (digest {result.digest})")
    else:
        typer.echo(
            f"updated to {result.model}:{result.version} (digest {result.digest}, "
            f"{result.downloaded_bytes} bytes)"
            + (f"; previous kept: {result.previous}" if result.previous else "")
        )


@app.command("rollback")
def rollback(folder: Path = DirOption) -> None:
    """Swap `current` and `previous`: the bundle before the last update runs again."""
    from shipyard.packaging.edge import rollback as roll_back

    slot = roll_back(folder)
    manifest = slot.manifest or {}
    typer.echo(
        f"rolled back: current is {manifest.get('model')}:{manifest.get('version')} "
        f"(digest {slot.digest})"
    )


@app.command("status")
def status(folder: Path = DirOption, as_json: bool = JsonOption) -> None:
    """What `current` and `previous` hold, and whether their files still match."""
    from shipyard.packaging.edge import status as folder_status

    slots = folder_status(folder)
    if as_json:
        typer.echo(json.dumps([_slot_document(s) for s in slots], indent=2))
        return
    if not slots:
        typer.echo(f"{folder} holds no bundle yet: run `shipyard edge sync` first")
        return
    from shipyard.cli.output import print_table

    print_table(
        None,
        ["slot", "version", "alias", "digest", "registered", "state"],
        [
            (d["slot"], f"{d['model']}:{d['version']}", d["alias"], d["digest"],
             (d["created_at"] or "")[:19].replace("T", " "), d["state"])
            for d in map(_slot_document, slots)
        ],
    )  # fmt: skip


def _slot_document(slot: Any) -> dict[str, Any]:
    manifest = slot.manifest or {}
    return {
        "slot": slot.name,
        "model": manifest.get("model"),
        "version": manifest.get("version"),
        "alias": manifest.get("alias"),
        "digest": slot.digest,
        "created_at": manifest.get("created_at"),
        "state": slot.problem or "ok",
    }


@app.command("run")
def run(
    folder: Path = DirOption,
    input_file: Path | None = typer.Option(
        None, "--input", "-i", help="Rows to score: .csv, .npy or .json."
    ),
    port: int | None = typer.Option(None, help="Serve POST /predict on this port instead."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on."),
    public_key: Path | None = typer.Option(
        None, "--public-key", help="Also check manifest.sig against this trusted key."
    ),
) -> None:
    """Score or serve the current bundle offline, after checking its files against its
    manifest (a tampered bundle is refused)."""
    from shipyard.errors import InvalidInput
    from shipyard.packaging import edge_runner
    from shipyard.packaging.bundle import verify_folder
    from shipyard.packaging.edge import current_folder
    from shipyard.security.signing import load_public_key

    if (input_file is None) == (port is None):
        raise InvalidInput("give --input FILE or --port PORT")
    trusted = load_public_key(public_key) if public_key else None
    bundle_folder = current_folder(folder)
    manifest = verify_folder(bundle_folder, trusted)
    try:
        model = edge_runner.BundleModel(bundle_folder, manifest)
        if port is not None:
            edge_runner.serve(model, host, port)
            return
        assert input_file is not None
        answer = model.predict(edge_runner.read_rows(input_file))
    except edge_runner.BundleError as exc:
        raise InvalidInput(str(exc)) from None
    typer.echo(json.dumps(answer))
