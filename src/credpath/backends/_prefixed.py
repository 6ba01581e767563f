"""Secrets named ``<prefix><sep><id>``, one prefix per kind, as GCP Secret Manager and Key Vault name them.

Airflow's backends for both stores glue the kind's prefix, ``sep`` and the key (an empty prefix means the bare
key; a ``None`` prefix switches that kind off). This base class holds that naming and what follows from it: a
read of a name the store cannot hold is a miss without a call, a write of one is a :class:`ConfigError`, and
listing strips the prefix again. Each store keeps its own rules: the class attributes (which names it allows,
how messages call them) and two hooks, ``_map_name`` (Key Vault: ``_`` -> ``sep``) and ``_fold`` (Key Vault:
names compare case-insensitively).
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

from credpath.deadlines import Deadline
from credpath.protocol import BaseBackend, Kind, iter_ids, multi_team_enabled

#: What the 3.3.2-era provider backends put between a team's name and the id in a team-scoped secret name.
TEAM_SEP = "--"
_TRUE = ("t", "true", "1")


def log_team_refusal(logger: logging.Logger, backend: str, kind: Kind, key: str) -> None:
    logger.warning(
        "%s: %s id %r contains %r, which separates the team name from the id in a team-scoped secret "
        "name; such an id is ambiguous in multi-team mode and is not looked up",
        backend,
        kind,
        key,
        TEAM_SEP,
    )


def prefix_setting(kind: Kind) -> str:
    """The kwarg that sets ``kind``'s prefix (Airflow's names)."""
    return f"{kind}s_prefix" if kind != "config" else "config_prefix"


class PrefixedSecretsBackend(BaseBackend):
    """Reads, write-name checks and listing for a store of secrets named ``<prefix><sep><id>``.

    Subclasses set ``prefixes`` and ``sep`` in ``__init__``, the class attributes below, ``read_secret`` and
    ``_list_under``. Team-scoped reads (Airflow 3.2+ multi-team) follow the store's provider: the team's name
    is tried first, then the team-agnostic one (``_team_name``, ``_refuses``, ``team_config``).
    """

    #: The store's short name and its word for a secret's name, for messages ("Secret Manager", "id").
    service: ClassVar[str] = ""
    name_noun: ClassVar[str] = "name"
    #: The names the store accepts, and the same in words for the write error.
    name_re: ClassVar[re.Pattern[str]]
    name_rules: ClassVar[str] = ""
    #: Whether the provider also refuses team-separator ids for ``get_config`` (Azure: yes; GCP: no).
    team_config_refusal: ClassVar[bool] = True

    prefixes: dict[Kind, str | None]
    sep: str

    # --- naming ------------------------------------------------------------------------------------

    def _join(self, prefix: str, key: str) -> str:
        """The provider's ``build_path``: the bare key under an empty prefix unless a store overrides it."""
        return f"{prefix}{self.sep}{key}" if prefix else key

    def _map_name(self, name: str) -> str:
        """The store's spelling of a glued name; as is unless the store overrides it."""
        return name

    def _fold(self, name: str) -> str:
        """The form in which listing compares names; as is unless the store overrides it."""
        return name

    def secret_name(self, kind: Kind, key: str) -> str | None:
        """The store's name for ``key``, or None if this kind is switched off (its prefix is null)."""
        prefix = self.prefixes[kind]
        if prefix is None:
            return None
        return self._map_name(self._join(prefix, key))

    def team_secret_name(self, kind: Kind, key: str, team_name: str) -> str | None:  # pragma: no cover
        """The store's team-scoped name for ``key`` (each provider builds it its own way)."""
        raise NotImplementedError

    def _refuses(self, key: str) -> bool:
        """In multi-team mode, an id whose store spelling contains the team separator is never looked up."""
        return TEAM_SEP in self._map_name(key) and multi_team_enabled()

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

    def _read_name(self, kind: Kind, key: str, name: str, deadline: Deadline) -> str | None:
        if not self.name_re.match(name):
            # No secret can have this name, so it is a miss; asking would only cost a 400.
            logging.getLogger(type(self).__module__).debug(
                "%s: %s %r cannot be a %s %s; miss", self.name, kind, key, self.service, self.name_noun
            )
            return None
        return self.read_secret(name, deadline)

    def _read(self, kind: Kind, key: str, team_name: str | None = None) -> str | None:
        name = self.secret_name(kind, key)
        if name is None:
            return None
        if (kind != "config" or self.team_config_refusal) and self._refuses(key):
            log_team_refusal(logging.getLogger(type(self).__module__), self.name, kind, key)
            return None
        if not self.wants(kind, key):
            return None
        deadline = Deadline(self.timeout)  # one deadline for the team-scoped and the team-agnostic read
        if team_name:
            scoped = self.team_secret_name(kind, key, team_name)
            if scoped is not None:
                value = self._read_name(kind, key, scoped, deadline)
                if value is not None:
                    return value
        return self._read_name(kind, key, name, deadline)

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

    # --- writes, listing ---------------------------------------------------------------------------

    def _write_name(self, kind: Kind, key: str) -> str:
        """The name to write or delete ``key`` under; ConfigError if the kind is off or the name invalid."""
        name = self.secret_name(kind, key)
        if name is None:
            raise self.config_error(f"cannot write {kind} {key!r}: {prefix_setting(kind)} is null")
        if not self.name_re.match(name):
            raise self.config_error(
                f"{kind} id {key!r} gives secret {self.name_noun} {name!r}, which "
                f"{self.service} rejects (allowed: {self.name_rules})"
            )
        return name

    def _list(self, kind: Kind) -> list[str]:
        prefix = self.prefixes[kind]
        if prefix is None:
            return []
        start = self._fold(self._map_name(self._join(prefix, "")))
        return iter_ids(self._list_under(kind, start))

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
