"""Plain tables for the CLI, drawn like rich's default table, without importing rich.

Why: importing ``rich.console`` and ``rich.table`` costs ~65 ms, a third of ``credpath connections get
my_db`` on the embedded default (measured with hyperfine: 205 ms with rich, 139 ms for ``--json``); the
goal is 150 ms. Cells are printed literally (no markup, no emoji codes). Tables this renderer
cannot draw exactly (non-ASCII or control characters, wider than the terminal, no rows) return None and
the caller falls back to rich, which wraps and measures wide characters.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = [
    "console_width",
    "render",
    "stdout_is_terminal",
]


def _printable(text: str) -> bool:
    return all(" " <= ch <= "~" for ch in text)


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def console_width() -> int:
    """``COLUMNS``, else the terminal's width; not on a terminal (a pipe, a file), unbounded: a table
    written for a program or a file is never wrapped (rich would fold cells mid-word at 80)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if not stdout_is_terminal():
        return 1_000_000
    import shutil  # on a terminal only: with compression modules, it costs a pipe's start-up a few ms

    return shutil.get_terminal_size((80, 24)).columns


def render(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str | None = None) -> str | None:
    """The table as rich's ``Table(show_header=True)`` prints it (box HEAVY_HEAD, padding 1), or None."""
    cells = [list(headers), *(list(row) for row in rows)]
    if not rows or any(len(row) != len(headers) for row in cells):
        return None
    if not all(_printable(cell) for row in cells for cell in row):
        return None
    if title is not None and not _printable(title):
        return None
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    total = sum(widths) + 3 * len(widths) + 1
    if total > console_width() or (title is not None and len(title) > total):
        return None

    def line(left: str, fill: str, mid: str, right: str) -> str:
        return left + mid.join(fill * (w + 2) for w in widths) + right

    def row_line(row: Sequence[str], bar: str) -> str:
        return bar + bar.join(f" {cell.ljust(w)} " for cell, w in zip(row, widths, strict=True)) + bar

    out = []
    if title is not None:
        left = (total - len(title)) // 2
        out.append(" " * left + title + " " * (total - len(title) - left))
    out.append(line("┏", "━", "┳", "┓"))
    out.append(row_line(headers, "┃"))
    out.append(line("┡", "━", "╇", "┩"))
    out.extend(row_line(row, "│") for row in rows)
    out.append(line("└", "─", "┴", "┘"))
    return "\n".join(out)
