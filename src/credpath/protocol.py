"""The backend contract: what a backend is, what it declares, and how every call site asks.

A backend written from this module alone works with the search path, ``credpath migrate``, prefetch,
listing, import/export and the CLI. Subclass :class:`BaseBackend` (message voice, lookup patterns,
connection parsing, the checks below), set ``alias`` and ``store_name``, implement the three reads, and
declare what else it does in ``capabilities``. Call sites ask :func:`supports`, never the methods' presence.

Reads (Airflow's contract, always): ``get_conn_value(conn_id, team_name=None) -> str | None``,
``get_variable(key, team_name=None) -> str | None``, ``get_config(key) -> str | None`` (the base answers
``None``). A miss is ``None``. ``get_connection(conn_id, team_name=None) -> Connection | None`` is derived
from ``get_conn_value`` by the base class (parsed with ``connection_format``, else Airflow's URI/JSON rules).

Capabilities (``capabilities: ClassVar[frozenset[Capability]]``), and the methods each one implies
(checked when the class is defined: declaring one without overriding its methods is a ``TypeError``):

- ``"write"``: ``set_connection(conn, *, overwrite=True, serialization="json") -> WriteConfirmation | None``,
  ``set_variable(key, value, *, overwrite=True) -> WriteConfirmation | None``,
  ``delete_connection(conn_id) -> bool`` and
  ``delete_variable(key) -> bool`` (True if something was deleted). This is the ONE write signature: no
  other per-call options. ``serialization`` (:data:`Serialization`, "json" or "uri") is how a string store
  keeps a connection: honour it with ``self.serialize_connection(conn, serialization)`` (which applies the
  backend's ``connection_format`` first); a structured store accepts and ignores it. A team-scoped store
  may add ``team_name: str | None = None`` (the owner), as its reads do. ``overwrite=False`` on an
  existing id raises :class:`~credpath.errors.ConfigError` naming the id. A write returns a
  :class:`WriteConfirmation` when the store's answer proves it kept this write (Vault KV v2's new
  ``version``, Secrets Manager's ``VersionId``), else ``None`` (callers that ignore it are unaffected):
  ``credpath migrate`` verifies a confirmed write without reading it back. Store behaviour (Azure's
  ``on_deleted``, Vault's ``soft_delete``, ...) is a constructor setting, never a write argument.
- ``"list"``: ``list_connections() -> list[str]`` and ``list_variables() -> list[str]``: sorted ids under
  the backend's prefix (lookup patterns applied). Needed to be a migration source and to be exported.
- ``"batch"``: ``get_conn_values(ids) -> dict[str, str]`` and ``get_variables(keys) -> dict[str, str]``:
  hits only, one or a few store calls (``team_name`` keyword where the reads scope by team).
- ``"prefetch"``: ``prefetch_connections() -> dict[str, str]`` and ``prefetch_variables()``: every value
  under the backend's prefix (``credpath prefetch --prefix``).
- ``"structured"``: the store keeps connection FIELDS (``description`` and what a URI cannot carry), not
  one string: ``get_connection`` is overridden to return them natively and, with ``"batch"``,
  ``get_connections(ids) -> dict[str, Connection]``. Where the store keeps variable descriptions, override
  ``get_variable_record(key)`` / ``get_variable_records(keys)`` too (the base class derives them without
  descriptions from ``get_variable`` / ``get_variables``).

- ``"versions"``: the store keeps every version of a secret and reads one on request (a pinned read):
  ``get_conn_value_version(conn_id, version)`` and ``get_variable_version(key, version)`` (``team_name``
  keyword as the plain reads), ``accepts_version(version) -> bool`` (whether ``version`` is a form this
  store names versions with: a miss for any other form, without a call) and ``version_form``, those forms in
  words. A version that does not exist is a miss (None); a version found reports its version
  (:func:`credpath._lookup.trace.note_version`) like a plain read does. ``version_moves(version)`` is True
  for a label that moves to another version on rotation (a Secrets Manager stage): such a read is never
  cached. :class:`PinnedReads` implements the reads over the plain ones: a backend then reads
  :func:`pinned_version` in its one store request.

Rotation capabilities. Each costs store requests or a stream, so each is switched on per instance by a
constructor setting, off by default (:data:`CAPABILITY_SETTINGS`; the class must take it, checked at
definition); :func:`enabled` is "declared and switched on", which is what the search path asks:

- ``"version_check"`` (setting ``version_check``): ``check_version(kind, key, team_name, version) ->
  VersionCheck | None`` (:class:`credpath._lookup.trace.VersionCheck`): whether ``version``, as a read
  reported it, is still the store's current one, from the store's metadata (never the value). At expiry the
  search path asks it first and serves an unchanged value for another TTL without reading it; None: cannot
  tell (the value is read).
- ``"change_events"`` (setting ``watch``): ``subscribe_changes(changed) -> bool``: start telling
  ``changed(backend name, ids or None, a test of an id or None, new version or None)`` about every change
  the store reports (ids None: anything may have changed); returns whether it listens. The search path
  drops what its tiers hold of the changed ids.
- ``"rotation_dates"`` (setting ``cap_at_rotation``): reads report when their value will change
  (:func:`credpath._lookup.trace.note_valid_until`, e.g. a rotation date): no tier serves the value past
  it. A batch or prefix answer that carries no date is then served, not cached.

A class that defines ``check_version`` or ``subscribe_changes`` without declaring its capability is
refused too: the search path would never call it.

Without ``"batch"`` the reader (:mod:`credpath._reading`) reads one id at a time; without ``"list"`` a
backend cannot be a migration source; without ``"write"`` it is never written to.

Errors: a miss is ``None``, never an exception. A wrong setting, a missing client library
(:class:`~credpath.errors.MissingDependency`), a wrong key or a malformed stored value raises
:class:`~credpath.errors.ConfigError` (propagates through the search path); an authoritative refusal raises
:class:`~credpath.errors.AccessDenied` (propagates, never retried); anything else that goes wrong raises
:class:`~credpath.errors.BackendError` or a subclass (``BackendTimeout`` for a blown deadline): the
search path applies ``on_error``, retries, its circuit breaker and stale-if-error. Build them with
``self.error(msg)`` / ``self.config_error(msg)`` so every message reads "backend 'NAME' (Store): msg";
name ids and settings, never a value.

Multi-team (Airflow 3.2+, AIP-67): ``team_name`` is the team of the caller (``None``: no team). A backend
that scopes by team declares the keyword on its reads (and batch reads); the search path passes it only to
methods that declare ``team_name`` or ``**kwargs`` (:func:`call_backend_method`, Airflow's rule in
``airflow/_shared/secrets_backend/base.py``), so pre-3.2 style backends keep working and answer globally.

Also optional (always present on the base class): ``prepare()`` (one-time start-up without network, timed
apart by ``explain``), ``check() -> str`` (reachability and auth; a short safe description), ``close()``,
``describe()``, and the class attributes ``cache_results`` (False: never cached), ``requires``/``extra``
(a missing client is reported with its pip extra) and ``keeps_variable_descriptions`` (``set_variable``
takes ``description=`` and migrations copy it).

A foreign, Airflow-style object (no credpath base class, the three reads only: :class:`SecretsBackend`)
is accepted everywhere a :data:`Backend` is; :func:`supports` alone looks at its methods.
"""

