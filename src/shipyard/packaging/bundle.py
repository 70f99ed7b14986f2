"""Signed edge bundles: build one from a version's ONNX model, and verify one.

A bundle is a zip of `model.onnx`, `signature.json`, `run.py` (packaging/edge_runner.py:
onnxruntime and numpy only), `manifest.json` (what it is, and the sha256 and size of
every other file) and `manifest.sig` (an Ed25519 signature over the manifest's exact
bytes, with the signing key's id). The bundle's digest is the sha256 of manifest.json.
Builds are deterministic (fixed timestamps and modes, sorted entries, the version's
registration time as `created_at`, Ed25519's deterministic signatures): the same
version, reference and key always give the same bytes, so a device that polls sees the
same digest until something really changed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, Field

from shipyard import __version__
from shipyard.errors import IntegrityError, UnsupportedModel
from shipyard.packaging import edge_runner
from shipyard.packaging.edge_runner import (
    MANIFEST_FILE,
    MODEL_FILE,
    RUNNER_FILE,
    SIGNATURE_FILE,
    SIGNATURE_JSON,
)
from shipyard.registry import records
from shipyard.registry.refs import LATEST, ModelRef
from shipyard.registry.service import Registry
from shipyard.security.signing import Signer, key_id, verify

BUNDLE_FORMAT = 1
ONNX_FLAVOR = "onnx"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
"""Every entry's timestamp: the earliest a zip can hold, so builds are byte-identical."""
_UNIX = 3
_MAX_MANIFEST_BYTES = 1 << 20
_CHUNK = 1 << 20


class BundleInfo(BaseModel):
    """What a device polls: enough to tell whether anything changed, without the zip."""

    model: str
    version: int = Field(description="The version whose ONNX graph the bundle holds.")
    alias: str | None = None
    digest: str = Field(description="sha256 of manifest.json: the bundle's identity.")
    size: int = Field(description="Bytes of the zip.")
    signature: str = Field(description="Ed25519 signature over manifest.json, base64.")
    key_id: str = Field(description="First 16 hex of the sha256 of the signing public key.")
    manifest: dict[str, Any]
    download: str = Field(description="Path of the zip on this server.")


@dataclass(frozen=True)
class CachedBundle:
    path: Path
    info: BundleInfo


def normalized(ref: ModelRef) -> ModelRef:
    """A bare name means its latest version; bundles name that the `latest` alias."""
    return ModelRef(ref.name, alias=LATEST) if ref.is_model else ref


def url_segment(ref: ModelRef) -> str:
    """The `{alias}` segment of the bundle routes for a reference (a number or an alias)."""
    ref = normalized(ref)
    return str(ref.version) if ref.version is not None else str(ref.alias)


# ---- choosing what to bundle -----------------------------------------------------


def onnx_version_for(registry: Registry, ref: ModelRef) -> records.ModelVersion:
    """The version a reference names when it is ONNX; else the newest live ONNX version
    exported from it (lineage.derived_from); else a refusal saying how to make one."""
    version = registry.models.get_version(normalized(ref))
    if version.flavor == ONNX_FLAVOR:
        return version
    source = f"{version.model}:{version.version}"
    derived: list[records.ModelVersion] = []
    token: str | None = None
    while True:
        page = registry.models.list_versions(version.model, limit=1000, page_token=token)
        derived += [
            v
            for v in page.versions
            if v.flavor == ONNX_FLAVOR and v.lineage.derived_from == source and not v.archived
        ]
        token = page.next_page_token
        if token is None:
            break
    if not derived:
        raise UnsupportedModel(
            f"{source} is a {version.flavor} model and no ONNX version derived from it "
            f"exists; a bundle needs ONNX: export it first: shipyard export {source} --to onnx"
        )
    return max(derived, key=lambda v: v.version)


def onnx_file(path: Path, where: str) -> Path:
    """The ONNX graph of a materialized artifact (a file, or a folder holding one)."""
    if path.is_file():
        return path
    graphs = sorted(path.rglob("*.onnx"))
    if len(graphs) != 1:
        raise UnsupportedModel(f"{where}: a bundle needs exactly one .onnx file, found "
                               f"{len(graphs)}")  # fmt: skip
    return graphs[0]


# ---- building --------------------------------------------------------------------


def _entry(name: str) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry.create_system = _UNIX
    entry.external_attr = 0o644 << 16
    return entry


def _sha256_file(path: Path) -> tuple[str, int]:
    return edge_runner.file_sha256(path), path.stat().st_size


