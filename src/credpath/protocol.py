"""The one small protocol every backend speaks, and a base class with the shared plumbing.

Reads (Airflow's contract): ``get_conn_value(conn_id, team_name=None)``, ``get_variable(key,
team_name=None)``, ``get_config(key)``, each returning the raw string or ``None`` on a miss. A miss is
``None``; anything else that goes wrong raises :class:`credpath.errors.BackendError` (or a subclass) so the
search path can apply ``on_error``; a wrong setting raises :class:`credpath.errors.ConfigError` and an
authoritative refusal :class:`credpath.errors.AccessDenied` (both propagate through the search path).

Multi-team (Airflow 3.2+, AIP-67): ``team_name`` is the team of the caller (``None``: no team). A backend
that scopes by team declares the keyword on its reads (and batch reads); the search path passes it only to
methods that declare ``team_name`` or ``**kwargs`` (:func:`call_backend_method`, Airflow's rule in
``airflow/_shared/secrets_backend/base.py``), so pre-3.2 style backends keep working and answer globally.

Optional capabilities, discovered with ``hasattr``/``getattr`` by the search path, CLI and migration:

- writes: ``set_connection(conn, *, overwrite=True)``, ``set_variable(key, value, *, overwrite=True)``,
  ``delete_connection(conn_id) -> bool``, ``delete_variable(key) -> bool``;
- listing: ``list_connections() -> list[str]``, ``list_variables() -> list[str]`` (ids, sorted);
- batches: ``get_conn_values(ids) -> dict[str, str]`` and ``get_variables(keys) -> dict[str, str]``
  (hits only), ``prefetch_connections() -> dict[str, str]`` / ``prefetch_variables()`` (everything under
  the backend's prefix, for cache warm-up);
- ``get_connection(conn_id, team_name=None) -> Connection | None`` for backends that hold structured
  connections (``description``, non-Airflow formats); the base class derives it from ``get_conn_value``;
- ``check() -> str`` (reachability and auth; returns a short safe description) and ``close()``;
- ``prepare()`` (one-time start-up without network, timed apart by ``explain``) and the ``cache_results``
  class attribute (False: the search path never caches this backend's answers).

Writes with ``overwrite=False`` raise :class:`credpath.errors.ConfigError` if the id exists.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypedDict, Unpack, runtime_checkable

from credpath.errors import BackendError, ConfigError, MissingDependency, ReadOnlyBackend

if TYPE_CHECKING:
    from credpath.model import Connection

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
#: carry such as ``description``; a write's ``serialization`` does not apply).
Capability = Literal["write", "list", "batch", "prefetch", "structured"]
CAPABILITIES: tuple[Capability, ...] = ("write", "list", "batch", "prefetch", "structured")
#: How a string store keeps a connection: Airflow's JSON form or its URI.
Serialization = Literal["json", "uri"]


@runtime_checkable
class SecretsBackend(Protocol):
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
            from credpath.adapters import build_adapter  # issue 5; absent until then

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

    def deserialize_connection(self, conn_id: str, value: str) -> Connection:
        from credpath.model import Connection

        if self._connection_adapter is not None:
            return self._connection_adapter(conn_id, value)
        return Connection.from_value(value, conn_id=conn_id)

    def serialize_connection(self, conn: Connection, serialization: str = "json") -> str:
        """The string a store keeps for ``conn``: its ``connection_format``, else the URI or JSON form."""
        if self._connection_adapter is not None:
            return self._connection_adapter.to_value(conn)
        if serialization == "json":
            return conn.to_json()
        if serialization == "uri":
            return conn.get_uri()
        raise self.config_error(f"serialization must be 'uri' or 'json', got {serialization!r}")

    # --- optional capabilities: defaults say "not supported" ----------------------------------------

    def _unsupported(self, operation: str) -> ReadOnlyBackend:
        return ReadOnlyBackend(f"{self.label} cannot {operation}")

    def set_connection(self, conn: Connection, *, overwrite: bool = True) -> None:
        raise self._unsupported("write connections")

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
        raise self._unsupported("write variables")

    def delete_connection(self, conn_id: str) -> bool:
        raise self._unsupported("delete connections")

    def delete_variable(self, key: str) -> bool:
        raise self._unsupported("delete variables")

    def prepare(self) -> None:
        """One-time start-up without contacting the store: import the client, build the session or engine.

        The search path calls it before timing a lookup, so ``explain`` reports start-up and lookup apart.
        Idempotent and cheap after the first call.
        """

    def use_shared_state(self, state: Any) -> None:
        """With a shared cache tier the search path hands each backend a ``credpath.shared_cache.SharedState``
        (get/put with a TTL) for non-secret facts every process would rediscover (a Vault KV version)."""

    def check(self) -> str:
        """Reachability/auth check for ``credpath backends check``; raise BackendError on failure."""
        return "ok"

    def close(self) -> None:
        """Release clients and sessions."""

    def describe(self) -> str:
        """A one-line description safe to print (no tokens, no passwords)."""
        return self.alias or type(self).__name__

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


_FOREIGN_CAPABILITY_METHODS: dict[Capability, tuple[str, ...]] = {
    "write": ("set_connection", "set_variable", "delete_connection", "delete_variable"),
    "list": ("list_connections", "list_variables"),
    "batch": ("get_conn_values", "get_variables"),
    "prefetch": ("prefetch_connections", "prefetch_variables"),
    "structured": ("get_connections",),
}


def supports(backend: object, capability: Capability) -> bool:
    """Whether ``backend`` can do ``capability``: its declaration for credpath backends; for a foreign
    (Airflow-style) object that declares nothing, whether it has the capability's methods."""
    if isinstance(backend, BaseBackend):
        return capability in type(backend).capabilities
    declared = getattr(type(backend), "capabilities", None)
    if isinstance(declared, frozenset | set | tuple):
        return capability in declared
    return all(callable(getattr(backend, m, None)) for m in _FOREIGN_CAPABILITY_METHODS[capability])


def can(backend: object, operation: str) -> bool:
    """True if ``backend`` really implements ``operation`` (not BaseBackend's 'unsupported' default)."""
    method = getattr(type(backend), operation, None)
    if method is None:
        return False
    return getattr(BaseBackend, operation, None) is not method


def iter_ids(values: Iterable[str]) -> list[str]:
    return sorted(set(values))