from __future__ import annotations

import contextvars
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    ClassVar,
    Literal,
    Protocol,
    TypeAlias,
    TypedDict,
    Unpack,
    get_args,
    runtime_checkable,
)

from credpath.errors import BackendError, ConfigError, MissingDependency, ReadOnlyBackend

if TYPE_CHECKING:
    from credpath._lookup.trace import VersionCheck
    from credpath.model import Connection, Variable

__all__ = [
    "CAPABILITIES",
    "CAPABILITY_METHODS",
    "CAPABILITY_SETTINGS",
    "KINDS",
    "PREFIX_SETTINGS",
    "Backend",
    "BackendOptions",
    "BaseBackend",
    "Capability",
    "Kind",
    "PinnedReads",
    "SecretsBackend",
    "Serialization",
    "WriteConfirmation",
    "accepts_team_name",
    "call_backend_method",
    "check_capabilities",
    "compile_lookup_pattern",
    "enabled",
    "iter_ids",
    "multi_team_enabled",
    "pinned_version",
    "required_methods",
    "supports",
]

Kind = Literal["connection", "variable", "config"]
KINDS: tuple[Kind, ...] = ("connection", "variable", "config")
#: The Airflow setting that holds each kind's prefix (the one kind-to-setting map, for messages).
PREFIX_SETTINGS: dict[Kind, str] = {
    "connection": "connections_prefix",
    "variable": "variables_prefix",
    "config": "config_prefix",
}

