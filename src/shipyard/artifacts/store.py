"""A content-addressed artifact store over fsspec.

Every file is a blob named by its sha256; a model (file or folder) is a
manifest blob listing its files, and the manifest's sha256 is the artifact's
digest. Blobs are written to a temporary key and moved into place, so a crash
never leaves a partial blob under its final name. Every read is verified.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from shipyard.errors import IntegrityError, InvalidInput, NotFound

CHUNK = 1 << 20


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


@dataclass(frozen=True)
class ManifestEntry:
    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    kind: str  # "file" or "dir"
    files: tuple[ManifestEntry, ...]

    def to_bytes(self) -> bytes:
        data = {"kind": self.kind, "files": [vars(entry) for entry in self.files]}
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        parsed = json.loads(data)
        return cls(parsed["kind"], tuple(ManifestEntry(**entry) for entry in parsed["files"]))


@dataclass(frozen=True)
class StoredArtifact:
    digest: str
    size: int
    kind: str
    root_name: str


def _hash_stream(stream: BinaryIO, sink: BinaryIO | None = None) -> Blob:
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if sink is not None:
            sink.write(chunk)
    return Blob(digest.hexdigest(), size)


def hash_file(path: Path) -> Blob:
    """A file's sha256 and size, as the store names its blobs."""
    with path.open("rb") as stream:
        return _hash_stream(stream)


class ArtifactStore:
    """Model artifacts and data samples, stored once by content and verified on read."""

    def __init__(self, root_uri: str, cache_dir: Path) -> None:
        self.root_uri = root_uri
        self.cache_dir = cache_dir
        self._fs, root = fsspec.core.url_to_fs(root_uri)
        self._root = root.rstrip("/")
        self._fs.makedirs(self._root, exist_ok=True)

    # ---- blobs ------------------------------------------------------------

    def _blob_key(self, sha256: str) -> str:
        return f"{self._root}/blobs/sha256/{sha256[:2]}/{sha256}"

    def _upload(self, sha256: str, write: Any) -> None:
        final = self._blob_key(sha256)
        if self._fs.exists(final):
            return  # identical bytes are stored once
        temporary = f"{self._root}/tmp/{uuid.uuid4().hex}"
        self._fs.makedirs(f"{self._root}/tmp", exist_ok=True)
        self._fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        try:
            write(temporary)
            self._fs.mv(temporary, final)
        finally:
            if self._fs.exists(temporary):
                self._fs.rm(temporary)

    def put_file(self, path: Path) -> Blob:
        blob = hash_file(path)
        self._upload(blob.sha256, lambda key: self._fs.put_file(str(path), key))
        return blob

    def put_bytes(self, data: bytes) -> Blob:
        blob = Blob(hashlib.sha256(data).hexdigest(), len(data))
        self._upload(blob.sha256, lambda key: self._fs.pipe_file(key, data))
        return blob

    def read_bytes(self, sha256: str) -> bytes:
        key = self._blob_key(sha256)
        try:
            data: bytes = self._fs.cat_file(key)
        except FileNotFoundError:
            raise NotFound(f"artifact blob sha256:{sha256} not found in the store") from None
        found = hashlib.sha256(data).hexdigest()
        if found != sha256:
            raise IntegrityError(
                f"artifact blob sha256:{sha256} is corrupted or tampered with "
                f"(its bytes hash to sha256:{found}); refusing to use it"
            )
        return data

    def _download_verified(self, entry: ManifestEntry, target: Path) -> None:
        key = self._blob_key(entry.sha256)
        try:
            with self._fs.open(key, "rb") as source, target.open("wb") as sink:
                found = _hash_stream(source, sink)
        except FileNotFoundError:
            raise NotFound(f"artifact blob sha256:{entry.sha256} not found in the store") from None
        if found.sha256 != entry.sha256:
            raise IntegrityError(
                f"artifact file {entry.path!r} (sha256:{entry.sha256}) is corrupted or "
                f"tampered with: its bytes hash to sha256:{found.sha256}; refusing to use it"
            )

    # ---- models -----------------------------------------------------------

    def put_model(self, path: Path) -> StoredArtifact:
        """Store a model file or folder; its digest is the sha256 of its manifest."""
        if path.is_file():
            blob = self.put_file(path)
            entries = [ManifestEntry(path.name, blob.sha256, blob.size)]
            kind = "file"
        elif path.is_dir():
            entries = []
            for file in sorted(path.rglob("*")):
                if file.is_symlink():
                    inside = file.relative_to(path).as_posix()
                    raise InvalidInput(f"model folder {path.name} contains a symlink: {inside}")
                if file.is_file():
                    blob = self.put_file(file)
                    relative = PurePosixPath(*file.relative_to(path).parts).as_posix()
                    entries.append(ManifestEntry(relative, blob.sha256, blob.size))
            if not entries:
                raise InvalidInput(f"model folder {path.name} is empty")
            kind = "dir"
        else:
            raise InvalidInput(f"no such file or folder: {path}")
        manifest = self.put_bytes(Manifest(kind, tuple(entries)).to_bytes())
        return StoredArtifact(manifest.sha256, sum(e.size for e in entries), kind, path.name)

    def manifest(self, digest: str) -> Manifest:
        return Manifest.from_bytes(self.read_bytes(digest))

    def verify(self, digest: str) -> None:
        """Check every blob of an artifact in the store against its hash."""
        for entry in self.manifest(digest).files:
            key = self._blob_key(entry.sha256)
            with self._fs.open(key, "rb") as source:
                found = _hash_stream(source)
            if found.sha256 != entry.sha256:
                raise IntegrityError(
                    f"artifact file {entry.path!r} (sha256:{entry.sha256}) is corrupted or "
                    f"tampered with: its bytes hash to sha256:{found.sha256}"
                )

    def materialize(self, digest: str) -> Path:
        """A local, verified copy of the model: the file, or the folder.

        Verified on every call: cached files are re-hashed, a damaged cache is
        rebuilt from the store, and a damaged store raises IntegrityError.
        """
        manifest = self.manifest(digest)
        folder = self.cache_dir / digest
        if folder.is_dir() and self._cache_intact(folder, manifest):
            return self._model_path(folder, manifest)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        building = self.cache_dir / f".tmp-{digest}-{uuid.uuid4().hex}"
        try:
            for entry in manifest.files:
                target = building / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download_verified(entry, target)
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.rename(building, folder)
            except OSError:
                # A concurrent caller finished first; its copy is as good as ours.
                if not self._cache_intact(folder, manifest):
                    raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return self._model_path(folder, manifest)

    @staticmethod
    def _cache_intact(folder: Path, manifest: Manifest) -> bool:
        for entry in manifest.files:
            cached = folder / entry.path
            if not cached.is_file() or hash_file(cached).sha256 != entry.sha256:
                return False
        return True

    @staticmethod
    def _model_path(folder: Path, manifest: Manifest) -> Path:
        return folder / manifest.files[0].path if manifest.kind == "file" else folder

    # ---- tables -----------------------------------------------------------

    def put_table(self, table: pa.Table) -> Blob:
        """Store a data sample as Parquet (written deterministically)."""
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd", write_statistics=False)
        return self.put_bytes(buffer.getvalue())

    def read_table(self, sha256: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.read_bytes(sha256)))
