"""Registering a model from a file or folder: detect, describe, store, record."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from shipyard.artifacts import ArtifactStore
from shipyard.config import IsolationLimits, Settings
from shipyard.errors import InvalidInput
from shipyard.registry import records
from shipyard.registry.lineage import detect_code_commit, source_uri
from shipyard.registry.refs import check_alias, check_model_name
from shipyard.registry.repository import ModelRepository, NewVersion
from shipyard.runtimes.detect import inspect_model
from shipyard.runtimes.environments import environment_digest, python_minor, read_requirements
from shipyard.signature import Signature, TensorSpec, inputs_from_table

REFERENCE_SAMPLE_ROWS = 10_000
"""Rows kept of an example file as the reference sample for drift checks."""


def read_example(path: Path) -> pa.Table:
    """Read an example file (.csv or .parquet) into a table."""
    if not path.is_file():
        raise InvalidInput(f"example file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pa_csv.read_csv(path)
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        # pyarrow's text may name the file's full path: a server's scratch folder, over HTTP.
        problem = str(exc).replace(str(path), path.name).splitlines()[0][:200]
        raise InvalidInput(f"cannot read example file {path.name}: {problem}") from None
    raise InvalidInput(
        f"example file {path.name} must be .csv or .parquet, not {suffix or 'no suffix'}"
    )


def reference_sample(table: pa.Table, rows: int = REFERENCE_SAMPLE_ROWS) -> pa.Table:
    """A deterministic, order-preserving random sample of at most `rows` rows."""
    if table.num_rows <= rows:
        return table
    chosen = np.sort(np.random.default_rng(0).choice(table.num_rows, size=rows, replace=False))
    return table.take(pa.array(chosen))


def _check_example_fits(model_inputs: list[TensorSpec], example: pa.Table, path: Path) -> None:
    """Refuse an example whose column count cannot be what the model was trained on."""
    if len(model_inputs) == 1 and len(model_inputs[0].shape) == 2:
        expected = model_inputs[0].shape[1]
    elif all(spec.shape == [-1] for spec in model_inputs):
        expected = len(model_inputs)
    else:
        return
    if expected > 0 and expected != example.num_columns:
        raise InvalidInput(
            f"example file {path.name} has {example.num_columns} columns but the model "
            f"expects {expected} features"
        )


def register_model(
    repository: ModelRepository,
    artifacts: ArtifactStore,
    path: Path,
    options: records.RegistrationOptions,
    example_path: Path | None = None,
    limits: IsolationLimits | None = None,
) -> records.ModelVersion:
    """Turn the model at `path` into a new, immutable version of `options.name`.

    The model is inspected in a throw-away process within `limits` (default: the
    `SHIPYARD_ISOLATION_*` settings), since reading it may run the code it brings.
    """
    check_model_name(options.name)
    for alias in options.aliases:
        check_alias(alias, assigning=True)
    inspection = inspect_model(path, limits or Settings().isolation_limits)
    requirements, requirements_source = read_requirements(
        path, options.requirements, inspection.requirements
    )
    environment = records.Environment(
        requirements=requirements,
        source=requirements_source,
        digest=environment_digest(requirements),
        python=python_minor(),
    )

    signature = inspection.signature
    example = inspection.input_example
    if example_path is not None:
        example = read_example(example_path)
        if signature is not None:
            _check_example_fits(signature.inputs, example, example_path)
        outputs = signature.outputs if signature else []
        signature = Signature(inputs=inputs_from_table(example), outputs=outputs)

    stored = artifacts.put_model(path)
    if options.skip_unchanged:
        existing = repository.find_version_by_digest(options.name, stored.digest)
        if existing is not None:
            return existing

    sample = None
    if example is not None and example.num_rows:
        table = reference_sample(example)
        blob = artifacts.put_table(table)
        sample = records.ReferenceSample(digest=blob.sha256, rows=table.num_rows)

    lineage = options.lineage.model_copy()
    if not lineage.source_uri:
        lineage.source_uri = source_uri(path)
    if lineage.code_commit is None:
        lineage.code_commit = detect_code_commit(path)

    return repository.create_version(
        options.name,
        NewVersion(
            flavor=inspection.flavor,
            artifact_digest=stored.digest,
            artifact_size=stored.size,
            flavor_details=inspection.details,
            unsafe_format=inspection.unsafe_format,
            signature=signature,
            reference_sample=sample,
            lineage=lineage,
            description=options.description,
            tags=options.tags,
            created_by=options.created_by,
            aliases=options.aliases,
            environment=environment,
        ),
    )