#: What a backend declares it can do beyond the three reads (``BaseBackend.capabilities``):
#: "write" (set/delete of connections and variables), "list" (``list_connections``/``list_variables``),
#: "batch" (``get_conn_values``/``get_variables``, hits only), "prefetch" (``prefetch_connections``/
#: ``prefetch_variables``: everything under the prefix), "structured" (connections are kept as fields, so
#: ``get_connection`` -- and with "batch" ``get_connections`` -- return them natively, with what a URI cannot
#: carry such as ``description``; a write's ``serialization`` does not apply), "versions" (a read of one
#: version the store keeps: ``get_conn_value_version``/``get_variable_version``, a pinned read), and the
#: rotation capabilities, each switched on by a setting (:data:`CAPABILITY_SETTINGS`): "version_check"
#: (``check_version``: is a cached version still current), "change_events" (``subscribe_changes``: the
#: store's change stream), "rotation_dates" (reads report when their value changes).
Capability = Literal[
    "write",
    "list",
    "batch",
    "prefetch",
    "structured",
    "versions",
    "version_check",
    "change_events",
    "rotation_dates",
]
CAPABILITIES: tuple[Capability, ...] = get_args(Capability)  # in declaration order
#: How a string store keeps a connection: Airflow's JSON form or its URI.
Serialization = Literal["json", "uri"]


@dataclass(frozen=True)
class WriteConfirmation:
    """What a store answered when it accepted a write: the version it now keeps (Vault KV v2's
    ``version``, Secrets Manager's ``VersionId``). A version is returned only for a write the store
    applied, so it verifies the write without reading it back. Carries no value."""

    version: str


@runtime_checkable
class SecretsBackend(Protocol):
    """An Airflow-style "roll your own" backend: the three reads, no credpath base class."""

    def get_conn_value(self, conn_id: str) -> str | None: ...

    def get_variable(self, key: str) -> str | None: ...

    def get_config(self, key: str) -> str | None: ...


_ACCEPTS_TEAM: dict[Any, bool] = {}


def accepts_team_name(method: Callable[..., Any]) -> bool:
    """Airflow's ``_accepts_team_name``: the method declares ``team_name`` or a ``**kwargs`` catch-all.

    Cached per function (not per bound method), so the inspection runs once per backend class.
    """
    func = getattr(method, "__func__", method)
    try:
        return _ACCEPTS_TEAM[func]
    except (KeyError, TypeError):
        pass
    try:
        parameters = inspect.signature(method).parameters
        accepts = "team_name" in parameters or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
        )
    except (TypeError, ValueError):
        accepts = True  # un-introspectable (C-implemented): assume the 3.2+ signature, as Airflow does
    try:
        _ACCEPTS_TEAM[func] = accepts
    except TypeError:
        pass
    return accepts


def call_backend_method(method: Callable[..., Any], *args: Any, team_name: str | None = None) -> Any:
    """Call a read method, passing ``team_name`` only when it is set and the method accepts it.

    As in Airflow, a ``TypeError`` raised inside an accepting method propagates (it is not retried without
    ``team_name``, which could resolve a team's lookup in the global scope). Unlike Airflow,
    ``team_name=None`` is not passed at all: the same answer, and a legacy ``**kwargs`` method is not
    handed a keyword it never expected.
    """
    if team_name is not None and accepts_team_name(method):
        return method(*args, team_name=team_name)
    return method(*args)


def compile_lookup_pattern(pattern: str | None, setting: str) -> re.Pattern[str] | None:
    """Airflow semantics: ``re.match(pattern, id, re.IGNORECASE)``, anchored at the start only."""
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise ConfigError(f"{setting} must be a regular expression string, got {type(pattern).__name__}")
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ConfigError(f"{setting} is not a valid regular expression: {exc}") from None


def multi_team_enabled() -> bool:
    """Airflow's ``[core] multi_team`` (3.2+): Airflow's own setting when Airflow is loaded, else
    ``AIRFLOW__CORE__MULTI_TEAM`` (t/true/1 is on). Airflow is never imported for this."""
    configuration = sys.modules.get("airflow.configuration")
    conf = getattr(configuration, "conf", None)
    if conf is not None:
        try:
            return bool(conf.getboolean("core", "multi_team", fallback=False))
        except Exception:  # an Airflow half-initialised or too old to know the option: its environment
            pass
    return os.environ.get("AIRFLOW__CORE__MULTI_TEAM", "").strip().lower() in ("t", "true", "1")


