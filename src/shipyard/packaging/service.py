"""Exporting a registered version to ONNX: convert, gate, then register the derived version.

Two throw-away processes do the work (`run_isolated`; model code never runs in the
server): the first loads the original, answers and times it on the gate's rows and
converts it (packaging/export.py); the second loads the converted graph through the
onnx runtime, as serving will, and answers and times it on the same rows. The answers
meet in the equivalence gate here (packaging/equivalence.py); only a passing export is
registered, as a new version of the same model whose lineage names its origin.
"""

from __future__ import annotations

import base64
import binascii
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, Field

from shipyard.config import IsolationLimits
from shipyard.errors import InvalidInput, UnsupportedModel
from shipyard.packaging.equivalence import compare, thresholds_for
from shipyard.packaging.export import CONVERTERS, MIN_OPSET
from shipyard.registry import records
from shipyard.registry.refs import ModelRef
from shipyard.registry.repository import NewVersion
from shipyard.runtimes.base import Tensors, VersionSpec
from shipyard.runtimes.isolated import _decode_array, _encode_array, run_isolated
from shipyard.signature import NUMPY_DTYPES, Signature, TensorSpec, matrix_input

if TYPE_CHECKING:
    from shipyard.registry.service import Registry

MAX_GATE_ROWS = 10_000
"""Rows of --data the gate scores at most (a reference sample holds no more)."""


class ExportOptions(BaseModel):
    """How to export a version (`shipyard export`, POST .../export)."""

    to: Literal["onnx"] = "onnx"
    quantize: Literal["dynamic-int8", "fp16"] | None = Field(
        default=None, description="Quantise after converting: int8 weights, or float16 inside."
    )
    opset: int | None = Field(
        default=None, ge=MIN_OPSET, description="ONNX operator set (default 17)."
    )
    min_agreement: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Least share of rows answered alike (default 1.0; 0.99 when quantised).",
    )
    max_abs_diff: float | None = Field(
        default=None,
        ge=0.0,
        description="Largest absolute difference of a score (default 1e-5; none when quantised).",
    )


class ExportResult(BaseModel):
    """The registered version and what the export measured."""

    version: records.ModelVersion
    derived_from: str
    converter: str
    versions: dict[str, str] = Field(description="Library versions that made the graph.")
    opset: dict[str, int]
    quantize: str | None = None
    gate: dict[str, Any] = Field(description="Rows, agreement, max abs diff and thresholds.")
    size: dict[str, int] = Field(description="Artifact bytes before and after.")
    rows_per_second: dict[str, dict[str, float]] = Field(
        description="before/after: batch_1 and batch_32, one thread in a worker process."
    )


def export_version(
    registry: Registry,
    ref: ModelRef,
    options: ExportOptions,
    limits: IsolationLimits,
    data: Path | None = None,
    created_by: str = "",
) -> ExportResult:
    """Export the version `ref` names; UnsupportedModel naming the failing rows when the
    exported model does not answer as the original does (nothing is registered then)."""
    record = registry.models.get_version(ref)
    key = f"{record.model}:{record.version}"
    if record.flavor not in CONVERTERS:
        raise UnsupportedModel(
            f"{key} is a {record.flavor} model; export to ONNX takes "
            f"{', '.join(sorted(CONVERTERS))} models"
        )
    thresholds = thresholds_for(options.quantize, options.min_agreement, options.max_abs_diff)
    inputs = gate_inputs(_gate_table(registry, record, data, key), record.signature, key)
    spec = VersionSpec.of(record, registry.artifacts.materialize(record.artifact.digest))
    from shipyard.config import Settings
    from shipyard.packaging.export import export_here
    from shipyard.runtimes.environments import EnvironmentBuilder

    # The original loads as it serves: on its own environment when it has one (whose
    # fallback to the server's packages brings the converters).
    python = EnvironmentBuilder.from_settings(Settings()).python_for(spec.environment)
    answer = run_isolated(
        export_here, spec, inputs, options.model_dump(),
        limits=limits, task=f"exporting {key} to ONNX", python=python,
    )  # fmt: skip
    try:
        graph = base64.b64decode(answer["onnx"], validate=True)
        original = {str(n): _decode_array(text) for n, text in answer["original"].items()}
        before = {str(k): float(v) for k, v in answer["speed"].items()}
        converter = str(answer["converter"])
        versions = {str(k): str(v) for k, v in answer["versions"].items()}
        opset = {str(k): int(v) for k, v in answer["opset"].items()}
    except (KeyError, TypeError, ValueError, AttributeError, binascii.Error, OSError) as exc:
        raise UnsupportedModel(f"exporting {key} gave an unreadable answer: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="shipyard-export-") as scratch:
        path = Path(scratch) / f"{record.model}-{record.version}.onnx"
        path.write_bytes(graph)
        exported, after = _score_exported(record, path, inputs, list(original), limits, key)
        gate = compare(original, exported, inputs, thresholds)
        if not gate.passed:
            raise UnsupportedModel(gate.refusal(f"the ONNX export of {key}"))
        derivation = {
            "converter": converter,
            "versions": versions,
            "opset": opset,
            "quantize": options.quantize,
            "gate": gate.document(),
            "gate_data": "--data" if data is not None else "reference sample",
        }
        version = _register(registry, record, path, derivation, created_by, limits)
    return ExportResult(
        version=version,
        derived_from=key,
        converter=converter,
        versions=versions,
        opset=opset,
        quantize=options.quantize,
        gate=gate.document(),
        size={"before": record.artifact.size, "after": version.artifact.size},
        rows_per_second={"before": before, "after": after},
    )


def gate_inputs(table: pa.Table, signature: Signature | None, key: str) -> Tensors:
    """The model's inputs from a table's columns: one per input the signature names, or
    all columns stacked into its one matrix input."""
    table = table.slice(0, MAX_GATE_ROWS)
    stacked = matrix_input(signature)
    if stacked is None and signature is not None:
        missing = [s.name for s in signature.inputs if s.name not in table.column_names]
        if missing:
            raise InvalidInput(
                f"the gate data has no column {missing[0]!r}, which {key} takes "
                f"(columns: {', '.join(table.column_names)})"
            )
        return {s.name: _column(table, s.name, s) for s in signature.inputs}
    spec = signature.inputs[0] if signature is not None and signature.inputs else None
    width = spec.shape[1] if spec is not None else -1
    if width not in (-1, table.num_columns):
        raise InvalidInput(
            f"{key} takes {width} features, the gate data has {table.num_columns} columns: "
            f"{', '.join(table.column_names)}"
        )
    columns = [_column(table, name, spec) for name in table.column_names]
    return {stacked or "input-0": np.column_stack(columns)}


def _column(table: pa.Table, name: str, spec: TensorSpec | None) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise InvalidInput(f"the gate data's column {name!r} has {column.null_count} empty rows")
    dtype = NUMPY_DTYPES[spec.datatype] if spec is not None else np.dtype(np.float64)
    try:
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=dtype)
    except (TypeError, ValueError):
        raise InvalidInput(
            f"the gate data's column {name!r} does not convert to {dtype.name}"
        ) from None


