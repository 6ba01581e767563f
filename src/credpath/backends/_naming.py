"""The one naming rule of the prefix stores: a store name is ``<prefix><sep><key>``, one prefix per kind.

Airflow's provider backends for AWS Secrets Manager, SSM Parameter Store, GCP Secret Manager and Azure Key
Vault all glue the kind's prefix, ``sep`` and the key (``build_path``); credpath's Kubernetes backend does
the same. What differs per store is small and is data here, not code in each backend:

- a ``None`` prefix switches the kind off (every store); an empty prefix means the bare key, except in GCP
  whose provider glues it anyway (``-<key>``: ``glue_empty_prefix``);
- AWS and Azure strip a trailing ``sep`` from the prefix (``strip_sep``), GCP and Kubernetes do not;
- the store's spelling of a glued name (``spell``: Key Vault maps ``_`` to ``sep``, Kubernetes lower-cases
  and maps ``_`` to ``-``) and SSM's leading ``/`` (``absolute``);
- multi-team (Airflow 3.2+): which kinds a team lookup scopes (``team_kinds``), whether an empty prefix
  has a team-scoped name (``team_under_empty_prefix``; Secrets Manager: no), and for which kinds an id
  containing :data:`TEAM_SEP` is refused in multi-team mode (``refused_kinds``).

:class:`KeyNaming` is that rule as a frozen value; :class:`PrefixNamedBackend` gives a backend the one
public method for "the store name of a key", :meth:`~PrefixNamedBackend.secret_name`, and its team-scoped
twin :meth:`~PrefixNamedBackend.team_secret_name`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from credpath._deadlines import Deadline
from credpath.protocol import KINDS, PREFIX_SETTINGS, BaseBackend, Kind, multi_team_enabled

__all__ = ["TEAM_SEP", "KeyNaming", "PrefixNamedBackend", "log_team_refusal"]

#: What the 3.3.2-era provider backends put between a team's name and the id in a team-scoped secret name.
TEAM_SEP = "--"

_BOTH: frozenset[Kind] = frozenset({"connection", "variable"})


def _as_is(name: str) -> str:
    return name


def log_team_refusal(logger: logging.Logger, backend: str, kind: Kind, key: str) -> None:
    logger.warning(
        "%s: %s id %r contains %r, which separates the team name from the id in a team-scoped secret "
        "name; such an id is ambiguous in multi-team mode and is not looked up",
        backend,
        kind,
        key,
        TEAM_SEP,
    )


@dataclass(frozen=True)
class KeyNaming:
    """How one backend names its keys (see the module docstring); build it with :meth:`from_settings`."""

    #: The prefix per kind, as the provider keeps it (trailing ``sep`` stripped where it strips it).
    prefixes: Mapping[Kind, str | None]
    sep: str
    #: The store's spelling of a glued name; it must map characters one by one (distribute over ``+``).
    spell: Callable[[str], str] = _as_is
    glue_empty_prefix: bool = False
    absolute: bool = False
    team_kinds: frozenset[Kind] = field(default=_BOTH)
    team_under_empty_prefix: bool = True
    refused_kinds: frozenset[Kind] = field(default=frozenset(KINDS))

    @classmethod
    def from_settings(
        cls,
        connections_prefix: object,
        variables_prefix: object,
        config_prefix: object,
        *,
        sep: str,
        strip_sep: bool,
        fail: Callable[[str], Exception],
        spell: Callable[[str], str] = _as_is,
        glue_empty_prefix: bool = False,
        absolute: bool = False,
        team_kinds: frozenset[Kind] = _BOTH,
        team_under_empty_prefix: bool = True,
        refused_kinds: frozenset[Kind] = frozenset(KINDS),
    ) -> KeyNaming:
        """The naming of the three ``*_prefix`` settings; ``fail(message)`` builds the error for a prefix
        that is neither a string nor null (the backend's ``config_error``)."""
        given: dict[Kind, object] = {
            "connection": connections_prefix,
            "variable": variables_prefix,
            "config": config_prefix,
        }
        prefixes: dict[Kind, str | None] = {}
        for kind, prefix in given.items():
            if prefix is not None and not isinstance(prefix, str):
                raise fail(f"{PREFIX_SETTINGS[kind]} must be a string or null, got {type(prefix).__name__}")
            # Airflow's rule where it strips: a non-empty prefix loses its trailing sep; "" and None stay.
            prefixes[kind] = prefix.rstrip(sep) if prefix and strip_sep and sep else prefix
        return cls(
            MappingProxyType(prefixes),
            sep,
            spell=spell,
            glue_empty_prefix=glue_empty_prefix,
            absolute=absolute,
            team_kinds=team_kinds,
            team_under_empty_prefix=team_under_empty_prefix,
            refused_kinds=refused_kinds,
        )

    def join(self, prefix: str, key: str) -> str:
        """``<prefix><sep><key>`` in the store spelling (the bare key under an empty prefix unless glued)."""
        name = self.spell(f"{prefix}{self.sep}{key}" if prefix or self.glue_empty_prefix else key)
        # SSM parameter names in a hierarchy are absolute; Airflow adds the leading "/" too.
        return f"/{name}" if self.absolute and not name.startswith("/") else name

    def name(self, kind: Kind, key: str) -> str | None:
        """The store name of ``key``, or None when ``kind`` is switched off (its prefix is null)."""
        prefix = self.prefixes[kind]
        return None if prefix is None else self.join(prefix, key)

    def head(self, kind: Kind) -> str | None:
        """What every store name of ``kind`` starts with (the name of the empty key); None if off."""
        return self.name(kind, "")

    def team_name(self, kind: Kind, key: str, team_name: str) -> str | None:
        """The team-scoped name a lookup for ``team_name`` tries first (``<prefix><sep><team>--<key>``), or
        None when the store's provider has no such lookup for this kind or prefix."""
        prefix = self.prefixes[kind]
        if prefix is None or kind not in self.team_kinds or (not prefix and not self.team_under_empty_prefix):
            return None
        return self.join(prefix, f"{team_name}{TEAM_SEP}{key}")

    def refuses(self, kind: Kind, key: str) -> bool:
        """Multi-team mode: an id whose spelling contains the team separator is ambiguous (team ``a`` with
        id ``b--c`` or team ``a--b`` with id ``c``), so the provider never looks it up."""
        return kind in self.refused_kinds and TEAM_SEP in self.spell(key) and multi_team_enabled()


class PrefixNamedBackend(BaseBackend):
    """A backend whose keys are named by a :class:`KeyNaming` (set ``self.naming`` in ``__init__``).

    ``secret_name`` is the one method every such backend answers "what is this key called in the store"
    with; reads, writes, listing and the test harnesses all go through it.
    """

    naming: KeyNaming
    #: What a name in the store is called in messages ("secret name", "parameter name", "secret id").
    name_noun: ClassVar[str] = "secret name"
    #: The names the store accepts, in words, for the write error (empty: any name).
    name_rules: ClassVar[str] = ""

    @property
    def prefixes(self) -> Mapping[Kind, str | None]:
        return self.naming.prefixes

    @property
    def sep(self) -> str:
        return self.naming.sep

    @property
    def connections_prefix(self) -> str | None:
        return self.naming.prefixes["connection"]

    @property
    def variables_prefix(self) -> str | None:
        return self.naming.prefixes["variable"]

    @property
    def config_prefix(self) -> str | None:
        return self.naming.prefixes["config"]

    def secret_name(self, kind: Kind, key: str) -> str | None:
        """The store name of ``key``, or None when ``kind`` is switched off (its prefix is null)."""
        return self.naming.name(kind, key)

    def team_secret_name(self, kind: Kind, key: str, team_name: str) -> str | None:
        """The team-scoped name a lookup for ``team_name`` tries first, or None if the provider has none."""
        return self.naming.team_name(kind, key, team_name)

    def _can_exist(self, name: str) -> bool:
        """False for a name the store cannot hold: a read of it is a miss without a call."""
        return True

    def _refuses(self, kind: Kind, key: str) -> bool:
        """True (and a warning logged) if multi-team mode refuses ``key`` (see :meth:`KeyNaming.refuses`)."""
        if self.naming.refuses(kind, key):
            log_team_refusal(logging.getLogger(type(self).__module__), self.name, kind, key)
            return True
        return False

    def _lookup_names(self, kind: Kind, key: str, team_name: str | None = None) -> list[str]:
        """The names one read of ``key`` tries, in order: the team's first, then the team-agnostic one.

        Airflow's order of checks: a switched-off kind, then the multi-team refusal, then the lookup
        pattern; a name the store cannot hold is dropped (a miss without a call).
        """
        name = self.secret_name(kind, key)
        if name is None or self._refuses(kind, key) or not self.wants(kind, key):
            return []
        names = [name]
        if team_name:
            scoped = self.team_secret_name(kind, key, team_name)
            if scoped is not None:
                names.insert(0, scoped)
        kept = [n for n in names if self._can_exist(n)]
        if len(kept) < len(names):
            logging.getLogger(type(self).__module__).debug(
                "%s: %s %r gives a name %s cannot hold; miss", self.name, kind, key, self.store_name
            )
        return kept

    def _first_found(
        self,
        kind: Kind,
        key: str,
        team_name: str | None,
        read: Callable[[str, Deadline], str | None],
        timeout: float,
    ) -> str | None:
        """``read(name, deadline)`` of each of :meth:`_lookup_names` in turn (the team's name, then the
        team-agnostic one), within ONE deadline of ``timeout`` seconds: the first value found, or None."""
        deadline = Deadline(timeout)
        for name in self._lookup_names(kind, key, team_name):
            value = read(name, deadline)
            if value is not None:
                return value
        return None

    def _write_name(self, kind: Kind, key: str) -> str:
        """The name a write or delete of ``key`` goes to; ConfigError if the kind is off or the name is one
        the store rejects."""
        name = self.secret_name(kind, key)
        if name is None:
            raise self.config_error(
                f"{PREFIX_SETTINGS[kind]} is null, so {kind}s are switched off (cannot write {key!r})"
            )
        if not key:
            raise self.config_error(f"{kind} id must not be empty")
        if not self._can_exist(name):
            rules = f" (allowed: {self.name_rules})" if self.name_rules else ""
            raise self.config_error(
                f"{kind} id {key!r} gives {self.name_noun} {name!r}, which {self.store_name} rejects{rules}"
            )
        return name