class BackendOptions(TypedDict, total=False):
    """What every credpath backend takes besides its store's own kwargs; subclasses accept them as
    ``**options: Unpack[BackendOptions]`` and pass them on to ``BaseBackend.__init__``."""

    connections_lookup_pattern: str | None
    variables_lookup_pattern: str | None
    config_lookup_pattern: str | None
    connection_format: str | dict[str, Any] | None


class BaseBackend:
    """Shared plumbing for credpath's own backends: lookup patterns, naming, connection parsing.

    Subclasses set ``alias`` and implement the three reads; everything else is optional.
    """

    alias: ClassVar[str] = ""
    #: What this backend does beyond the three reads (see :data:`Capability`); call sites ask
    #: :func:`supports`, never the methods' presence.
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    #: Human name of the store, for messages ("HashiCorp Vault").
    store_name: ClassVar[str] = ""
    #: Modules the store's client needs, and the extra that installs them: checked (never imported) by
    #: ``registry.create_backend`` so a missing client is a one-line "pip install 'credpath[extra]'".
    requires: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None
    #: The distribution whose extra installs them (a third-party backend names its own package).
    distribution: ClassVar[str] = "credpath"
    #: False for stores whose reads cost microseconds and may change under the process (environment
    #: variables, a re-read file): the search path then never serves them from its cache.
    cache_results: ClassVar[bool] = True
    #: True for stores that keep a variable's description: ``set_variable`` then takes
    #: ``description: str | None = None`` (keyword) and a migration copies descriptions into it.
    keeps_variable_descriptions: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_capabilities(cls)

    # The configured name ("prod-sm"), set by the registry before ``__init__`` runs, so that even
    # construction errors name the backend the user wrote; defaults to the alias.
    @property
    def name(self) -> str:
        return self.__dict__.get("_name") or self.alias or type(self).__name__

    @name.setter
    def name(self, value: str) -> None:
        self.__dict__["_name"] = value

    @property
    def label(self) -> str:
        """How every message names this backend: ``backend 'prod-sm' (AWS Secrets Manager)``."""
        store = self.store_name or self.alias or type(self).__name__
        return f"backend {self.name!r} ({store})"

    def error(self, message: str, cls: type[BackendError] = BackendError) -> BackendError:
        """A BackendError (or subclass) in the one voice: ``<label>: <message>``, carrying the name."""
        return cls(f"{self.label}: {message}", backend=self.name)

    def config_error(self, message: str) -> ConfigError:
        """A ConfigError in the same voice (a setting of this backend is wrong)."""
        return ConfigError(f"{self.label}: {message}")

    @classmethod
    def missing_dependency(cls, name: str | None = None) -> MissingDependency | None:
        """The error for the first module of ``requires`` that is not installed, else None."""
        import importlib.util

        for module in cls.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                hint = f": pip install '{cls.distribution}[{cls.extra}]'" if cls.extra else ""
                return MissingDependency(
                    f"backend {name or cls.alias or cls.__name__!r} needs {module.split('.')[0]}{hint}",
                    module=module,
                )
        return None

    def __init__(self, **options: Unpack[BackendOptions]) -> None:
        unknown = sorted(set(options) - set(BackendOptions.__annotations__))
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}")
        connections_lookup_pattern = options.get("connections_lookup_pattern")
        variables_lookup_pattern = options.get("variables_lookup_pattern")
        config_lookup_pattern = options.get("config_lookup_pattern")
        connection_format = options.get("connection_format")
        self.lookup_patterns: dict[Kind, re.Pattern[str] | None] = {
            "connection": compile_lookup_pattern(connections_lookup_pattern, "connections_lookup_pattern"),
            "variable": compile_lookup_pattern(variables_lookup_pattern, "variables_lookup_pattern"),
            "config": compile_lookup_pattern(config_lookup_pattern, "config_lookup_pattern"),
        }
        self.connection_format = connection_format
        self._connection_adapter: Any = None
        if connection_format is not None:
            from credpath._adapters import build_adapter

            self._connection_adapter = build_adapter(connection_format)

    # --- lookup patterns ---------------------------------------------------------------------------

    def wants(self, kind: Kind, key: str) -> bool:
        pattern = self.lookup_patterns.get(kind)
        return pattern is None or pattern.match(key) is not None

    # --- reads -------------------------------------------------------------------------------------

    def get_conn_value(self, conn_id: str) -> str | None:  # pragma: no cover - abstract
        """The raw value, or None. Backends that scope by team add ``team_name: str | None = None``."""
        raise NotImplementedError

    def get_variable(self, key: str) -> str | None:  # pragma: no cover - abstract
        """The value, or None. Backends that scope by team add ``team_name: str | None = None``."""
        raise NotImplementedError

    def get_config(self, key: str) -> str | None:
        return None

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        """``get_conn_value`` parsed; ``team_name`` is passed on if ``get_conn_value`` accepts it."""
        raw = call_backend_method(self.get_conn_value, conn_id, team_name=team_name)
        if raw is None:
            return None
        return self.deserialize_connection(conn_id, raw)

    def get_variable_record(self, key: str, team_name: str | None = None) -> Variable | None:
        """The variable with its description; the default has none (structured stores override it)."""
        value = call_backend_method(self.get_variable, key, team_name=team_name)
        if value is None:
            return None
        from credpath.model import Variable

        return Variable(key, value)

    def get_variable_records(self, keys: list[str], *, team_name: str | None = None) -> dict[str, Variable]:
        """Hits among ``keys`` with descriptions; the default wraps ``get_variables`` ("batch") or reads
        one key at a time, without descriptions (structured stores override it)."""
        from credpath.model import Variable

        if "batch" in type(self).capabilities:
            values = call_backend_method(self.get_variables, keys, team_name=team_name)  # type: ignore[attr-defined]
            return {key: Variable(key, value) for key, value in values.items()}
        found = {key: self.get_variable_record(key, team_name=team_name) for key in keys}
        return {key: record for key, record in found.items() if record is not None}

    def deserialize_connection(self, conn_id: str, value: str) -> Connection:
        from credpath.model import Connection

        if self._connection_adapter is not None:
            conn: Connection = self._connection_adapter(conn_id, value)
            return conn
        return Connection.from_value(value, conn_id=conn_id)

    def serialize_connection(self, conn: Connection, serialization: Serialization = "json") -> str:
        """The string a store keeps for ``conn``: its ``connection_format``, else the URI or JSON form."""
        if self._connection_adapter is not None:
            text: str = self._connection_adapter.to_value(conn)
            return text
        if serialization == "json":
            return conn.to_json()
        if serialization == "uri":
            return conn.get_uri()
        raise self.config_error(f"serialization must be 'uri' or 'json', got {serialization!r}")

    # --- "write": defaults say "not supported" (declare "write" and override all four) -------------------

    def _unsupported(self, operation: str) -> ReadOnlyBackend:
        return ReadOnlyBackend(f"{self.label} cannot {operation}")

    def set_connection(
        self, conn: Connection, *, overwrite: bool = True, serialization: Serialization = "json"
    ) -> WriteConfirmation | None:
        raise self._unsupported("write connections")

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> WriteConfirmation | None:
        raise self._unsupported("write variables")

    def delete_connection(self, conn_id: str) -> bool:
        raise self._unsupported("delete connections")

    def delete_variable(self, key: str) -> bool:
        raise self._unsupported("delete variables")

    # --- "versions": defaults refuse in one line naming the backend (never the latest instead) ---------

    #: The version forms this store takes, in words, for the message when no backend takes a version.
    version_form: ClassVar[str] = ""

    def _no_versions(self, version: str) -> ConfigError:
        return self.config_error(f"keeps no versions, so version {version!r} cannot be read from it")

    def get_conn_value_version(self, conn_id: str, version: str) -> str | None:
        raise self._no_versions(version)

    def get_variable_version(self, key: str, version: str) -> str | None:
        raise self._no_versions(version)

    def get_connection_version(
        self, conn_id: str, version: str, team_name: str | None = None
    ) -> Connection | None:
        """``get_conn_value_version`` parsed (a store of fields overrides it, as ``get_connection``)."""
        raw = call_backend_method(self.get_conn_value_version, conn_id, version, team_name=team_name)
        return None if raw is None else self.deserialize_connection(conn_id, raw)

    def accepts_version(self, version: str) -> bool:
        """Whether ``version`` is a form this store names versions with (see ``version_form``)."""
        return False

    def version_moves(self, version: str) -> bool:
        """True for a label that the store moves to another version (a rotation stage): never cached."""
        return False

    # --- rotation capabilities: defaults that never run (declare the capability and override) --------------

    def check_version(self, kind: Kind, key: str, team_name: str | None, version: str) -> VersionCheck | None:
        """ "version_check": whether ``version`` is still the store's current one (None: cannot tell)."""
        return None

    def subscribe_changes(self, changed: Callable[..., None]) -> bool:
        """ "change_events": tell ``changed`` about the store's changes; returns whether it listens."""
        return False

    def prepare(self) -> None:
        """One-time start-up without contacting the store: import the client, build the session or engine.

        The search path calls it before timing a lookup, so ``explain`` reports start-up and lookup apart.
        Idempotent and cheap after the first call.
        """

    def use_shared_state(self, state: Any) -> None:
        """With a shared cache tier the search path hands each backend a shared-state handle
        (``credpath._shared_cache.SharedState``: get/put with a TTL) for non-secret facts every process
        would rediscover (a Vault KV version)."""

    def check(self) -> str:
        """Reachability/auth check for ``credpath backends check``; raise BackendError on failure."""
        return "ok"

    def close(self) -> None:
        """Release clients and sessions."""

    def describe(self) -> str:
        """A one-line description safe to print (no tokens, no passwords)."""
        return self.alias or type(self).__name__

    def lease_detail(self, conn_id: str) -> str | None:
        """For a lease source: the lease behind ``conn_id`` (id prefix, TTL left, renewals; never a
        secret), shown by ``explain``. None for stores that hand out stored values."""
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


