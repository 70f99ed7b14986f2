"""A device's bundle folder: sync it from a server, roll it back, say what it holds.

    D/bundles/<digest>/   unpacked, verified bundles
    D/current  -> bundles/<digest>    what `shipyard edge run` serves
    D/previous -> bundles/<digest>    what `shipyard edge rollback` returns to

An update downloads into a temporary file in D, verifies it against the trusted public
key (never one the server sends) and every file against the signed manifest, unpacks it
into a staging folder, renames that into place, then swaps `current` with os.replace of
a new symlink: a reader sees the old bundle or the new one, never a mix. Any failure
leaves `current` as it was and removes what was written. One update or rollback at a
time per folder (an flock on D/.lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shipyard.errors import Conflict, IntegrityError, InvalidInput, ShipyardError
from shipyard.packaging import edge_runner
from shipyard.packaging.bundle import BundleInfo, normalized, unpack_verified, verify_folder
from shipyard.registry.refs import ModelRef

CURRENT = "current"
PREVIOUS = "previous"
BUNDLES = "bundles"
_LOCK = ".lock"


class BundleSource(Protocol):
    """Where bundles come from: shipyard.Client over HTTP, or a stand-in in tests."""

    def bundle_info(self, name: str, segment: str) -> dict[str, Any]: ...

    def download_bundle(self, name: str, segment: str, sink: BinaryIO) -> int: ...


@dataclass(frozen=True)
class SyncResult:
    changed: bool
    digest: str
    model: str
    version: int
    downloaded_bytes: int = 0
    previous: str | None = None
    """The digest now kept as `previous` (None: nothing was swapped out)."""


@dataclass(frozen=True)
class Slot:
    """What `current` or `previous` points at."""

    name: str
    digest: str
    manifest: dict[str, Any] | None
    problem: str | None = None
    """Why it would be refused (tampered, missing files); None when intact."""


def _link_target(root: Path, name: str) -> str | None:
    link = root / name
    return os.readlink(link) if link.is_symlink() else None


def current_digest(root: Path) -> str | None:
    """The digest of the bundle `current` holds, from its manifest's actual bytes."""
    target = _link_target(root, CURRENT)
    if target is None or not (root / target / edge_runner.MANIFEST_FILE).is_file():
        return None
    return edge_runner.bundle_digest(root / target)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with (root / _LOCK).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"another sync or rollback is changing {root}; try again") from None
        yield


def _point(root: Path, name: str, target: str) -> None:
    """Make root/name a symlink to `target` in one step (rename over the old link)."""
    temporary = root / f".{name}.{uuid.uuid4().hex}"
    os.symlink(target, temporary)
    try:
        os.replace(temporary, root / name)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def _switch_to(root: Path, target: str) -> str | None:
    """Point `current` at `target`, keeping what it held as `previous`."""
    old = _link_target(root, CURRENT)
    if old is not None and old != target:
        _point(root, PREVIOUS, old)  # first: a stop between the two leaves both usable
    _point(root, CURRENT, target)
    return old if old != target else None


def sync(source: BundleSource, ref: ModelRef, root: Path, trusted: Ed25519PublicKey) -> SyncResult:
    """Bring root/current to the bundle the server has for `ref`; nothing is downloaded
    when the digest it announces is the one `current` already holds."""
    ref = normalized(ref)
    segment = str(ref.version) if ref.version is not None else str(ref.alias)
    with _locked(root):
        try:
            info = BundleInfo.model_validate(source.bundle_info(ref.name, segment))
        except ValueError as exc:
            raise InvalidInput(f"the server's bundle description is not valid: {exc}") from None
        if current_digest(root) == info.digest and _intact(current_folder(root)):
            return SyncResult(False, info.digest, info.model, info.version)
        (root / BUNDLES).mkdir(exist_ok=True)
        token = uuid.uuid4().hex
        download = root / f".download-{token}.zip"
        staging = root / BUNDLES / f".staging-{token}"
        try:
            with download.open("wb") as sink:
                size = source.download_bundle(ref.name, segment, sink)
            manifest = unpack_verified(download, trusted, staging)
            if manifest.get("requested") != str(ref):
                raise IntegrityError(
                    f"the server sent a bundle for {manifest.get('requested')!r}, not {ref}; "
                    "refusing it"
                )
            digest = edge_runner.bundle_digest(staging)
            name = digest
            if (root / BUNDLES / name).exists():
                # Unpacked before and damaged since (an intact one is never fetched again):
                # a new folder, so `current` never points at a half-replaced one.
                name = f"{digest}-{token[:8]}"
            os.rename(staging, root / BUNDLES / name)
            previous = _switch_to(root, f"{BUNDLES}/{name}")
        finally:
            download.unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        _prune(root)
    previous_digest = _digest_of(root / previous) if previous else None
    return SyncResult(True, digest, manifest["model"], manifest["version"], size, previous_digest)


def _digest_of(folder: Path) -> str:
    try:
        return edge_runner.bundle_digest(folder)
    except OSError:
        return folder.name


def _intact(folder: Path) -> bool:
    """Whether a bundle's files still match its manifest: a damaged current one is
    downloaded again even though its digest is the server's."""
    try:
        verify_folder(folder, None)
    except ShipyardError:
        return False
    return True


def rollback(root: Path) -> Slot:
    """Swap `current` and `previous`; the bundle now current comes back. The bundle
    rolled back to must still be intact."""
    with _locked(root):
        current, previous = _link_target(root, CURRENT), _link_target(root, PREVIOUS)
        if current is None or previous is None:
            raise Conflict(f"{root} has no previous bundle to roll back to")
        verify_folder(root / previous, None)
        _point(root, CURRENT, previous)
        _point(root, PREVIOUS, current)
    return _slot(root, CURRENT)


def status(root: Path) -> list[Slot]:
    """`current` and `previous`, each with whether its files still match its manifest."""
    return [_slot(root, name) for name in (CURRENT, PREVIOUS) if _link_target(root, name)]


def _slot(root: Path, name: str) -> Slot:
    target = _link_target(root, name) or ""
    folder = root / target
    try:
        manifest = verify_folder(folder, None)
        return Slot(name, edge_runner.bundle_digest(folder), manifest)
    except ShipyardError as exc:
        try:  # what it claims to be, for the report, when the manifest itself is readable
            claimed: dict[str, Any] | None = edge_runner.read_manifest(folder)
        except edge_runner.BundleError:
            claimed = None
        return Slot(name, Path(target).name, claimed, exc.message)


def current_folder(root: Path) -> Path:
    """The folder `current` points at; Conflict when there is none yet."""
    target = _link_target(root, CURRENT)
    if target is None:
        raise Conflict(f"{root} holds no bundle yet: run `shipyard edge sync` first")
    return root / target


def _prune(root: Path) -> None:
    """Keep only what `current` and `previous` point at (and leftovers of nothing)."""
    kept = {Path(t).name for t in (_link_target(root, CURRENT), _link_target(root, PREVIOUS)) if t}
    for folder in (root / BUNDLES).iterdir():
        if folder.name not in kept:
            shutil.rmtree(folder, ignore_errors=True)
    for leftover in root.glob(".download-*.zip"):
        leftover.unlink(missing_ok=True)
