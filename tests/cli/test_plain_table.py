"""credpath.cli.plain_table draws what rich draws (for the tables it takes), without importing rich."""

from __future__ import annotations

import io
import random
import string

import pytest

from credpath.cli.plain_table import render


def _rich(headers: list[str], rows: list[list[str]], title: str | None) -> str:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title, show_header=True, header_style="bold")
    for header in headers:
        table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    buf = io.StringIO()
    Console(file=buf, soft_wrap=False, width=80, emoji=False).print(table)
    return buf.getvalue().rstrip("\n")


def test_same_drawing_as_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    rnd = random.Random(3)
    compared = 0
    for _ in range(300):
        ncol = rnd.choice([2, 3])
        headers = ["".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(1, 8))) for _ in range(ncol)]
        alphabet = string.ascii_letters + string.digits + ' -_/.{}"=,'
        rows = [
            ["".join(rnd.choices(alphabet, k=rnd.randint(0, 14))) for _ in range(ncol)]
            for _ in range(rnd.randint(1, 6))
        ]
        title = rnd.choice([None, "connection my_db", "x"])
        mine = render(headers, rows, title)
        if mine is None:
            continue
        compared += 1
        assert mine == _rich(headers, rows, title)
    assert compared > 250


def test_cells_are_literal_and_unsupported_tables_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    out = render(["field", "value"], [["password", "ab[i]cd[/i]ef"], ["login", "[admin]"]], "t")
    assert out is not None and "ab[i]cd[/i]ef" in out and "[admin]" in out
    assert render(["a"], [["caf\u00e9"]]) is None  # non-ASCII: rich measures cell widths
    assert render(["a"], [["x\ty"]]) is None
    assert render(["a"], []) is None
    assert render(["a"], [["x" * 100]]) is None  # wider than the terminal: rich folds
