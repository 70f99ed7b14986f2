"""Registering model files: detection, signatures, reference samples, integrity."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shipyard.config import Settings
from shipyard.errors import IntegrityError, InvalidInput, UnsupportedModel
from shipyard.registry.records import Lineage, RegistrationOptions
from shipyard.registry.refs import ModelRef
from shipyard.registry.service import Registry
from tests.fixtures import write_example_csv, write_sklearn_model


def test_register_infers_signature_and_records_lineage(registry: Registry, tmp_path: Path) -> None:
    path = write_sklearn_model(tmp_path)
    version = registry.register(
        path,
        RegistrationOptions(
            name="fraud",
            aliases=["staging"],
            tags={"team": "risk"},
            lineage=Lineage(metrics={"auc": 0.93}, params={"C": "1.0"}, data_uri="file:///d"),
            description="baseline",
            created_by="ana",
        ),
    )
    assert version.version == 1
    assert version.flavor == "sklearn"
    assert version.unsafe_format is True
    assert version.aliases == ["staging"]
    assert version.lineage.source_uri == path.resolve().as_uri()
    assert version.lineage.metrics == {"auc": 0.93}
    assert version.signature is not None
    assert [(s.name, s.datatype, s.shape) for s in version.signature.inputs] == [
        ("input-0", "FP64", [-1, 4])
    ]
    assert {s.name for s in version.signature.outputs} == {"predict", "predict_proba"}
    assert version.flavor_details["estimator"].endswith("LogisticRegression")


def test_example_file_sets_signature_and_reference_sample(
    registry: Registry, tmp_path: Path
) -> None:
    example = write_example_csv(tmp_path, rows=25)
    version = registry.register(
        write_sklearn_model(tmp_path), RegistrationOptions(name="fraud"), example_path=example
    )
    assert version.signature is not None
    assert [s.name for s in version.signature.inputs] == ["f0", "f1", "f2", "f3"]
    assert all(s.datatype == "FP64" for s in version.signature.inputs)
    assert version.reference_sample is not None
    sample = registry.artifacts.read_table(version.reference_sample.digest)
    assert sample.num_rows == 25
    assert sample.column_names == ["f0", "f1", "f2", "f3"]


def test_parquet_example_is_accepted(registry: Registry, tmp_path: Path) -> None:
    table = pa.table({"f0": [1, 2], "f1": [0.5, 1.5], "f2": [1.0, 2.0], "f3": [True, False]})
    pq.write_table(table, tmp_path / "example.parquet")
    version = registry.register(
        write_sklearn_model(tmp_path),
        RegistrationOptions(name="fraud"),
        example_path=tmp_path / "example.parquet",
    )
    assert version.signature is not None
    assert [s.datatype for s in version.signature.inputs] == ["INT64", "FP64", "FP64", "BOOL"]


def test_example_with_wrong_column_count_is_refused(registry: Registry, tmp_path: Path) -> None:
    example = tmp_path / "bad.csv"
    example.write_text("a,b\n1,2\n")
    with pytest.raises(InvalidInput, match="has 2 columns but the model expects 4"):
        registry.register(
            write_sklearn_model(tmp_path), RegistrationOptions(name="x"), example_path=example
        )


def test_identical_bytes_are_stored_once_and_skip_unchanged_reuses(
    registry: Registry, tmp_path: Path
) -> None:
    path = write_sklearn_model(tmp_path)
    first = registry.register(path, RegistrationOptions(name="fraud"))
    second = registry.register(path, RegistrationOptions(name="fraud"))
    assert second.version == 2
    assert second.artifact.digest == first.artifact.digest
    reused = registry.register(path, RegistrationOptions(name="fraud", skip_unchanged=True))
    assert reused.version == 2
    changed = registry.register(
        write_sklearn_model(tmp_path / "other", seed=1),
        RegistrationOptions(name="fraud", skip_unchanged=True),
    )
    assert changed.version == 3


def test_tampered_artifact_is_refused(registry: Registry, tmp_path: Path) -> None:
    version = registry.register(write_sklearn_model(tmp_path), RegistrationOptions(name="fraud"))
    blobs = [
        p
        for p in Path(registry.artifacts.root_uri).rglob("*")
        if p.is_file() and "blobs" in p.parts
    ]
    model_blob = max(blobs, key=lambda p: p.stat().st_size)  # the model, not the manifest
    model_blob.write_bytes(model_blob.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="sha256"):
        registry.artifacts.materialize(version.artifact.digest)
    with pytest.raises(IntegrityError, match="sha256"):
        registry.artifacts.verify(version.artifact.digest)


def test_non_model_file_is_refused_naming_file_and_flavors(
    registry: Registry, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    with pytest.raises(UnsupportedModel) as refused:
        registry.register(notes, RegistrationOptions(name="notes"))
    message = str(refused.value)
    assert message.startswith("notes.txt is not a model") and str(tmp_path) not in message
    for flavor in ("sklearn", "skops", "xgboost", "lightgbm", "onnx", "mlflow", "python"):
        assert flavor in message
    with pytest.raises(Exception, match="not found"):
        registry.models.get_model("notes")


def test_unknown_model_is_not_found(registry: Registry) -> None:
    from shipyard.errors import NotFound

    with pytest.raises(NotFound):
        registry.models.get_version(ModelRef("ghost", version=1))


def test_registration_needs_no_pandas(sqlite_settings: Settings, tmp_path: Path) -> None:
    """pandas is not a core dependency: registering with an example must work without it."""
    model = write_sklearn_model(tmp_path)
    example = write_example_csv(tmp_path)
    script = (
        "import sys; sys.modules['pandas'] = None\n"  # any import of pandas now fails
        "from pathlib import Path\n"
        "from shipyard.config import Settings\n"
        "from shipyard.registry.records import RegistrationOptions\n"
        "from shipyard.registry.service import Registry\n"
        f"registry = Registry.open(Settings(home=Path({str(sqlite_settings.home)!r})))\n"
        f"version = registry.register(Path({str(model)!r}), RegistrationOptions(name='m'),"
        f" Path({str(example)!r}))\n"
        "print(version.signature.inputs[0].datatype)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "FP64"
