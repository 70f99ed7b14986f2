"""How the CLI prints: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, dict):
        data = value
    else:
        data = [item.model_dump(mode="json") for item in value]
    # Plain print: rich would wrap long lines and break the JSON.
    print(json.dumps(data, indent=2, sort_keys=False))


ID_COLUMNS = frozenset({"id", "job", "key", "digest", "request id"})
"""Columns whose values people copy into the next command: never shortened or wrapped."""


def print_table(
    title: str | None,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    ids: frozenset[str] = ID_COLUMNS,
) -> None:
    """A table that never cuts a value short: on a narrow terminal (or none: 80 columns)
    long cells wrap onto more lines, and ids keep their whole width on one line."""
    # Escaped: cells are data ("metrics.f1[plan=pro]"), never rich markup.
    cells = [["" if cell is None else escape(str(cell)) for cell in row] for row in rows]
    table = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        if column in ids:
            widest = max((len(row[index]) for row in cells), default=0)
            table.add_column(column, no_wrap=True, min_width=max(widest, len(column)))
        else:
            table.add_column(column, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table)


def print_fields(title: str, fields: Sequence[tuple[str, Any]]) -> None:
    """`key  value` lines under a title: plain text, so a long value (a digest, a URI)
    is never cut or wrapped into pieces that no longer paste."""
    width = max((len(key) for key, _ in fields), default=0)
    print(title)
    for key, value in fields:
        print(f" {key:<{width}}  {'' if value is None else value}".rstrip())