def manifest_bytes(
    version: records.ModelVersion, ref: ModelRef, files: dict[str, tuple[str, int]]
) -> bytes:
    ref = normalized(ref)
    manifest = {
        "format": BUNDLE_FORMAT,
        "model": version.model,
        "version": version.version,
        "alias": ref.alias,
        "requested": str(ref),
        "derived_from": version.lineage.derived_from,
        "artifact_digest": version.artifact.digest,
        # The version's registration time, not the build's: a rebuild gives the same bytes.
        "created_at": version.created_at.isoformat(),
        "shipyard_version": __version__,
        "runtime": {"entry": RUNNER_FILE, "requires": ["numpy", "onnxruntime"]},
        "files": {name: {"sha256": sha, "size": size} for name, (sha, size) in files.items()},
    }
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def signature_document(signer: Signer, manifest: bytes) -> bytes:
    document = {
        "algorithm": "ed25519",
        "key_id": signer.key_id,
        "signature": base64.b64encode(signer.sign(manifest)).decode(),
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def write_bundle(
    output: BinaryIO,
    version: records.ModelVersion,
    ref: ModelRef,
    model_path: Path,
    signer: Signer,
) -> BundleInfo:
    """Write the zip for `version` (an ONNX one) into `output`; its info comes back (with
    `download` and `size` left for the caller)."""
    signature = version.signature.model_dump(mode="json") if version.signature else {}
    contents = {
        SIGNATURE_JSON: (json.dumps(signature, indent=2, sort_keys=True) + "\n").encode(),
        RUNNER_FILE: Path(edge_runner.__file__).read_bytes(),
    }
    files = {name: (hashlib.sha256(data).hexdigest(), len(data)) for name, data in
             contents.items()}  # fmt: skip
    files[MODEL_FILE] = _sha256_file(model_path)
    manifest = manifest_bytes(version, ref, dict(sorted(files.items())))
    signed = signature_document(signer, manifest)
    contents |= {MANIFEST_FILE: manifest, SIGNATURE_FILE: signed}
    with zipfile.ZipFile(output, "w") as archive:
        for name in sorted([*contents, MODEL_FILE]):
            with archive.open(_entry(name), "w") as sink:
                if name == MODEL_FILE:
                    with model_path.open("rb") as source:
                        shutil.copyfileobj(source, sink, _CHUNK)
                else:
                    sink.write(contents[name])
    document = json.loads(signed)
    return BundleInfo(
        model=version.model,
        version=version.version,
        alias=normalized(ref).alias,
        digest=hashlib.sha256(manifest).hexdigest(),
        size=0,
        signature=document["signature"],
        key_id=document["key_id"],
        manifest=json.loads(manifest),
        download="",
    )


def download_path(ref: ModelRef) -> str:
    return f"/api/models/{ref.name}/bundles/{url_segment(ref)}/download"


def bundle_for(
    registry: Registry, ref: ModelRef, signing_key: Callable[[], Signer]
) -> CachedBundle:
    """The bundle for a reference, built once per version, reference and key and kept in
    the home's cache (`cache/bundles/`), so polls and repeated downloads cost a lookup.
    The key is asked for once the version is found (a missing model is the first error)."""
    version = onnx_version_for(registry, ref)
    signer = signing_key()
    runner = edge_runner.file_sha256(Path(edge_runner.__file__))
    identity = "\n".join(
        [str(BUNDLE_FORMAT), __version__, runner, version.model, str(version.version),
         version.artifact.digest, str(normalized(ref)), signer.key_id]
    )  # fmt: skip
    key = hashlib.sha256(identity.encode()).hexdigest()
    folder = registry.artifacts.cache_dir / "bundles"
    zip_path, info_path = folder / f"{key}.zip", folder / f"{key}.json"
    if info_path.is_file() and zip_path.is_file():
        return CachedBundle(zip_path, BundleInfo.model_validate_json(info_path.read_bytes()))
    model_path = onnx_file(
        registry.artifacts.materialize(version.artifact.digest), f"{version.model}:"
        f"{version.version}"
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    building = folder / f".{key}.{uuid.uuid4().hex}"
    try:
        with building.open("wb") as output:
            info = write_bundle(output, version, ref, model_path, signer)
        info = info.model_copy(
            update={"size": building.stat().st_size, "download": download_path(ref)}
        )
        os.replace(building, zip_path)  # the zip first: a written info implies its zip
        _write_atomically(info_path, info.model_dump_json().encode())
    finally:
        building.unlink(missing_ok=True)
    return CachedBundle(zip_path, info)


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


# ---- verifying -------------------------------------------------------------------


def _check_name(name: str, where: str) -> None:
    """Entries are flat file names: nothing that could land outside the bundle folder."""
    if (
        not name
        or name in (".", "..")
        or any(mark in name for mark in ("/", "\\", "\x00", ":"))
        or name.startswith(".")
    ):
        raise IntegrityError(f"{where} holds an entry with an unsafe path {name!r}; refusing it")


def verify_signature(trusted: Ed25519PublicKey, manifest: bytes, signed: bytes, where: str) -> None:
    """IntegrityError unless `signed` (manifest.sig) is the trusted key's signature over
    exactly `manifest`."""
    try:
        document = json.loads(signed)
        signature = base64.b64decode(document["signature"], validate=True)
        signer_id = str(document.get("key_id", "?"))
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"{where}: {SIGNATURE_FILE} is not a signature document") from None
    trusted_id = key_id(trusted)
    if signer_id != trusted_id:
        raise IntegrityError(
            f"{where} is signed by key {signer_id}, not by the trusted key {trusted_id}; "
            "refusing it"
        )
    verify(trusted, manifest, signature, where)


def unpack_verified(archive_path: Path, trusted: Ed25519PublicKey, target: Path) -> dict[str, Any]:
    """Check a downloaded zip (its signature against the trusted key, then every file
    against the manifest, no file missing and none extra) while writing it into `target`
    (a new folder); the manifest comes back. On any failure IntegrityError, and what was
    written is the caller's to remove."""
    where = f"bundle {archive_path.name}"
    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise IntegrityError(f"{where} is not a complete zip ({exc}); refusing it") from None
    with archive:
        entries = {}
        for entry in archive.infolist():
            _check_name(entry.filename, where)
            if entry.filename in entries:
                raise IntegrityError(f"{where} holds {entry.filename!r} twice; refusing it")
            entries[entry.filename] = entry
        for required in (MANIFEST_FILE, SIGNATURE_FILE):
            if required not in entries:
                raise IntegrityError(f"{where} has no {required}; refusing it")
            if entries[required].file_size > _MAX_MANIFEST_BYTES:
                raise IntegrityError(f"{where}: {required} is implausibly large; refusing it")
        manifest_data = archive.read(MANIFEST_FILE)
        verify_signature(trusted, manifest_data, archive.read(SIGNATURE_FILE), where)
        manifest = _parse_manifest(manifest_data, where)
        listed: dict[str, Any] = manifest["files"]
        for name in listed:
            _check_name(name, where)
        missing = sorted(set(listed) - set(entries))
        extra = sorted(set(entries) - set(listed) - {MANIFEST_FILE, SIGNATURE_FILE})
        if missing or extra:
            raise IntegrityError(
                f"{where} does not hold what its manifest lists (missing {missing}, "
                f"extra {extra}); refusing it"
            )
        target.mkdir(parents=True)
        for name, recorded in sorted(listed.items()):
            _extract_checked(archive, entries[name], recorded, target / name, where)
        (target / MANIFEST_FILE).write_bytes(manifest_data)
        (target / SIGNATURE_FILE).write_bytes(archive.read(SIGNATURE_FILE))
    return manifest


def _parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
        files = manifest["files"]
        valid = all(
            isinstance(r, dict) and isinstance(r.get("sha256"), str)
            and isinstance(r.get("size"), int) for r in files.values()
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise IntegrityError(f"{where}: {MANIFEST_FILE} does not list files with sha256 and size")
    result: dict[str, Any] = manifest
    return result


def _extract_checked(
    archive: zipfile.ZipFile,
    entry: zipfile.ZipInfo,
    recorded: dict[str, Any],
    target: Path,
    where: str,
) -> None:
    expected_size: int = recorded["size"]
    if entry.file_size != expected_size:
        raise IntegrityError(
            f"{where}: {entry.filename} is {entry.file_size} bytes, its manifest says "
            f"{expected_size}; refusing it"
        )
    digest = hashlib.sha256()
    written = 0
    try:
        with archive.open(entry) as source, target.open("wb") as sink:
            # Never more than the signed size, whatever the zip's headers claim.
            while chunk := source.read(min(_CHUNK, expected_size - written + 1)):
                written += len(chunk)
                if written > expected_size:
                    break
                digest.update(chunk)
                sink.write(chunk)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise IntegrityError(
            f"{where}: {entry.filename} cannot be read ({exc}); refusing it"
        ) from None
    if written != expected_size or digest.hexdigest() != recorded["sha256"]:
        raise IntegrityError(
            f"{where}: {entry.filename} does not match the sha256 its signed manifest "
            "records: tampered with or damaged; refusing it"
        )


def verify_folder(folder: Path, trusted: Ed25519PublicKey | None) -> dict[str, Any]:
    """An unpacked bundle's manifest once its files match it (and, given a trusted key,
    once its manifest.sig verifies); IntegrityError otherwise."""
    try:
        manifest = edge_runner.verify_files(folder)
    except edge_runner.BundleError as exc:
        raise IntegrityError(str(exc)) from None
    if trusted is not None:
        signed = folder / SIGNATURE_FILE
        if not signed.is_file():
            raise IntegrityError(f"bundle {folder} has no {SIGNATURE_FILE}")
        verify_signature(
            trusted, (folder / MANIFEST_FILE).read_bytes(), signed.read_bytes(), f"bundle {folder}"
        )
    return manifest