#: The methods each capability implies (see the module docstring).
CAPABILITY_METHODS: dict[Capability, tuple[str, ...]] = {
    "write": ("set_connection", "set_variable", "delete_connection", "delete_variable"),
    "list": ("list_connections", "list_variables"),
    "batch": ("get_conn_values", "get_variables"),
    "prefetch": ("prefetch_connections", "prefetch_variables"),
    "structured": ("get_connection",),
    "versions": ("get_conn_value_version", "get_variable_version", "accepts_version"),
    "version_check": ("check_version",),
    "change_events": ("subscribe_changes",),
    "rotation_dates": (),  # the plain reads report the date (note_valid_until)
}
#: The constructor setting that switches a capability on per instance (off by default: each costs store
#: requests or a stream). A class declaring the capability must take it (its own or an inherited
#: ``__init__``); :func:`enabled` reads it.
CAPABILITY_SETTINGS: dict[Capability, str] = {
    "version_check": "version_check",
    "change_events": "watch",
    "rotation_dates": "cap_at_rotation",
}
#: Methods only the search path calls: defining one without declaring its capability is refused (it
#: would never be called).
_HOOKS: dict[str, Capability] = {"check_version": "version_check", "subscribe_changes": "change_events"}


def required_methods(capabilities: Iterable[Capability]) -> list[str]:
    """The methods a class declaring ``capabilities`` must implement (override, for BaseBackend's)."""
    declared = set(capabilities)
    methods = [m for c in CAPABILITIES if c in declared for m in CAPABILITY_METHODS[c]]
    if {"structured", "batch"} <= declared:
        methods.append("get_connections")
    return methods


