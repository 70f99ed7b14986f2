"""Ed25519 signing keys for edge bundles: files, ids, signatures, what a server signs with."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from shipyard.config import Settings
from shipyard.errors import Conflict, IntegrityError, InvalidInput, NotFound
from shipyard.security import signing
from tests.server import shipyard_command


def _raw(path: Path) -> bytes:
    """The raw 32 public bytes of a PEM file, read with cryptography alone."""
    key = serialization.load_pem_public_key(path.read_bytes())
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def test_create_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    info = signing.create_key(tmp_path, "fleet")
    private = tmp_path / "signing" / "fleet.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert info.public_path == tmp_path / "signing" / "fleet.pub"
    assert info.key_id == hashlib.sha256(_raw(info.public_path)).hexdigest()[:16]
    assert [k.name for k in signing.list_keys(tmp_path)] == ["fleet"]
    with pytest.raises(Conflict, match="already exists"):
        signing.create_key(tmp_path, "fleet")
    with pytest.raises(InvalidInput, match="invalid signing key name"):
        signing.create_key(tmp_path, "../escape")


def test_signature_verifies_only_with_the_signing_key(tmp_path: Path) -> None:
    signing.create_key(tmp_path, "a")
    signing.create_key(tmp_path, "b")
    signer = signing.signer_from(signing.named_key_path(tmp_path, "a"))
    trusted = signing.load_public_key(tmp_path / "signing" / "a.pub")
    other = signing.load_public_key(tmp_path / "signing" / "b.pub")
    signature = signer.sign(b"manifest bytes")
    assert signer.sign(b"manifest bytes") == signature  # Ed25519 is deterministic
    signing.verify(trusted, b"manifest bytes", signature, "bundle")
    with pytest.raises(IntegrityError, match="does not match the trusted public key"):
        signing.verify(trusted, b"manifest bytes!", signature, "bundle")
    with pytest.raises(IntegrityError):
        signing.verify(other, b"manifest bytes", signature, "bundle")


@pytest.mark.parametrize("form", ["pem", "raw", "hex", "base64"])
def test_public_keys_load_in_every_form(tmp_path: Path, form: str) -> None:
    info = signing.create_key(tmp_path, "k")
    raw = _raw(info.public_path)
    given = {
        "pem": info.public_path.read_bytes(),
        "raw": raw,
        "hex": raw.hex().encode() + b"\n",
        "base64": base64.b64encode(raw) + b"\n",
    }[form]
    path = tmp_path / "device.pub"
    path.write_bytes(given)
    assert signing.key_id(signing.load_public_key(path)) == info.key_id


def test_a_file_that_is_no_public_key_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pub"
    path.write_text("not a key")
    with pytest.raises(InvalidInput, match=r"wrong\.pub is not an Ed25519 public key"):
        signing.load_public_key(path)
    with pytest.raises(InvalidInput, match="not an unencrypted PEM"):
        signing.load_private_key(path)
    with pytest.raises(NotFound, match="keys signing create nokey"):
        signing.named_key_path(tmp_path, "nokey")


def test_a_server_signs_with_the_configured_file_else_the_default_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(Conflict, match="no signing key for bundles"):
        signing.server_signer(Settings(home=home))
    default = signing.create_key(home, "default")
    assert signing.server_signer(Settings(home=home)).key_id == default.key_id
    mounted = signing.create_key(tmp_path / "secret", "fleet")
    secret_file = tmp_path / "secret" / "signing" / "fleet.key"
    chosen = signing.server_signer(Settings(home=home, signing_key=secret_file))
    assert chosen.key_id == mounted.key_id


def test_cli_creates_lists_and_exports_public_keys(tmp_path: Path) -> None:
    env = {**os.environ, "SHIPYARD_HOME": str(tmp_path / "home"), "COLUMNS": "200"}
    run = [*shipyard_command(), "keys", "signing"]
    created = subprocess.run([*run, "create", "edge"], env=env, capture_output=True, text=True)
    assert created.returncode == 0, created.stderr
    key_id = signing.list_keys(tmp_path / "home")[0].key_id
    assert f"key id {key_id}" in created.stdout
    exported = subprocess.run(
        [*run, "export-public", "edge"], env=env, capture_output=True, text=True
    )
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == (tmp_path / "home" / "signing" / "edge.pub").read_text()
    again = subprocess.run([*run, "create", "edge"], env=env, capture_output=True, text=True)
    assert again.returncode == 1
    assert "already exists" in again.stderr
