"""Drop-in secrets backend for Apache Airflow 3.3: one custom backend that serves credpath's search path.

Configure it with Airflow's own settings::

    AIRFLOW__SECRETS__BACKEND=credpath.airflow.CredpathBackend
    AIRFLOW__SECRETS__BACKEND_KWARGS={"config": "/etc/credpath/credpath.toml"}
    # or inline, in the shape of the config file:
    AIRFLOW__SECRETS__BACKEND_KWARGS={"backends": [{"type": "vault", "kwargs": {...}}], "cache": {"ttl": 600}}

``[workers] secrets_backend`` / ``secrets_backend_kwargs`` (the Task SDK path) take the same values.
Airflow keeps its environment-variable and metastore backends after this one, so nothing a deployment
already had stops working.

Per-key overrides (``AIRFLOW__SECRETS__BACKEND_KWARG__<KEY>`` and the ``[workers]`` spelling
``AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__<KEY>``) are applied by Airflow to this class's own kwargs;
a key that is not one of them goes to the one nested backend that takes it (``..._KWARG__TOKEN`` -> the
Vault backend's ``token``), or to a named one with ``..._KWARG__<BACKEND NAME>__<KEY>``.
Multi-team (Airflow 3.2+): ``team_name`` is passed on to the search path.

The nested backends are started (client imported, session built, no network) when Airflow builds this
backend, so forked task processes inherit them instead of paying the imports again.

Airflow is imported lazily: ``import credpath.airflow`` works without Airflow installed, and the
``CredpathBackend`` class is built (subclassing Airflow's ``BaseSecretsBackend``) on first access.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from credpath.errors import AccessDenied, ConfigError
from credpath.model import is_sensitive_name

if TYPE_CHECKING:
    from credpath._search_path import SearchPath
    from credpath._settings import BackendSpec
    from credpath.model import Connection
    from credpath.protocol import Kind

__all__ = ["CLASS_PATH", "CredpathBackend", "register_with_airflow_masker", "reset", "search_path_for"]


log = logging.getLogger("credpath.airflow")

CLASS_PATH = "credpath.airflow.CredpathBackend"
_ACCEPTED_KWARGS = ("backends", "cache", "config")
# Settings that would make credpath's default config load this very class again (endless recursion).
_AIRFLOW_SELF_SETTINGS = (
    "AIRFLOW__SECRETS__BACKEND",
    "AIRFLOW__SECRETS__BACKEND_KWARGS",
    "AIRFLOW__WORKERS__SECRETS_BACKEND",
    "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS",
    "AIRFLOW__SECRETS__BACKENDS_ORDER",
    "AIRFLOW__WORKERS__BACKENDS_ORDER",
)
_AIRFLOW_SELF_PREFIXES = ("AIRFLOW__SECRETS__BACKEND_KWARG__", "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARG__")

# One search path per distinct configuration per process: Airflow builds a new backend instance for
# every `conf` secret lookup and per process role, and each would otherwise log in and cache on its own.
_search_paths: dict[str, SearchPath] = {}
_search_paths_lock = threading.Lock()


def _settings_origin() -> str:
    # The same kwargs come from [secrets] backend_kwargs or [workers] secrets_backend_kwargs.
    return f"{CLASS_PATH} kwargs"


def _canonical_key(kwargs: Mapping[str, Any]) -> str:
    try:
        return json.dumps(kwargs, sort_keys=True, default=str)
    except (TypeError, ValueError):
        raise ConfigError(f"{_settings_origin()} must be JSON-like data") from None


def _build_search_path(
    config: str | os.PathLike[str] | None,
    backends: list[dict[str, Any]] | None,
    cache: dict[str, Any] | None,
    env: Mapping[str, str],
    overrides: Mapping[str, tuple[str, Any]] | None = None,
) -> SearchPath:
    from credpath._settings import build_search_path, load_drop_in_settings

    # Without Airflow's own secrets settings, credpath's Airflow-default path can never point back at this
    # class, and Airflow applies its backends order around this backend itself.
    clean_env = {
        k: v
        for k, v in env.items()
        if k not in _AIRFLOW_SELF_SETTINGS and not k.startswith(_AIRFLOW_SELF_PREFIXES)
    }
    settings = load_drop_in_settings(_settings_origin(), config, backends, cache, clean_env)
    for spec in settings.backends:
        if spec.type == CLASS_PATH or spec.type.endswith(".airflow.CredpathBackend"):
            raise ConfigError(f"{spec.origin}: {CLASS_PATH} cannot be one of its own backends")
    if overrides:
        settings = settings.replace(backends=tuple(route_overrides(list(settings.backends), overrides)))
    path = build_search_path(settings)
    from credpath import _audit

    _audit.setup(settings.config_file, clean_env, default_file=False)  # [audit] of the file it read
    _prepare(path)
    return path


# --- per-key overrides (AIRFLOW__SECRETS__BACKEND_KWARG__<KEY>) ------------------------------------


def override_settings(unknown: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """Which of ``unknown`` came from Airflow's per-key kwarg overrides: {key: (env var name, value)}.

    Airflow lower-cases the part after the prefix and passes the raw string; the environment names the
    setting (for messages, never the value).
    """
    found: dict[str, tuple[str, Any]] = {}
    for name, value in env.items():
        for prefix in _AIRFLOW_SELF_PREFIXES:
            if name.startswith(prefix):
                key = name[len(prefix) :].lower()
                if key in unknown and unknown[key] == value and key not in found:
                    found[key] = (name, unknown[key])
    return found


def _env_spelling(name: str) -> str:
    """A backend name as it can appear in an environment variable name (lower case, ``_`` for others)."""
    return re.sub(r"[^0-9a-z]", "_", name.lower())


def accepted_kwargs(type_name: str) -> frozenset[str]:
    """The kwargs a backend type declares by name (a ``**kwargs`` catch-all declares nothing)."""
    from credpath.protocol import BaseBackend
    from credpath.registry import declared_options, load_class, resolve_type

    _, class_path = resolve_type(type_name)
    try:
        cls = load_class(class_path)
        params = inspect.signature(cls).parameters.values()
    except (ConfigError, TypeError, ValueError):
        return frozenset()
    names = {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if issubclass(cls, BaseBackend) and any(p.kind is p.VAR_KEYWORD for p in params):
        names |= set(declared_options(cls))
    return frozenset(names)


def route_overrides(specs: list[BackendSpec], overrides: Mapping[str, tuple[str, Any]]) -> list[BackendSpec]:
    """Apply per-key overrides to the nested backend each is meant for (they win over its kwargs, as in
    Airflow): ``<key>`` when exactly one backend takes it, ``<backend name>__<key>`` for a named one."""
    specs = list(specs)
    origin = _settings_origin()
    by_env_name = {_env_spelling(spec.name): index for index, spec in enumerate(specs)}
    for key, (setting, value) in sorted(overrides.items()):
        target: tuple[int, str] | None = None
        head, sep, rest = key.partition("__")
        if sep and rest and head in by_env_name:
            target = (by_env_name[head], rest)
        else:
            takers = [i for i, spec in enumerate(specs) if key in accepted_kwargs(spec.type)]
            if len(takers) == 1:
                target = (takers[0], key)
            else:
                prefix = setting[: len(setting) - len(key)]
                if not takers:
                    have = ", ".join(f"{spec.name!r} ({spec.type})" for spec in specs) or "none"
                    raise ConfigError(
                        f"{origin}: {setting} sets kwarg {key!r}, which {CLASS_PATH} does not take and no "
                        f"backend of its search path takes (backends: {have}); set it in the 'kwargs' of "
                        "the backend it is for"
                    )
                names = ", ".join(repr(specs[i].name) for i in takers)
                example = f"{prefix}{_env_spelling(specs[takers[0]].name).upper()}__{key.upper()}"
                raise ConfigError(
                    f"{origin}: {setting} sets kwarg {key!r}, which several backends take ({names}); "
                    f"name the backend, e.g. {example}, or set it in that backend's 'kwargs'"
                )
        index, kwarg = target
        spec = specs[index]
        specs[index] = spec.replace(kwargs={**spec.kwargs, kwarg: value})
        log.debug("credpath: %s applied to backend %r as kwarg %r", setting, spec.name, kwarg)
    return specs


# --- start-up in the process that builds the backend ------------------------------------------------


def _prepare(path: SearchPath) -> None:
    """Import each nested backend's store client and run its no-network start-up now.

    Airflow builds the secrets backend in the supervisor (and the scheduler/API server) before task
    processes are forked: work done here is inherited by every task instead of repeated in each (store
    client stacks are the heaviest imports of a lookup; bench/RESULTS.md).
    """
    if path.mask_logs:
        # credpath's own log masker (it also covers processes whose logs no Airflow masker filters, such
        # as a plain `airflow dags test`) builds its automaton with pyahocorasick on the first secret.
        _import_quietly("ahocorasick")
    for entry in path.entries:
        backend = entry.backend
        for module in getattr(type(backend), "requires", ()):
            try:
                importlib.import_module(module)
            except ImportError:
                pass  # create_backend already reported a missing client; nothing more to do here
        prepare = getattr(backend, "prepare", None)
        if not callable(prepare):
            continue
        try:
            prepare()
        except ConfigError:
            raise  # a wrong setting is a start-up error, as it would be at the first lookup
        except Exception as exc:  # start-up is an optimisation: the first lookup retries it
            log.warning("credpath: start-up of backend %r failed: %s", entry.name, type(exc).__name__)


def _import_quietly(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        pass  # an optional speed-up (credpath._masking falls back to regular expressions)


def search_path_for(
    *,
    config: str | os.PathLike[str] | None = None,
    backends: list[dict[str, Any]] | None = None,
    cache: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, tuple[str, Any]] | None = None,
) -> SearchPath:
    """The process-wide search path for one configuration, built once (no network I/O).

    ``overrides``: {kwarg: (setting, value)} from Airflow's per-key overrides, routed to nested backends.
    """
    key = _canonical_key(
        {
            "config": str(config) if config is not None else None,
            "backends": backends,
            "cache": cache,
            "overrides": {k: v for k, v in sorted((overrides or {}).items())},
        }
    )
    path = _search_paths.get(key)
    if path is None:
        with _search_paths_lock:
            path = _search_paths.get(key)
            if path is None:
                path = _build_search_path(
                    config, backends, cache, os.environ if env is None else env, overrides
                )
                _count_into_airflow_stats(path)
                _search_paths[key] = path
    return path


def _count_into_airflow_stats(path: SearchPath) -> None:
    """Count this search path's store calls and lookups into Airflow's ``Stats`` (StatsD or OpenTelemetry,
    as the deployment configured), in task processes as the plugin does in the API server."""
    try:
        from airflow.sdk.observability.stats import Stats
    except Exception:  # an Airflow without the Task SDK's Stats: nothing to send to
        return
    from credpath import metrics

    metrics.enable(stats=Stats)
    metrics.instrument(path)


#: The ids this process read through credpath, per search path: a failed task drops them from every tier
#: (:mod:`credpath._airflow_refresh`), so its retry reads the stores. A task process reads a handful.
_task_reads: dict[int, tuple[SearchPath, set[tuple[str, str]]]] = {}


def note_read(path: SearchPath, kind: str, key: str) -> None:
    """Remember that this process read ``key`` through ``path`` (connections and variables)."""
    if kind == "config":
        return
    reads = _task_reads.get(id(path))
    if reads is None:
        reads = _task_reads.setdefault(id(path), (path, set()))
    if len(reads[1]) < 10_000:
        reads[1].add((kind, key))


def invalidate_reads() -> int:
    """Drop every id this process read from every tier of its search path (where the search path's
    ``[cache] invalidate_failed_tasks`` allows it); returns how many ids were dropped."""
    from credpath import _audit

    dropped = 0
    for path, reads in list(_task_reads.values()):
        if not path.cache.settings.invalidate_failed_tasks:
            continue
        for kind, key in sorted(reads):
            path.invalidate(kind, key)  # type: ignore[arg-type]
            _audit.record("invalidate", kind, key, "ok", tier="shared", reason="task failed")
            dropped += 1
        reads.clear()
    return dropped


def reset() -> None:
    """Forget the shared search paths (tests, or after changing the configuration)."""
    with _search_paths_lock:
        paths = list(_search_paths.values())
        _search_paths.clear()
    for path in paths:
        path.close()


# --- Airflow's secrets masker -----------------------------------------------------------------------

_masked: set[tuple[str, str, str | None]] = set()
_masked_lock = threading.Lock()


def _in_task_process() -> bool:
    runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    return getattr(runner, "SUPERVISOR_COMMS", None) is not None


def _airflow_masker() -> tuple[str, Callable[..., None]] | None:
    """The masker that filters this process's logs, as (kind, mask function).

    Airflow 3.3 keeps two: the Task SDK's (task processes; its ``mask_secret`` also tells the supervisor,
    which writes the task log) and airflow-core's (the log handlers of the scheduler, API server and CLI).
    Each registration recompiles one regular expression of all known secrets (O(n) per secret), so feeding
    the masker a process does not use would double that cost for nothing.
    """
    if _in_task_process() or "airflow.settings" not in sys.modules:
        try:
            from airflow.sdk.log import mask_secret as sdk_mask_secret
        except ImportError:
            pass
        else:
            return "sdk", sdk_mask_secret
    try:
        from airflow._shared.secrets_masker import mask_secret as core_mask_secret
    except ImportError:
        return None
    return "core", core_mask_secret


def _sdk_masks_what_it_reads(what: str) -> bool:
    """Whether the Task SDK masks what its own lookups return: ``_get_connection`` masks a connection's
    password and extra, ``_get_variable`` a variable's value under its key (Airflow 3.3). In a task process
    those are the only callers of a secrets backend, so registering the same values again would only cost
    one round trip to the supervisor each."""
    context = sys.modules.get("airflow.sdk.execution_time.context")
    return callable(getattr(context, what, None))


def register_with_airflow_masker(values: list[tuple[str, str | None]]) -> None:
    """Register (value, name) pairs once per process and masker; a name lets Airflow's sensitive-name
    rules (including ``[core] sensitive_var_conn_names``) decide. Unnamed values go in one call: in a task
    process each call is a round trip to the supervisor, which masks the task log."""
    values = [item for item in values if item[0]]
    if not values:
        return
    masker = _airflow_masker()
    if masker is None:
        return
    kind, mask = masker
    with _masked_lock:
        new = list(dict.fromkeys(item for item in values if (kind, *item) not in _masked))
        if not new:
            return
        unnamed = [value for value, name in new if name is None]
        calls: list[tuple[Any, str | None]] = [(value, name) for value, name in new if name is not None]
        if unnamed:
            calls.append((unnamed[0] if len(unnamed) == 1 else unnamed, None))
        for value, name in calls:
            try:
                mask(value, name)
            except Exception as exc:  # masking must never break a lookup; say so without the value
                log.warning("could not register a secret with Airflow's masker: %s", type(exc).__name__)
        _masked.update((kind, *item) for item in new)


# --- the backend ------------------------------------------------------------------------------------


class _CredpathBackendMixin:
    """Everything of CredpathBackend except the Airflow base class (kept importable without Airflow)."""

    def __init__(
        self,
        config: str | os.PathLike[str] | None = None,
        backends: list[dict[str, Any]] | None = None,
        cache: dict[str, Any] | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        # Airflow's per-key overrides arrive here as raw strings; the ones meant for nested backends are
        # routed to them, anything else is a key this class does not take.
        overrides = override_settings(unknown, os.environ)
        rest = sorted(k for k in unknown if k not in overrides)
        if rest:
            raise ConfigError(
                f"{_settings_origin()}: unknown key(s) {', '.join(rest)}; "
                f"accepted: {', '.join(_ACCEPTED_KWARGS)}"
            )
        backends = _json_setting("backends", backends)
        cache = _json_setting("cache", cache)
        if backends is not None and not isinstance(backends, list):
            raise ConfigError(f"{_settings_origin()}: 'backends' must be a list of backend tables")
        if cache is not None and not isinstance(cache, dict):
            raise ConfigError(f"{_settings_origin()}: 'cache' must be an object")
        self.search_path: SearchPath = search_path_for(
            config=config, backends=backends, cache=cache, overrides=overrides
        )

    def _resolve(self, kind: Kind, key: str, team_name: str | None = None) -> Any:
        from credpath._cache import ABSENT

        search_path = self.search_path
        cached = search_path.cache.get((kind, key, team_name)) is not ABSENT  # cache keys: (kind, key, team)
        try:
            # team_name only when set: Airflow passes None in single-team deployments, and a roll-your-own
            # search path need not know the keyword.
            resolution = search_path.lookup(
                kind, key, **({} if team_name is None else {"team_name": team_name})
            )
        except AccessDenied as exc:
            # Airflow's only authoritative error: it must not fall through to env or metastore.
            raise _airflow_access_denied()(str(exc)) from None
        # One debug line per resolution: the search path logs the ones it resolves ("resolved connection
        # 'x' from backend 'vault'"); cache hits, which it serves silently, are logged here.
        if cached:
            if resolution is None:
                log.debug("credpath: %s %r not found (cached miss)", kind, key)
            else:
                log.debug("credpath: %s %r from backend %r (cached)", kind, key, resolution.source)
        if resolution is None:
            return None
        note_read(search_path, kind, key)
        return resolution.value

    def _credpath_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        conn: Connection | None = self._resolve("connection", conn_id, team_name)
        self._mask_connection(conn)
        return conn

    def _mask_connection(self, conn: Connection | None) -> None:
        if conn is not None:
            secrets = conn.secret_values()
            if _in_task_process() and _sdk_masks_what_it_reads("_mask_connection_secrets"):
                # The Task SDK masks the password itself; a sensitive extra value only as the whole extra
                # text (or once extra_dejson is read), so that one is still registered here.
                secrets = [secret for secret in secrets if secret != conn.password]
            register_with_airflow_masker([(secret, None) for secret in secrets])

    # team_name: Airflow 3.2+ (AIP-67) passes the task's team to methods that declare it.
    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        conn = self._credpath_connection(conn_id, team_name)
        # JSON, not a URI: it keeps `description` through Airflow's deserialize_connection.
        return None if conn is None else conn.to_json()

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        return self._airflow_connection(conn_id, self._credpath_connection(conn_id, team_name))

    def _airflow_connection(self, conn_id: str, conn: Connection | None) -> Any:
        if conn is None:
            return None
        conn_class = self._get_connection_class()  # type: ignore[attr-defined]
        return conn_class(
            conn_id=conn_id,
            conn_type=conn.conn_type,
            description=conn.description,
            host=conn.host,
            login=conn.login,
            password=conn.password,
            schema=conn.schema,
            port=conn.port,
            extra=conn.extra,
        )

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        return self._mask_variable(key, self._resolve("variable", key, team_name))

    def _mask_variable(self, key: str, value: str | None) -> str | None:
        if value is not None and is_sensitive_name(key):
            if not (_in_task_process() and _sdk_masks_what_it_reads("_mask_and_deserialize_variable")):
                register_with_airflow_masker([(value, key)])
        return value

    # Airflow 3 awaits these where a loop runs (the triggerer's connection reads; the Execution API's
    # async resolver): same arguments and answers as the sync reads, the loop never blocked.
    async def _aresolve(self, kind: Kind, key: str, team_name: str | None) -> Any:
        from credpath import _aio

        try:
            resolution = await _aio.alookup(self.search_path, kind, key, team_name=team_name)
        except AccessDenied as exc:
            raise _airflow_access_denied()(str(exc)) from None
        if resolution is None:
            return None
        note_read(self.search_path, kind, key)
        return resolution.value

    async def aget_connection(self, conn_id: str, team_name: str | None = None) -> Any:
        from credpath import _aio

        conn = await self._aresolve("connection", conn_id, team_name)
        if conn is None:
            return None

        def finish() -> Any:  # Airflow's masker and Connection class may be slow: off the loop
            self._mask_connection(conn)
            return self._airflow_connection(conn_id, conn)

        return await _aio.run_blocking(finish)

    async def aget_variable(self, key: str, team_name: str | None = None) -> str | None:
        from credpath import _aio

        value = await self._aresolve("variable", key, team_name)
        if value is None:
            return None
        return await _aio.run_blocking(self._mask_variable, key, value)

    def get_config(self, key: str) -> str | None:
        value: str | None = self._resolve("config", key)
        if value is not None:
            # Config kept in a secrets store is secret by choice (sql_alchemy_conn, fernet_key): no name test.
            register_with_airflow_masker([(value, None)])
        return value

    def __repr__(self) -> str:
        return f"<CredpathBackend backends={self.search_path.names!r}>"


def _json_setting(name: str, value: Any) -> Any:
    # AIRFLOW__SECRETS__BACKEND_KWARG__BACKENDS / __CACHE arrive as raw strings: read them as JSON.
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{_settings_origin()}: {name!r} is not valid JSON "
            f"(line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None


def _airflow_access_denied() -> type[Exception]:
    try:
        from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
    except ImportError:  # Task SDK before 1.2.2
        return PermissionError
    denied: type[Exception] = AirflowSecretsBackendAccessDenied
    return denied


def _airflow_base_class() -> type:
    # The Task SDK's base (always present where tasks run); airflow-core's as a fallback. Airflow sets
    # the right Connection class on each instance (_set_connection_class), so either base works.
    try:
        from airflow.sdk.bases.secrets_backend import BaseSecretsBackend
    except ImportError:
        try:
            from airflow.secrets import BaseSecretsBackend
        except ImportError:
            raise ImportError(
                f"{CLASS_PATH} needs Apache Airflow 3 (airflow.sdk or airflow.secrets is missing); "
                "install apache-airflow, or use credpath's own API without it"
            ) from None
    base: type = BaseSecretsBackend
    return base


_backend_class: type | None = None


def _make_backend_class() -> type:
    global _backend_class
    if _backend_class is None:
        base = _airflow_base_class()
        _backend_class = type(
            "CredpathBackend",
            (_CredpathBackendMixin, base),
            {"__module__": __name__, "__qualname__": "CredpathBackend", "__doc__": _CLASS_DOC},
        )
    return _backend_class


_CLASS_DOC = """Airflow secrets backend serving connections, variables and config from credpath's search path.

Kwargs (from ``[secrets] backend_kwargs``): ``config`` (path of a credpath.toml with ``[[backends]]``) or
``backends`` (a list in the config file's shape), and optional ``cache`` (the ``[cache]`` table).
"""

if TYPE_CHECKING:
    CredpathBackend = _CredpathBackendMixin


def __getattr__(name: str) -> Any:
    if name == "CredpathBackend":
        return _make_backend_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