def check_capabilities(cls: type) -> None:
    """Raise TypeError if ``cls`` declares an unknown capability or one whose methods it does not
    override (a BaseBackend default that refuses, or no method at all). Run for every BaseBackend
    subclass when it is defined, so a wrong declaration fails at import, not at the first migration."""
    declared: frozenset[Capability] = getattr(cls, "capabilities", frozenset())
    unknown = sorted(str(c) for c in declared if c not in CAPABILITIES)
    if unknown:
        raise TypeError(
            f"{cls.__qualname__}.capabilities: unknown capability {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(CAPABILITIES)}"
        )
    missing = [
        m
        for m in required_methods(declared)
        if not callable(getattr(cls, m, None)) or getattr(cls, m) is getattr(BaseBackend, m, None)
    ]
    if missing:
        raise TypeError(
            f"{cls.__qualname__} declares capabilities {', '.join(sorted(declared))} but does not implement "
            f"{', '.join(missing)} (see credpath.protocol for the methods each capability implies)"
        )
    _check_rotation_capabilities(cls, declared)


def _check_rotation_capabilities(cls: type, declared: frozenset[Capability]) -> None:
    """The rotation capabilities' two more rules: the class takes the setting that switches each on, and
    defines no hook the search path calls without declaring its capability (it would never be called)."""
    for capability in sorted(declared & CAPABILITY_SETTINGS.keys()):
        setting = CAPABILITY_SETTINGS[capability]
        if not any(setting in _init_parameters(c) for c in cls.__mro__):
            raise TypeError(
                f"{cls.__qualname__} declares capability {capability!r} but its constructor takes no "
                f"{setting!r}, the setting that switches it on"
            )
    for method, capability in _HOOKS.items():
        if method in vars(cls) and capability not in declared:
            raise TypeError(
                f"{cls.__qualname__} defines {method} but does not declare capability {capability!r}: "
                "declare it, or the search path never calls it"
            )