def _gate_table(
    registry: Registry, record: records.ModelVersion, data: Path | None, key: str
) -> pa.Table:
    from shipyard.registry.importing import read_example

    if data is not None:
        table = read_example(data)
    elif record.reference_sample is not None:
        table = registry.artifacts.read_table(record.reference_sample.digest)
    else:
        raise InvalidInput(
            f"{key} has no reference sample to check the export on: give rows with --data "
            "(a .csv or .parquet of its inputs)"
        )
    if table.num_rows == 0:
        raise InvalidInput("the gate data has no rows")
    return table


def _score_exported(
    record: records.ModelVersion,
    path: Path,
    inputs: Tensors,
    outputs: list[str],
    limits: IsolationLimits,
    key: str,
) -> tuple[Tensors, dict[str, float]]:
    spec = VersionSpec(model=record.model, version=record.version, flavor="onnx", path=str(path))
    answer = run_isolated(
        _score_here, spec, inputs, outputs, limits=limits, task=f"scoring the ONNX export of {key}"
    )
    try:
        answers = {str(n): _decode_array(text) for n, text in answer["outputs"].items()}
        return answers, {str(k): float(v) for k, v in answer["speed"].items()}
    except (KeyError, TypeError, ValueError, AttributeError, OSError) as exc:
        raise UnsupportedModel(
            f"scoring the ONNX export of {key} gave an unreadable answer: {exc}"
        ) from None


def _score_here(spec: VersionSpec, inputs: Tensors, outputs: list[str]) -> dict[str, Any]:
    """In the child: load the graph as serving does, answer and time it."""
    from shipyard.packaging.speed import rows_per_second
    from shipyard.runtimes import load

    runtime = load(spec)
    answers = runtime.predict(inputs, outputs)
    return {
        "outputs": {n: _encode_array(np.asarray(a)) for n, a in answers.items()},
        "speed": rows_per_second(runtime, inputs, outputs),
    }


def _register(
    registry: Registry,
    source: records.ModelVersion,
    path: Path,
    derivation: dict[str, Any],
    created_by: str,
    limits: IsolationLimits,
) -> records.ModelVersion:
    """The derived version: the original's inputs, reference sample and training lineage."""
    from shipyard.runtimes.detect import inspect_model
    from shipyard.runtimes.environments import (
        environment_digest,
        python_minor,
        read_requirements,
    )

    key = f"{source.model}:{source.version}"
    inspection = inspect_model(path, limits)
    # As registration records it: the onnx flavor's own library, detected here.
    requirements, requirements_source = read_requirements(path, None, inspection.requirements)
    environment = records.Environment(
        requirements=requirements,
        source=requirements_source,
        digest=environment_digest(requirements),
        python=python_minor(),
    )
    stored = registry.artifacts.put_model(path)
    lineage = source.lineage.model_copy(
        update={"source_uri": f"shipyard:{key}", "derived_from": key, "derivation": derivation}
    )
    return registry.models.create_version(
        source.model,
        NewVersion(
            flavor=inspection.flavor,
            artifact_digest=stored.digest,
            artifact_size=stored.size,
            flavor_details=inspection.details,
            unsafe_format=False,
            signature=_derived_signature(source.signature, inspection.signature),
            reference_sample=source.reference_sample,
            lineage=lineage,
            description=f"ONNX export of {key}",
            tags={"derived_from": key},
            created_by=created_by,
            environment=environment,
        ),
    )


def _derived_signature(original: Signature | None, graph: Signature | None) -> Signature | None:
    """The original's inputs (the graph casts them) and the graph's output types."""
    if original is None or not original.inputs:
        return graph
    types = {o.name: o for o in graph.outputs} if graph is not None else {}
    outputs = [
        o.model_copy(update={"datatype": types[o.name].datatype}) if o.name in types else o
        for o in original.outputs
    ]
    return Signature(inputs=original.inputs, outputs=outputs)
