"""`shipyard export NAME:V --to onnx`: a derived ONNX version, registered only when it
answers as the original does (docs/packaging.md).

With SHIPYARD_URL set the server does the work and `--data` is uploaded to it; without,
the local registry's version is exported here, its model code in worker processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from shipyard.cli.models import JsonOption, connect

if TYPE_CHECKING:
    from shipyard.packaging.service import ExportResult


def export(
    ref: str = typer.Argument(..., help="The version to export: NAME:VERSION or NAME@ALIAS."),
    to: str = typer.Option("onnx", "--to", help="The target format (onnx)."),
    quantize: str | None = typer.Option(
        None, "--quantize", help="dynamic-int8 (int8 weights) or fp16 (float16 inside)."
    ),
    opset: int | None = typer.Option(None, "--opset", help="ONNX operator set (default 17)."),
    data: Path | None = typer.Option(
        None, "--data", help="Gate rows (.csv or .parquet); default: the reference sample."
    ),
    min_agreement: float | None = typer.Option(
        None,
        "--min-agreement",
        help="Least share of rows answered alike (default 1; 0.99 quantised).",
    ),
    max_abs_diff: float | None = typer.Option(
        None, "--max-abs-diff", help="Largest score difference (default 1e-5; none quantised)."
    ),
    as_json: bool = JsonOption,
) -> None:
    """Convert a version to ONNX, check it answers as the original on the gate rows, and
    register it as a new version derived from the original."""
    from pydantic import ValidationError

    from shipyard.errors import InvalidInput
    from shipyard.packaging.service import ExportOptions

    if data is not None and not data.is_file():
        raise InvalidInput(f"--data: no such file: {data}")
    try:
        options = ExportOptions.model_validate(
            {"to": to, "quantize": quantize, "opset": opset,
             "min_agreement": min_agreement, "max_abs_diff": max_abs_diff}
        )  # fmt: skip
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = "--" + str(problem["loc"][0]).replace("_", "-") if problem["loc"] else "options"
        raise InvalidInput(f"{where}: {problem['msg']}") from None
    with connect() as client:
        result = client.export(ref, options, data)
    _print_result(result, as_json)


def _print_result(result: ExportResult, as_json: bool) -> None:
    from shipyard.cli.output import print_fields, print_json, print_table

    if as_json:
        print_json(result)
        return
    version = result.version
    gate = result.gate
    allowed = gate.get("allowed_max_abs_diff")
    print_fields(
        f"exported {result.derived_from} to {version.model}:{version.version}",
        [
            ("flavor", version.flavor),
            ("converter", f"{result.converter} ({_versions(result.versions)})"),
            ("opset", ", ".join(f"{k} {v}" for k, v in result.opset.items())),
            ("quantize", result.quantize or "none"),
            ("gate rows", gate.get("rows")),
            ("agreement", f"{gate.get('agreement', 0):.2%} "
             f"(at least {gate.get('min_agreement', 1):.2%})"),
            ("max abs diff", f"{gate.get('max_abs_diff', 0):.3g}"
             + (f" (at most {allowed:g})" if allowed is not None else " (not limited)")),
        ],
    )  # fmt: skip
    before, after = result.rows_per_second["before"], result.rows_per_second["after"]
    print_table(
        None,
        ["", "size (bytes)", "rows/s batch 1", "rows/s batch 32"],
        [
            [result.derived_from, result.size["before"], _rate(before, "batch_1"),
             _rate(before, "batch_32")],
            [f"{version.model}:{version.version}", result.size["after"], _rate(after, "batch_1"),
             _rate(after, "batch_32")],
        ],
    )  # fmt: skip


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _rate(speeds: dict[str, float], key: str) -> str:
    return f"{speeds.get(key, 0.0):,.0f}"
