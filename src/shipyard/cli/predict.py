"""`shipyard predict`: send a CSV/JSON/Parquet file to a server and print the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def read_rows(path: Path) -> Any:
    """The file as a pyarrow Table (.csv, .parquet, or .json: a list of records)."""
    import orjson
    import pyarrow as pa

    from shipyard.errors import InvalidInput
    from shipyard.registry.importing import read_example

    if path.suffix.lower() == ".json":
        try:
            records = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InvalidInput(f"cannot read {path}: {exc}") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise InvalidInput(f"{path} must hold a JSON list of records (objects)")
        return pa.Table.from_pylist(records)
    return read_example(path)


def inputs_for(table: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """Columns as the model takes them: one matrix input, or one input per column."""
    import numpy as np

    from shipyard.errors import InvalidInput

    specs = metadata.get("inputs") or []
    if len(specs) == 1 and len(specs[0]["shape"]) == 2:
        columns = [table.column(i).to_numpy(zero_copy_only=False) for i in range(table.num_columns)]
        return {specs[0]["name"]: np.column_stack(columns)}
    names = [spec["name"] for spec in specs] or table.column_names
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise InvalidInput(f"the file has no column {missing[0]!r}, which the model needs")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in names}


def predict(
    ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    input_file: Path = typer.Option(..., "--input", "-i", help="A .csv, .parquet or .json file."),
    url: str | None = typer.Option(None, help="Server URL (default: SHIPYARD_URL or :8000)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Predict on every row of a file with a model served by a Shipyard server."""
    from shipyard.client import Client
    from shipyard.config import Settings

    server = url or Settings().url or "http://127.0.0.1:8000"
    table = read_rows(input_file)
    with Client(server) as client:
        inputs = inputs_for(table, client.model_metadata(ref))
        version, outputs = client.infer(ref, inputs)
    if as_json:
        from shipyard.cli.output import print_json

        print_json(
            {"model_version": version, "outputs": {k: v.tolist() for k, v in outputs.items()}}
        )
        return
    from shipyard.cli.output import print_table

    rows = len(next(iter(outputs.values()))) if outputs else 0
    print_table(
        f"{ref} (version {version})",
        ["row", *outputs],
        [[i, *(outputs[name][i].tolist() for name in outputs)] for i in range(rows)],
    )
