"""The content-addressed artifact store, on local disk and on fsspec's memory filesystem."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pyarrow as pa
import pytest

from shipyard.artifacts import ArtifactStore
from shipyard.errors import IntegrityError, InvalidInput, NotFound


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "local":
        yield ArtifactStore(str(tmp_path / "store"), tmp_path / "cache")
        return
    root = f"memory://shipyard-test-{uuid.uuid4().hex}"
    yield ArtifactStore(root, tmp_path / "cache")
    fsspec.filesystem("memory").rm(root.removeprefix("memory://"), recursive=True)


def _blob_paths(store: ArtifactStore) -> list[str]:
    fs, root = fsspec.core.url_to_fs(store.root_uri)
    return [p for p in fs.find(root) if "/blobs/" in p]


def _tamper(store: ArtifactStore, sha256: str) -> None:
    fs, root = fsspec.core.url_to_fs(store.root_uri)
    key = f"{root.rstrip('/')}/blobs/sha256/{sha256[:2]}/{sha256}"
    data = fs.cat_file(key)
    fs.pipe_file(key, data[:-1] + bytes([data[-1] ^ 0xFF]))


def test_identical_bytes_are_stored_once(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"weights" * 1000)
    (tmp_path / "b.bin").write_bytes(b"weights" * 1000)
    first = store.put_model(tmp_path / "a.bin")
    blobs_after_first = _blob_paths(store)
    second = store.put_file(tmp_path / "b.bin")
    assert second.sha256 == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert len(_blob_paths(store)) == len(blobs_after_first) == 2  # file + manifest
    assert store.put_model(tmp_path / "a.bin") == first


def test_file_round_trip_is_verified_and_exact(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "model.onnx"
    source.write_bytes(bytes(range(256)) * 5000)
    stored = store.put_model(source)
    assert stored.kind == "file"
    assert stored.size == source.stat().st_size
    local = store.materialize(stored.digest)
    assert local.name == "model.onnx"
    assert local.read_bytes() == source.read_bytes()
    store.verify(stored.digest)


def test_folder_round_trip_keeps_nested_files(store: ArtifactStore, tmp_path: Path) -> None:
    folder = tmp_path / "mlflow-model"
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "sub" / "weights.bin").write_bytes(b"\x00\x01" * 100)
    (folder / "sub" / "deeper" / "vocab.txt").write_text("a\nb\n")
    stored = store.put_model(folder)
    assert stored.kind == "dir"
    local = store.materialize(stored.digest)
    copied = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert copied == ["MLmodel", "sub/deeper/vocab.txt", "sub/weights.bin"]
    assert (local / "sub" / "weights.bin").read_bytes() == b"\x00\x01" * 100
    assert store.manifest(stored.digest).kind == "dir"


def test_same_folder_content_has_same_digest(store: ArtifactStore, tmp_path: Path) -> None:
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.py").write_text("class M: ...\n")
    assert store.put_model(tmp_path / "one").digest == store.put_model(tmp_path / "two").digest


def test_tampered_blob_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "m.joblib").write_bytes(b"pretend model bytes")
    stored = store.put_model(tmp_path / "m.joblib")
    file_sha = store.manifest(stored.digest).files[0].sha256
    _tamper(store, file_sha)
    with pytest.raises(IntegrityError, match=f"sha256:{file_sha}.*tampered"):
        store.materialize(stored.digest)
    with pytest.raises(IntegrityError):
        store.read_bytes(file_sha)
    with pytest.raises(IntegrityError):
        store.verify(stored.digest)
    assert not (store.cache_dir / stored.digest).exists()


def test_tampered_cache_is_rebuilt_from_the_store(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "m.joblib").write_bytes(b"the real bytes")
    stored = store.put_model(tmp_path / "m.joblib")
    local = store.materialize(stored.digest)
    local.write_bytes(b"swapped bytes!")
    again = store.materialize(stored.digest)
    assert again.read_bytes() == b"the real bytes"


def test_unknown_digest_is_not_found(store: ArtifactStore) -> None:
    with pytest.raises(NotFound):
        store.materialize("0" * 64)


def test_interrupted_upload_leaves_no_blob(store: ArtifactStore, tmp_path: Path) -> None:
    class Interrupted(Exception):
        pass

    def crash_midway(key: str) -> None:
        fs, _ = fsspec.core.url_to_fs(store.root_uri)
        fs.pipe_file(key, b"half a fi")  # a partial write under the temporary key…
        raise Interrupted  # …then the process dies before the move

    with pytest.raises(Interrupted):
        store._upload("ab" * 32, crash_midway)
    assert _blob_paths(store) == []
    with pytest.raises(NotFound):
        store.read_bytes("ab" * 32)


def test_symlinks_in_folders_are_refused(store: ArtifactStore, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "real.txt").write_text("x")
    (folder / "link.txt").symlink_to(folder / "real.txt")
    with pytest.raises(InvalidInput, match="symlink"):
        store.put_model(folder)


def test_tables_round_trip_as_parquet(store: ArtifactStore) -> None:
    table = pa.table({"age": [31, 45], "income": [1.5, 2.5], "city": ["Oslo", "Lima"]})
    blob = store.put_table(table)
    assert store.put_table(table) == blob  # deterministic bytes: stored once
    assert store.read_table(blob.sha256).equals(table)
