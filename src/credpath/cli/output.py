"""Rendering for the CLI: JSON for machines, tables for people. Secrets masked unless revealed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from credpath.masking import redact_text_value, redact_value
from credpath.model import Connection

__all__ = [
    "MASK",
    "connection_record",
    "echo_json",
    "echo_record",
    "echo_table",
    "variable_value",
]

MASK = "***"


def connection_record(conn: Connection, source: str | None, reveal: bool) -> dict[str, Any]:
    data = conn.to_dict()
    if not reveal:
        if data["password"] is not None:
            data["password"] = MASK
        if data["extra"]:
            # Sensitive keys at any depth, whatever their values' type (a number, a list).
            data["extra"] = redact_value(data["extra"])
    data["source"] = source
    return data


def variable_value(key: str, value: str, reveal: bool) -> str:
    """The value as shown: in clear with ``--reveal``; else masked whole under a sensitive key, and a
    JSON value's sensitive keys masked at any depth (as Airflow's API shows variables)."""
    return value if reveal else redact_text_value(value, key)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    # Drawn without rich when it can be (importing rich costs ~65 ms: see credpath.cli.plain_table).
    from credpath.cli.plain_table import render

    plain = render(headers, [["" if cell is None else str(cell) for cell in row] for row in rows], title)
    if plain is not None:
        click.echo(plain)
        return
    # rich is imported only when a table is printed: `connections get --json` stays lean.
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Every cell, header and title is a Text: rich would read "[admin]" or "credpath[gcp]" as markup and
    # print a changed value.
    table = Table(title=None if title is None else Text(title), show_header=True, header_style="bold")
    for header in headers:
        table.add_column(Text(header), overflow="fold")
    for row in rows:
        table.add_row(*(Text("" if cell is None else str(cell)) for cell in row))
    Console(soft_wrap=False, markup=False, emoji=False, highlight=False).print(table)


def echo_record(record: dict[str, Any], title: str | None = None) -> None:
    rows = []
    for key, value in record.items():
        if isinstance(value, dict):
            value = json.dumps(value)
        rows.append((key, value))
    echo_table(("field", "value"), rows, title=title)
