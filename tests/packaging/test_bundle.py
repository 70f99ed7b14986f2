"""Building and verifying signed edge bundles, and the bundle's own run.py."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from shipyard.config import Settings
from shipyard.errors import IntegrityError, UnsupportedModel
from shipyard.packaging import bundle, edge_runner
from shipyard.registry import records
from shipyard.registry.refs import ModelRef, parse_ref
from shipyard.registry.service import Registry
from shipyard.security import signing
from tests.fixtures import FEATURES, training_data, write_sklearn_model


def write_onnx_classifier(folder: Path, seed: int = 0) -> Path:
    """A logistic regression converted by skl2onnx (tensor outputs, no ZipMap)."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    features, labels = training_data(seed=seed)
    model = LogisticRegression(C=0.05 if seed else 1.0).fit(features, labels)
    converted = to_onnx(
        model, features[:1].astype(np.float32), options={"zipmap": False}, target_opset=17
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(converted.SerializeToString())
    return path


def write_rows(path: Path, rows: np.ndarray) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(FEATURES)
        writer.writerows(rows.tolist())
    return path


def onnx_answers(model_path: Path, rows: np.ndarray) -> dict[str, list[object]]:
    """What onnxruntime itself answers for the model file: the expected values."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    answers = session.run(outputs, {name: rows.astype(np.float32)})
    return {n: a.tolist() for n, a in zip(outputs, answers, strict=True)}


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    opened = Registry.open(Settings(home=tmp_path / "home"))
    yield opened
    opened.close()


@pytest.fixture
def signer(tmp_path: Path) -> signing.Signer:
    signing.create_key(tmp_path / "keys", "default")
    return signing.signer_from(tmp_path / "keys" / "signing" / "default.key")


@pytest.fixture
def trusted(tmp_path: Path, signer: signing.Signer) -> Ed25519PublicKey:
    return signing.load_public_key(tmp_path / "keys" / "signing" / "default.pub")


def register_onnx(registry: Registry, tmp_path: Path, **lineage: object) -> records.ModelVersion:
    path = write_onnx_classifier(tmp_path / "onnx")
    options = records.RegistrationOptions(
        name="fraud", aliases=["production"], lineage=records.Lineage(**lineage)
    )
    return registry.register(path, options)


def rewrite(source: Path, target: Path, change: dict[str, bytes | None]) -> None:
    """Copy a zip, replacing (bytes) or dropping (None) the named entries; new names added."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for entry in old.infolist():
            if entry.filename in change:
                data = change.pop(entry.filename)
                if data is not None:
                    new.writestr(entry, data)
            else:
                new.writestr(entry, old.read(entry))
        for name, data in change.items():
            if data is not None:
                new.writestr(name, data)


def test_bundle_is_deterministic_and_named_by_its_manifest(
    registry: Registry, tmp_path: Path, signer: signing.Signer
) -> None:
    version = register_onnx(registry, tmp_path)
    ref = parse_ref("fraud@production")
    first = bundle.bundle_for(registry, ref, lambda: signer)
    first_bytes = first.path.read_bytes()
    first.path.unlink()  # drop the cache: the rebuild must give the same bytes
    (first.path.with_suffix(".json")).unlink()
    second = bundle.bundle_for(registry, ref, lambda: signer)
    assert second.path.read_bytes() == first_bytes
    with zipfile.ZipFile(second.path) as archive:
        names = [e.filename for e in archive.infolist()]
        assert names == sorted(names)
        assert {e.date_time for e in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        manifest_bytes = archive.read("manifest.json")
        model_bytes = archive.read("model.onnx")
    assert second.info.digest == hashlib.sha256(manifest_bytes).hexdigest()
    assert second.info.size == len(first_bytes)
    manifest = json.loads(manifest_bytes)
    assert manifest["model"] == "fraud" and manifest["version"] == version.version
    assert manifest["alias"] == "production"
    assert manifest["files"]["model.onnx"] == {
        "sha256": hashlib.sha256((tmp_path / "onnx" / "model.onnx").read_bytes()).hexdigest(),
        "size": len(model_bytes),
    }
    assert set(manifest["files"]) == {"model.onnx", "run.py", "signature.json"}
    assert second.info.key_id == signer.key_id


def test_a_version_that_is_not_onnx_uses_the_onnx_version_derived_from_it(
    registry: Registry, tmp_path: Path, signer: signing.Signer
) -> None:
    original = registry.register(
        write_sklearn_model(tmp_path / "sk"), records.RegistrationOptions(name="fraud")
    )
    with pytest.raises(UnsupportedModel, match="shipyard export fraud:1 --to onnx"):
        bundle.bundle_for(registry, ModelRef("fraud", version=1), lambda: signer)
    exported = register_onnx(registry, tmp_path, derived_from=f"fraud:{original.version}")
    chosen = bundle.onnx_version_for(registry, ModelRef("fraud", version=original.version))
    assert chosen.version == exported.version
    built = bundle.bundle_for(registry, ModelRef("fraud", version=1), lambda: signer)
    assert built.info.manifest["derived_from"] == "fraud:1"
    assert built.info.manifest["requested"] == "fraud:1"


def test_verified_unpack_checks_signature_and_every_file(
    registry: Registry, tmp_path: Path, signer: signing.Signer, trusted: Ed25519PublicKey
) -> None:
    register_onnx(registry, tmp_path)
    built = bundle.bundle_for(registry, parse_ref("fraud@production"), lambda: signer)
    good = bundle.unpack_verified(built.path, trusted, tmp_path / "good")
    assert good["version"] == 1
    assert edge_runner.verify_files(tmp_path / "good")["model"] == "fraud"

    with zipfile.ZipFile(built.path) as archive:
        model = bytearray(archive.read("model.onnx"))
    model[len(model) // 2] ^= 0x01
    cases: dict[str, tuple[dict[str, bytes | None], str]] = {
        "tampered": ({"model.onnx": bytes(model)}, "model.onnx does not match the sha256"),
        "extra": ({"evil.py": b"print(1)"}, r"extra \['evil.py'\]"),
        "missing": ({"run.py": None}, r"missing \['run.py'\]"),
        "traversal": ({"../escape.txt": b"x"}, "unsafe path"),
        "unsigned": ({"manifest.sig": None}, "has no manifest.sig"),
    }
    for case, (change, message) in cases.items():
        changed = tmp_path / f"{case}.zip"
        rewrite(built.path, changed, dict(change))
        with pytest.raises(IntegrityError, match=message):
            bundle.unpack_verified(changed, trusted, tmp_path / case)
    assert not (tmp_path / "escape.txt").exists()


def test_a_bundle_signed_by_another_key_is_refused(
    registry: Registry, tmp_path: Path, signer: signing.Signer
) -> None:
    register_onnx(registry, tmp_path)
    built = bundle.bundle_for(registry, parse_ref("fraud@production"), lambda: signer)
    stranger = signing.create_key(tmp_path / "other", "default")
    untrusted = signing.load_public_key(stranger.public_path)
    with pytest.raises(IntegrityError, match=f"signed by key {signer.key_id}, not by"):
        bundle.unpack_verified(built.path, untrusted, tmp_path / "out")
    # A manifest re-signed by the stranger under the trusted key's id still fails.
    with zipfile.ZipFile(built.path) as archive:
        manifest = archive.read("manifest.json")
    stranger_signer = signing.signer_from(tmp_path / "other" / "signing" / "default.key")
    forged = bundle.signature_document(stranger_signer, manifest).replace(
        stranger_signer.key_id.encode(), signer.key_id.encode()
    )
    rewrite(built.path, tmp_path / "forged.zip", {"manifest.sig": forged})
    trusted = signing.load_public_key(tmp_path / "keys" / "signing" / "default.pub")
    with pytest.raises(IntegrityError, match="does not match the trusted public key"):
        bundle.unpack_verified(tmp_path / "forged.zip", trusted, tmp_path / "out2")


def test_run_py_scores_in_isolation_with_numpy_and_onnxruntime_only(
    registry: Registry, tmp_path: Path, signer: signing.Signer, trusted: Ed25519PublicKey
) -> None:
    register_onnx(registry, tmp_path)
    built = bundle.bundle_for(registry, parse_ref("fraud@production"), lambda: signer)
    folder = tmp_path / "device"
    bundle.unpack_verified(built.path, trusted, folder)
    rows = training_data(rows=7, seed=3)[0]
    data = write_rows(tmp_path / "rows.csv", rows)
    # -I: no user site, no PYTHONPATH, no current folder on the path; -X importtime
    # lists every module the runner imported.
    done = subprocess.run(
        [sys.executable, "-I", "-X", "importtime", "run.py", "--input", str(data)],
        cwd=folder, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["outputs"] == onnx_answers(tmp_path / "onnx" / "model.onnx", rows)
    assert answer["digest"] == built.info.digest
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()[1:]}
    top_level = {name.split(".")[0] for name in imported}
    assert "shipyard" not in top_level
    assert {"numpy", "onnxruntime"} <= top_level
    # Its own imports, read from its source: the standard library and the two packages.
    tree = ast.parse((folder / "run.py").read_text())
    named = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}  # fmt: skip
    named |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module}  # fmt: skip
    assert named - set(sys.stdlib_module_names) == {"numpy", "onnxruntime"}


def test_run_py_refuses_a_tampered_folder(
    registry: Registry, tmp_path: Path, signer: signing.Signer, trusted: Ed25519PublicKey
) -> None:
    register_onnx(registry, tmp_path)
    built = bundle.bundle_for(registry, parse_ref("fraud@production"), lambda: signer)
    folder = tmp_path / "device"
    bundle.unpack_verified(built.path, trusted, folder)
    model = folder / "model.onnx"
    damaged = bytearray(model.read_bytes())
    damaged[-1] ^= 0x01
    model.write_bytes(bytes(damaged))
    data = write_rows(tmp_path / "rows.csv", training_data(rows=2)[0])
    done = subprocess.run(
        [sys.executable, "-I", "run.py", "--input", str(data)],
        cwd=folder, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "model.onnx" in done.stderr and "tampered" in done.stderr
    assert done.stdout == ""


def test_runner_reads_csv_json_and_npy_alike(tmp_path: Path) -> None:
    rows = training_data(rows=3)[0]
    np.save(tmp_path / "rows.npy", rows)
    (tmp_path / "rows.json").write_text(json.dumps({"inputs": rows.tolist()}))
    (tmp_path / "bare.csv").write_text("\n".join(",".join(map(str, r)) for r in rows.tolist()))
    headed = edge_runner.read_rows(write_rows(tmp_path / "rows.csv", rows))
    assert headed.columns == FEATURES
    for name in ("rows.npy", "rows.json", "bare.csv"):
        assert np.array_equal(edge_runner.read_rows(tmp_path / name).values, headed.values)
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    with pytest.raises(edge_runner.BundleError, match=r"ragged\.csv line 2: expected 3 numbers"):
        edge_runner.read_rows(tmp_path / "ragged.csv")
