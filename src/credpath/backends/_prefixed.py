"""Reads, write-name checks and listing for GCP Secret Manager and Azure Key Vault: one secret per key.

Naming is :mod:`credpath.backends._naming`'s (``<prefix><sep><key>``, one rule for every prefix store).
What follows from it here: a read of a name the store cannot hold is a miss without a call, a write of one is
a :class:`ConfigError`, and listing strips the prefix again. Each store keeps its own rules: the class
attributes (which names it allows, how messages call them), its :class:`KeyNaming` (Key Vault maps ``_`` to
``sep``) and ``_fold`` (Key Vault: names compare case-insensitively).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from credpath._deadlines import Deadline
from credpath.backends._naming import PrefixNamedBackend
from credpath.protocol import Kind, iter_ids

__all__ = ["PrefixedSecretsBackend"]


class PrefixedSecretsBackend(PrefixNamedBackend):
    """Reads, write-name checks and listing for a store of secrets named by a :class:`KeyNaming`.

    Subclasses set ``naming`` in ``__init__``, the class attributes below, ``read_secret`` and
    ``_list_under``. Team-scoped reads (Airflow 3.2+ multi-team) follow the store's provider: the team's name
    is tried first, then the team-agnostic one (``KeyNaming.team_name``).
    """

    #: The names the store accepts (``name_rules`` says the same in words, for the write error).
    name_re: ClassVar[re.Pattern[str]]

    def _can_exist(self, name: str) -> bool:
        # No secret can have another name, so a read is a miss; asking would only cost a 400.
        return self.name_re.match(name) is not None

    def _fold(self, name: str) -> str:
        """The form in which listing compares names; as is unless the store overrides it."""
        return name

    def _where(self, name: str, action: str) -> str:
        """The start of an error message: backend, store, what was done and to which secret."""
        return f"{self.label}: {action} secret {name!r}"

    # --- reads -------------------------------------------------------------------------------------

    #: Seconds a whole lookup may take (connect, reads, retries, waits); set by the subclass.
    timeout: float

    def read_secret(self, name: str, deadline: Deadline | None = None) -> str | None:  # pragma: no cover
        """The value of the secret ``name`` (a name the store accepts), or None if there is none.

        ``deadline`` bounds the whole call; a new one of ``timeout`` seconds if not given.
        """
        raise NotImplementedError

    def _read(self, kind: Kind, key: str, team_name: str | None = None) -> str | None:
        return self._first_found(kind, key, team_name, self.read_secret, self.timeout)

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        return self._read("connection", conn_id, team_name)

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        return self._read("variable", key, team_name)

    def get_config(self, key: str) -> str | None:
        return self._read("config", key)

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        raw = self.get_conn_value(conn_id, team_name=team_name)
        if raw is None:
            return None
        return self.deserialize_connection(conn_id, raw)

    # --- listing -----------------------------------------------------------------------------------

    def _list(self, kind: Kind) -> list[str]:
        head = self.naming.head(kind)
        if head is None:
            return []
        return iter_ids(self._list_under(kind, self._fold(head)))

    def _list_under(self, kind: Kind, start: str) -> list[str]:  # pragma: no cover - abstract
        """The keys of ``kind``: secrets whose folded name starts with ``start`` (``_key_under``)."""
        raise NotImplementedError

    def _key_under(self, name: str, start: str) -> str | None:
        """The key of the secret ``name`` if its folded name starts with ``start`` and is not just that."""
        if self._fold(name).startswith(start) and len(name) != len(start):
            return name[len(start) :]
        return None

    def list_connections(self) -> list[str]:
        return self._list("connection")

    def list_variables(self) -> list[str]:
        return self._list("variable")
