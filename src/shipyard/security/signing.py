"""Ed25519 signing keys for edge bundles: made, kept and used here only.

A private key is a PEM (PKCS8) file in the home, `signing/NAME.key`, readable by its
owner only; its public half sits beside it as `NAME.pub` (PEM). A key is named in
manifests by its id: the first 16 hex digits of the sha256 of the raw 32-byte public
key, so a device can tell which key signed a bundle without trusting anything the
server says. Devices verify against a public key they were given out of band.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shipyard.config import Settings
from shipyard.errors import Conflict, IntegrityError, InvalidInput, NotFound

SIGNING_FOLDER = "signing"
DEFAULT_KEY = "default"
"""The home's key a server signs with when SHIPYARD_SIGNING_KEY is not set."""
_KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_RAW_PUBLIC_BYTES = 32


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown about a signing key: never the private half."""

    name: str
    key_id: str
    public_path: Path
    created_at: datetime


@dataclass(frozen=True)
class Signer:
    """A private key ready to sign, with the id devices know it by."""

    private_key: Ed25519PrivateKey
    key_id: str

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signatures are deterministic: the same bytes always sign the same."""
        return self.private_key.sign(data)


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signing_folder(home: Path) -> Path:
    return home / SIGNING_FOLDER


def check_key_name(name: str) -> str:
    if not _KEY_NAME.match(name):
        raise InvalidInput(
            f"invalid signing key name {name!r}: use letters, digits, '.', '_' or '-' "
            "(at most 100, starting with a letter or digit)"
        )
    return name


def create_key(home: Path, name: str) -> KeyInfo:
    """Make NAME.key (mode 0600) and NAME.pub in the home; an existing name is a conflict."""
    folder = signing_folder(home)
    private_path = folder / f"{check_key_name(name)}.key"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: never overwrite a key someone may already have handed out.
        descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise Conflict(f"signing key {name!r} already exists ({private_path})") from None
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    public_path = folder / f"{name}.pub"
    public_path.write_bytes(public_pem(private_key.public_key()))
    return _info(name, private_path, private_key.public_key())


def list_keys(home: Path) -> list[KeyInfo]:
    """The home's signing keys, by name."""
    folder = signing_folder(home)
    if not folder.is_dir():
        return []
    return [
        _info(path.stem, path, load_private_key(path).public_key())
        for path in sorted(folder.glob("*.key"))
    ]


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def named_key_path(home: Path, name: str) -> Path:
    path = signing_folder(home) / f"{check_key_name(name)}.key"
    if not path.is_file():
        raise NotFound(
            f"no signing key {name!r} in {signing_folder(home)}; "
            f"create one: shipyard keys signing create {name}"
        )
    return path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"no signing key file {path}") from None
    except OSError as exc:
        raise InvalidInput(f"cannot read signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise InvalidInput(f"{path} is not an unencrypted PEM (PKCS8) private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key file: PEM, the raw 32 bytes, or those bytes in base64 or hex."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read public key {path}: {exc.strerror}") from None
    return parse_public_key(data, str(path))


def parse_public_key(data: bytes, where: str) -> Ed25519PublicKey:
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise InvalidInput(f"{where} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InvalidInput(f"{where} holds a {type(key).__name__}, not an Ed25519 key")
        return key
    raw = data if len(data) == _RAW_PUBLIC_BYTES else _decoded_text(data.strip())
    if raw is None or len(raw) != _RAW_PUBLIC_BYTES:
        raise InvalidInput(
            f"{where} is not an Ed25519 public key (PEM, or 32 raw bytes, hex or base64)"
        )
    return Ed25519PublicKey.from_public_bytes(raw)


def _decoded_text(text: bytes) -> bytes | None:
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        pass
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        return None


def verify(public_key: Ed25519PublicKey, data: bytes, signature: bytes, what: str) -> None:
    """IntegrityError unless `signature` is the key's signature over exactly `data`."""
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise IntegrityError(
            f"{what}: the signature does not match the trusted public key "
            f"(key id {key_id(public_key)}); refusing it"
        ) from None


def signer_from(path: Path) -> Signer:
    private_key = load_private_key(path)
    return Signer(private_key, key_id(private_key.public_key()))


def server_signer(settings: Settings) -> Signer:
    """What a server signs bundles with: SHIPYARD_SIGNING_KEY (a mounted secret, for
    fleets), else the home's key named "default"."""
    if settings.signing_key is not None:
        return signer_from(settings.signing_key)
    default = signing_folder(settings.home) / f"{DEFAULT_KEY}.key"
    if not default.is_file():
        raise Conflict(
            "no signing key for bundles: set SHIPYARD_SIGNING_KEY to an Ed25519 private key "
            f"file, or run `shipyard keys signing create {DEFAULT_KEY}` with SHIPYARD_HOME "
            f"{settings.home}"
        )
    return signer_from(default)


def _info(name: str, private_path: Path, public_key: Ed25519PublicKey) -> KeyInfo:
    created = datetime.fromtimestamp(private_path.stat().st_mtime, UTC)
    return KeyInfo(name, key_id(public_key), private_path.with_suffix(".pub"), created)
