"""`shipyard predict`: send a CSV/JSON/Parquet file to a server and print the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

ACCEPTED_SUFFIXES = (".csv", ".parquet", ".pq", ".json")


def read_rows(path: Path) -> Any:
    """The file as a pyarrow Table (.csv, .parquet, or .json: a list of records)."""
    import orjson
    import pyarrow as pa

    from shipyard.errors import InvalidInput, NotFound
    from shipyard.registry.importing import read_example

    if not path.is_file():
        raise NotFound(f"--input {path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in ACCEPTED_SUFFIXES:
        raise InvalidInput(
            f"--input {path.name}: predict reads .csv, .parquet (.pq) or .json (a list of "
            f"records), not {suffix or 'a file with no extension'}"
        )
    if suffix == ".json":
        try:
            records = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InvalidInput(f"cannot read {path.name}: {exc}") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise InvalidInput(f"{path.name} must hold a JSON list of records (objects)")
        return pa.Table.from_pylist(records)
    return read_example(path)


def inputs_for(table: Any, metadata: dict[str, Any], source: str = "the file") -> dict[str, Any]:
    """Columns as the model takes them: one matrix input, or one input per column. A
    value that is not what the model takes is refused naming its row and column."""
    import numpy as np

    from shipyard.errors import InvalidInput

    specs = metadata.get("inputs") or []
    if len(specs) == 1 and len(specs[0]["shape"]) == 2:
        for name in table.column_names:
            _check_column(table, name, specs[0]["datatype"], source)
        columns = [table.column(i).to_numpy(zero_copy_only=False) for i in range(table.num_columns)]
        return {specs[0]["name"]: np.column_stack(columns)}
    names = [spec["name"] for spec in specs] or table.column_names
    missing = [name for name in names if name not in table.column_names]
    if missing:
        raise InvalidInput(
            f"{source} has no column {missing[0]!r}, which the model needs (it has "
            f"{', '.join(table.column_names)})"
        )
    for spec in specs:
        _check_column(table, spec["name"], spec["datatype"], source)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in names}


def _check_column(table: Any, name: str, datatype: str, source: str) -> None:
    """Empty cells and words in a column the model reads as numbers: the first one, by
    row (1 = the first row after a CSV's header, which is line 2)."""
    import pyarrow as pa

    from shipyard.errors import InvalidInput

    if datatype in ("BYTES", "BOOL"):
        return
    column = table.column(name)
    numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
    if numeric and column.null_count == 0:
        return  # the common case, checked without a loop in Python
    wanted = "a whole number" if datatype.startswith(("INT", "UINT")) else "a number"
    for index, value in enumerate(column.to_pylist()):
        if value is None:
            problem = "is empty"
        elif isinstance(value, str):
            try:
                float(value)
                continue
            except ValueError:
                problem = f"holds {value[:40]!r}"
        else:
            continue
        line = f" (line {index + 2})" if source.lower().endswith(".csv") else ""
        raise InvalidInput(
            f"{source}, row {index + 1}{line}, column {name!r} {problem}: the model's "
            f"input {name!r} ({datatype}) needs {wanted} there"
        )
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        raise InvalidInput(f"{source}, column {name!r}: text where the model needs {wanted}")


def predict(
    ref: str = typer.Argument(..., help="NAME, NAME:VERSION or NAME@ALIAS."),
    input_file: Path = typer.Option(
        ..., "--input", "-i", help="A .csv, .parquet (.pq) or .json file (a list of records)."
    ),
    url: str | None = typer.Option(None, help="Server URL (default: SHIPYARD_URL or :8000)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Predict on every row of a file with a model served by a Shipyard server."""
    from shipyard.client import Client
    from shipyard.config import Settings

    server = url or Settings().url or "http://127.0.0.1:8000"
    table = read_rows(input_file)
    with Client(server) as client:
        inputs = inputs_for(table, client.model_metadata(ref), input_file.name)
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
        [[i + 1, *(outputs[name][i].tolist() for name in outputs)] for i in range(rows)],
    )
