"""Tables print user data literally: rich markup, emoji codes and highlighting never change a value."""

from __future__ import annotations

import pytest

from credpath.cli.output import echo_record, echo_table
from credpath.model import Connection

LITERALS = [
    "ab[i]cd[/i]ef",
    "[admin]",
    "pip install 'credpath[gcp]'",
    "[bold red]x[/]",
    ":smile: :) [link=x]y",
]


@pytest.mark.parametrize("value", LITERALS)
def test_table_cells_print_exactly(capsys, value):
    echo_table(("field", "value"), [("x", value)], title=f"title {value}")
    out = capsys.readouterr().out
    assert value in out
    assert f"title {value}" in out


def test_revealed_record_keeps_bracketed_password_login_and_extra(capsys):
    conn = Connection(
        conn_id="c",
        conn_type="postgres",
        login="[admin]",
        password="ab[i]cd[/i]ef",
        description="the [prod] db",
        extra='{"note": "[red]keep[/red]"}',
    )
    echo_record(conn.to_dict(), title="connection [c]")
    out = capsys.readouterr().out
    for value in ("[admin]", "ab[i]cd[/i]ef", "the [prod] db", "[red]keep[/red]", "connection [c]"):
        assert value in out
