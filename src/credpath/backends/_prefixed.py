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
from typing import ClassVar

from credpath.errors import ConfigError
from credpath.protocol import BaseBackend, Kind, iter_ids


def prefix_setting(kind: Kind) -> str:
    """The kwarg that sets ``kind``'s prefix (Airflow's names)."""
    return f"{kind}s_prefix" if kind != "config" else "config_prefix"


class PrefixedSecretsBackend(BaseBackend):
    """Reads, write-name checks and listing for a store of secrets named ``<prefix><sep><id>``.

    Subclasses set ``prefixes`` and ``sep`` in ``__init__``, the class attributes below, ``read_secret`` and
    ``_list_under``.
    """

    #: The store's short name and its word for a secret's name, for messages ("Secret Manager", "id").
    service: ClassVar[str] = ""
    name_noun: ClassVar[str] = "name"
    #: The names the store accepts, and the same in words for the write error.
    name_re: ClassVar[re.Pattern[str]]
    name_rules: ClassVar[str] = ""

    prefixes: dict[Kind, str | None]
    sep: str

    # --- naming ------------------------------------------------------------------------------------

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
        return self._map_name(f"{prefix}{self.sep}{key}" if prefix else key)

    def _where(self, name: str, action: str) -> str:
        """The start of an error message: backend, store, what was done and to which secret."""
        return f"backend {self.name!r} ({self.store_name}): {action} secret {name!r}"

    # --- reads -------------------------------------------------------------------------------------

    def read_secret(self, name: str) -> str | None:  # pragma: no cover - abstract
        """The value of the secret ``name`` (a name the store accepts), or None if there is none."""
        raise NotImplementedError

    def _read(self, kind: Kind, key: str) -> str | None:
        if not self.wants(kind, key):
            return None
        name = self.secret_name(kind, key)
        if name is None:
            return None
        if not self.name_re.match(name):
            # No secret can have this name, so it is a miss; asking would only cost a 400.
            logging.getLogger(type(self).__module__).debug(
                "%s: %s %r cannot be a %s %s; miss", self.name, kind, key, self.service, self.name_noun
            )
            return None
        return self.read_secret(name)

    def get_conn_value(self, conn_id: str) -> str | None:
        return self._read("connection", conn_id)

    def get_variable(self, key: str) -> str | None:
        return self._read("variable", key)

    def get_config(self, key: str) -> str | None:
        return self._read("config", key)

    # --- writes, listing ---------------------------------------------------------------------------

    def _write_name(self, kind: Kind, key: str) -> str:
        """The name to write or delete ``key`` under; ConfigError if the kind is off or the name invalid."""
        name = self.secret_name(kind, key)
        if name is None:
            raise ConfigError(
                f"backend {self.name!r}: cannot write {kind} {key!r}: {prefix_setting(kind)} is null"
            )
        if not self.name_re.match(name):
            raise ConfigError(
                f"backend {self.name!r}: {kind} id {key!r} gives secret {self.name_noun} {name!r}, which "
                f"{self.service} rejects (allowed: {self.name_rules})"
            )
        return name

    def _list(self, kind: Kind) -> list[str]:
        prefix = self.prefixes[kind]
        if prefix is None:
            return []
        start = self._fold(self._map_name(f"{prefix}{self.sep}" if prefix else ""))
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
