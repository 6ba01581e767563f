"""Rendering for the CLI: JSON for machines, tables for people. Secrets masked unless revealed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from credpath.model import Connection

__all__ = [
    "MASK",
    "OUTPUT_FORMATS",
    "airflow_connection",
    "airflow_values",
    "connection_record",
    "echo_as",
    "echo_json",
    "echo_record",
    "echo_table",
    "output_option",
    "variable_value",
]

MASK = "***"


def connection_record(conn: Connection, source: str | None, reveal: bool) -> dict[str, Any]:
    data = conn.to_dict()
    if not reveal:
        if data["password"] is not None:
            data["password"] = MASK
        if data["extra"]:
            from credpath._masking import redact_value

            # Sensitive keys at any depth, whatever their values' type (a number, a list).
            data["extra"] = redact_value(data["extra"])
    data["source"] = source
    return data


def variable_value(key: str, value: str, reveal: bool) -> str:
    """The value as shown: in clear with ``--reveal``; else masked whole under a sensitive key, and a
    JSON value's sensitive keys masked at any depth (as Airflow's API shows variables)."""
    if reveal:
        return value
    from credpath._masking import redact_text_value

    return redact_text_value(value, key)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def echo_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str | None = None,
    empty: str | None = None,
) -> None:
    """A table; with no rows, one line instead (``empty``, else "<title>: none") - never an empty box."""
    if not rows:
        click.echo(empty if empty is not None else f"{title}: none" if title else "none")
        return
    # Drawn without rich when it can be (importing rich costs ~65 ms: see credpath.cli.plain_table).
    from credpath.cli.plain_table import console_width, render, stdout_is_terminal

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
    # Not on a terminal (a pipe, a file), nothing to fit: as wide as the widest row, never wrapped mid-word.
    width = console_width() if stdout_is_terminal() else 1_000_000
    Console(soft_wrap=False, markup=False, emoji=False, highlight=False, width=width).print(table)


def echo_record(record: dict[str, Any], title: str | None = None) -> None:
    rows = []
    for key, value in record.items():
        if isinstance(value, dict):
            value = json.dumps(value)
        rows.append((key, value))
    echo_table(("field", "value"), rows, title=title)


# --- Airflow's -o/--output --------------------------------------------------------------------------------

#: Airflow's ``-o/--output`` choices (AirflowConsole.print_as), table first: its default.
OUTPUT_FORMATS = ("table", "json", "yaml", "plain")


def output_option(func: Any) -> Any:
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Choice(OUTPUT_FORMATS),
        default=None,
        help="Airflow's output formats (as `airflow connections get -o json`): a list of records.",
    )(func)


def airflow_values(value: Any) -> Any:
    """Airflow's ``AirflowConsole._normalize_data`` (json/yaml/plain): lists and dicts kept, None kept,
    every other value as ``str``."""
    if isinstance(value, list | tuple):
        return [airflow_values(v) for v in value]
    if isinstance(value, dict):
        return {k: airflow_values(v) for k, v in value.items()}
    return None if value is None else str(value)


def airflow_connection(conn: Connection, reveal: bool) -> dict[str, Any]:
    """``ConnectionDisplayMapper.full_details``'s keys (Airflow 3.3.2's `connections get`): no database
    row here, so ``id`` is None; both encryption flags are what Airflow with a Fernet key prints (it
    shows ``is_encrypted`` twice: true when a password is set). Without ``reveal`` the password, the
    sensitive extra keys and the URI's password are masked."""
    extra = conn.extra_dejson if conn.extra else {}
    uri = conn.get_uri()
    if not reveal:
        from dataclasses import replace

        from credpath._masking import redact_value

        extra = redact_value(extra)
        masked = replace(
            conn,
            password=MASK if conn.password else conn.password,
            extra=json.dumps(extra) if conn.extra else conn.extra,
        )
        uri = masked.get_uri().replace("%2A%2A%2A", MASK)  # the URI quotes the mask: show it as masked
    return {
        "id": None,
        "conn_id": conn.conn_id,
        "conn_type": conn.conn_type,
        "description": conn.description,
        "host": conn.host,
        "schema": conn.schema,
        "login": conn.login,
        "password": conn.password if reveal or conn.password is None else MASK,
        "port": conn.port,
        "is_encrypted": bool(conn.password),
        "is_extra_encrypted": bool(conn.password),
        "extra_dejson": extra,
        "get_uri": uri,
    }


def echo_as(records: Sequence[dict[str, Any]], output: str) -> None:
    """``records`` as Airflow prints them with ``-o``: json (one line), yaml, table, plain; no records:
    Airflow's "No data found" for table and plain, an empty list for json and yaml."""
    data = [airflow_values(record) for record in records]
    if output == "json":
        click.echo(json.dumps(data))
    elif output == "yaml":
        import yaml

        click.echo(yaml.dump(data), nl=False)
    elif not data:
        click.echo("No data found")
    elif output == "table":
        echo_table(list(data[0]), [[_cell(v) for v in row.values()] for row in data])
    else:
        headers = list(data[0])
        # tabulate (Airflow's plain renderer) prints None as an empty cell.
        cells = [headers, *(["" if v is None else _cell(v) for v in row.values()] for row in data)]
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        for row in cells:  # tabulate's "plain": columns two spaces apart, no rules
            click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
