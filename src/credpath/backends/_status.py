"""A store's answers -> credpath errors, declared as one table per store (as hvac's ``from_status`` or
httpx's exception map), not written as if-chains.

A :class:`StatusTable` is an ordered list of rows; the first row that matches the answer's HTTP status
(or, with ``server_errors``, any status from 500 up) or the store's error code names the credpath error
class and its one-line message; an answer no row matches gets the table's ``default``. Messages are
``str.format`` templates over fields the store passes; a field given as a callable is called only when
the chosen message names it (an AWS caller ARN costs a request).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from credpath.errors import BackendError

__all__ = ["Row", "StatusTable"]

_FORMATTER = string.Formatter()


@dataclass(frozen=True)
class Row:
    """One row: which answers it takes, the error class they become and its message template."""

    error: type[BackendError]
    message: str
    statuses: frozenset[int] = frozenset()
    codes: frozenset[str] = frozenset()
    #: Every status from 500 up matches.
    server_errors: bool = False
    #: The answer is worth another try inside the call's deadline.
    retry: bool = False

    def matches(self, status: int | None, code: str | None) -> bool:
        if code is not None and code in self.codes:
            return True
        if status is None:
            return False
        return status in self.statuses or (self.server_errors and status >= 500)

    def fields(self) -> frozenset[str]:
        """The names the message uses."""
        return frozenset(name for _, name, _, _ in _FORMATTER.parse(self.message) if name)

    def render(self, fields: Mapping[str, Any]) -> str:
        used: dict[str, Any] = {}
        for name in self.fields():
            value = fields[name]
            used[name] = value() if callable(value) else value
        return self.message.format(**used)


@dataclass(frozen=True)
class StatusTable:
    """A store's rows in order (the first match wins), and the row of any other answer."""

    store: str
    rows: tuple[Row, ...]
    default: Row

    def row(self, status: int | None, code: str | None = None) -> Row:
        for row in self.rows:
            if row.matches(status, code):
                return row
        return self.default

    def message(self, status: int | None, code: str | None, fields: Mapping[str, Any]) -> tuple[Row, str]:
        """The row for this answer and its message over ``fields``."""
        row = self.row(status, code)
        return row, row.render(fields)

    def error(
        self,
        status: int | None,
        code: str | None,
        fields: Mapping[str, Any],
        make: Callable[[str, type[BackendError]], BackendError] | None = None,
    ) -> BackendError:
        """The credpath error for this answer; ``make(message, cls)`` builds it in the backend's voice
        (``backend.error``), else ``cls(message)``."""
        row, text = self.message(status, code, fields)
        return make(text, row.error) if make is not None else row.error(text)