def _init_parameters(cls: type) -> Iterable[str]:
    init = vars(cls).get("__init__")
    if init is None:
        return ()
    try:
        return inspect.signature(init).parameters
    except (TypeError, ValueError):
        return ()


#: What every call site takes: a credpath backend, or a foreign Airflow-style object with the three reads.
Backend: TypeAlias = "BaseBackend | SecretsBackend"


def supports(backend: object, capability: Capability) -> bool:
    """Whether ``backend`` can do ``capability``: its declaration for credpath backends (and any class
    that declares ``capabilities``); for a foreign (Airflow-style) object that declares nothing, whether it
    has the capability's methods (for "structured": ``get_connections``, a batch of Connection objects)."""
    if isinstance(backend, BaseBackend):
        return capability in type(backend).capabilities
    declared = getattr(type(backend), "capabilities", None)
    if isinstance(declared, frozenset | set | tuple):
        return capability in declared
    methods = ("get_connections",) if capability == "structured" else CAPABILITY_METHODS[capability]
    return bool(methods) and all(callable(getattr(backend, m, None)) for m in methods)


def enabled(backend: object, capability: Capability) -> bool:
    """Whether ``backend`` declares ``capability`` and, for one switched by a setting
    (:data:`CAPABILITY_SETTINGS`), was configured with it on: what the search path asks, once per backend."""
    if not supports(backend, capability):
        return False
    setting = CAPABILITY_SETTINGS.get(capability)
    return setting is None or getattr(backend, setting, False) is True


#: The version a pinned read asks for, while its store call runs (None: the latest, a plain read).
_PINNED: contextvars.ContextVar[str | None] = contextvars.ContextVar("credpath_pinned", default=None)


def pinned_version() -> str | None:
    """The version the read in progress must return (a pinned read), or None for the latest. A backend
    built on :class:`PinnedReads` reads it where it builds its one store request."""
    return _PINNED.get()


class PinnedReads:
    """The "versions" reads over a backend's plain reads: each runs the plain read with
    :func:`pinned_version` set, so the store request is built in one place for both. A backend that
    mixes this in declares "versions", and implements ``accepts_version`` and ``version_form``."""

    def _pinned(self, read: Callable[..., Any], key: str, version: str, team_name: str | None) -> Any:
        if "versions" not in getattr(type(self), "capabilities", ()):  # a subclass that gave it up
            raise self._no_versions(version)  # type: ignore[attr-defined]
        token = _PINNED.set(version)
        try:
            return call_backend_method(read, key, team_name=team_name)
        finally:
            _PINNED.reset(token)

    def get_conn_value_version(self, conn_id: str, version: str, team_name: str | None = None) -> str | None:
        return self._pinned(self.get_conn_value, conn_id, version, team_name)  # type: ignore[attr-defined, no-any-return]

    def get_variable_version(self, key: str, version: str, team_name: str | None = None) -> str | None:
        return self._pinned(self.get_variable, key, version, team_name)  # type: ignore[attr-defined, no-any-return]

    def get_connection_version(
        self, conn_id: str, version: str, team_name: str | None = None
    ) -> Connection | None:
        return self._pinned(self.get_connection, conn_id, version, team_name)  # type: ignore[attr-defined, no-any-return]


def iter_ids(values: Iterable[str]) -> list[str]:
    return sorted(set(values))
