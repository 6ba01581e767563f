"""Drop-in secrets backend for Apache Airflow 3.3: one custom backend that serves credpath's search path.

Configure it with Airflow's own settings::

    AIRFLOW__SECRETS__BACKEND=credpath.airflow.CredpathBackend
    AIRFLOW__SECRETS__BACKEND_KWARGS={"config": "/etc/credpath/credpath.toml"}
    # or inline, in the shape of the config file:
    AIRFLOW__SECRETS__BACKEND_KWARGS={"backends": [{"type": "vault", "kwargs": {...}}], "cache": {"ttl": 600}}

``[workers] secrets_backend`` / ``secrets_backend_kwargs`` (the Task SDK path) take the same values.
Airflow keeps its environment-variable and metastore backends after this one, so nothing a deployment
already had stops working.

Airflow is imported lazily: ``import credpath.airflow`` works without Airflow installed, and the
``CredpathBackend`` class is built (subclassing Airflow's ``BaseSecretsBackend``) on first access.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credpath.errors import AccessDenied, ConfigError
from credpath.model import is_sensitive_name

if TYPE_CHECKING:
    from credpath.model import Connection
    from credpath.protocol import Kind
    from credpath.search_path import SearchPath

log = logging.getLogger("credpath.airflow")

CLASS_PATH = "credpath.airflow.CredpathBackend"
_ACCEPTED_KWARGS = ("backends", "cache", "config")
# Settings that would make credpath's default config load this very class again (endless recursion).
_AIRFLOW_SELF_SETTINGS = (
    "AIRFLOW__SECRETS__BACKEND",
    "AIRFLOW__SECRETS__BACKEND_KWARGS",
    "AIRFLOW__WORKERS__SECRETS_BACKEND",
    "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS",
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
) -> SearchPath:
    from credpath.config import config_path, load_settings, parse_backends, parse_cache
    from credpath.search_path import SearchPath

    origin = _settings_origin()
    if config is not None and backends is not None:
        raise ConfigError(f"{origin}: give either 'config' or 'backends', not both")
    # Without AIRFLOW__SECRETS__*, credpath's Airflow-default path can never point back at this class.
    clean_env = {
        k: v
        for k, v in env.items()
        if k not in _AIRFLOW_SELF_SETTINGS and not k.startswith(_AIRFLOW_SELF_PREFIXES)
    }
    if backends is not None:
        specs = parse_backends(backends, origin=f"{origin} backends")
        cache_settings = parse_cache(cache or {}, origin=f"{origin} cache")
    else:
        if config is not None:
            if not isinstance(config, str | os.PathLike) or not str(config).strip():
                raise ConfigError(f"{origin}: 'config' must be the path of a credpath.toml file")
            file = Path(config).expanduser()
            if not file.is_file():
                raise ConfigError(f"{origin}: 'config' points to {str(file)!r}, which is not a file")
        else:
            file = config_path(clean_env)
            if file is None:
                raise ConfigError(
                    f"{origin}: needs 'config' (a credpath.toml path) or 'backends' "
                    "(and no default credpath.toml was found via CREDPATH_CONFIG or CREDPATH_HOME)"
                )
        from credpath.config import read_toml

        if "backends" not in read_toml(file):
            # Airflow already adds its env and metastore backends after this one; a file without a
            # [[backends]] list would only repeat them.
            raise ConfigError(f"{file}: no [[backends]] list; {CLASS_PATH} needs the stores to search")
        settings = load_settings(file, clean_env)
        specs = settings.backends
        cache_settings = parse_cache(cache, origin=f"{origin} cache") if cache is not None else settings.cache
    for spec in specs:
        if spec.type == CLASS_PATH or spec.type.endswith(".airflow.CredpathBackend"):
            raise ConfigError(f"{spec.origin}: {CLASS_PATH} cannot be one of its own backends")
    return SearchPath(specs, cache=cache_settings)


def search_path_for(
    *,
    config: str | os.PathLike[str] | None = None,
    backends: list[dict[str, Any]] | None = None,
    cache: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> SearchPath:
    """The process-wide search path for one configuration, built once (no network I/O)."""
    key = _canonical_key(
        {"config": str(config) if config is not None else None, "backends": backends, "cache": cache}
    )
    path = _search_paths.get(key)
    if path is None:
        with _search_paths_lock:
            path = _search_paths.get(key)
            if path is None:
                path = _build_search_path(config, backends, cache, os.environ if env is None else env)
                _search_paths[key] = path
    return path


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


def register_with_airflow_masker(values: list[tuple[str, str | None]]) -> None:
    """Register (value, name) pairs once per process and masker; a name lets Airflow's sensitive-name
    rules (including ``[core] sensitive_var_conn_names``) decide."""
    values = [item for item in values if item[0]]
    if not values:
        return
    masker = _airflow_masker()
    if masker is None:
        return
    kind, mask = masker
    with _masked_lock:
        for value, name in values:
            key = (kind, value, name)
            if key in _masked:
                continue
            try:
                mask(value, name)
            except Exception as exc:  # masking must never break a lookup; say so without the value
                log.warning("could not register a secret with Airflow's masker: %s", type(exc).__name__)
            _masked.add(key)


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
        if unknown:
            raise ConfigError(
                f"{_settings_origin()}: unknown key(s) {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(_ACCEPTED_KWARGS)}"
            )
        if backends is not None and not isinstance(backends, list):
            raise ConfigError(f"{_settings_origin()}: 'backends' must be a list of backend tables")
        if cache is not None and not isinstance(cache, dict):
            raise ConfigError(f"{_settings_origin()}: 'cache' must be an object")
        self.search_path: SearchPath = search_path_for(config=config, backends=backends, cache=cache)

    def _resolve(self, kind: Kind, key: str) -> Any:
        from credpath.cache import ABSENT

        search_path = self.search_path
        cached = search_path.cache.get((kind, key, None)) is not ABSENT  # cache keys: (kind, key, team)
        try:
            resolution = search_path.lookup(kind, key)
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
        return resolution.value

    def _credpath_connection(self, conn_id: str) -> Connection | None:
        conn = self._resolve("connection", conn_id)
        if conn is not None:
            register_with_airflow_masker([(secret, None) for secret in conn.secret_values()])
        return conn

    def get_conn_value(self, conn_id: str) -> str | None:
        conn = self._credpath_connection(conn_id)
        # JSON, not a URI: it keeps `description` through Airflow's deserialize_connection.
        return None if conn is None else conn.to_json()

    def get_connection(self, conn_id: str) -> Any:
        conn = self._credpath_connection(conn_id)
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

    def get_variable(self, key: str) -> str | None:
        value = self._resolve("variable", key)
        if value is not None and is_sensitive_name(key):
            register_with_airflow_masker([(value, key)])
        return value

    def get_config(self, key: str) -> str | None:
        value = self._resolve("config", key)
        if value is not None:
            # Config kept in a secrets store is secret by choice (sql_alchemy_conn, fernet_key): no name test.
            register_with_airflow_masker([(value, None)])
        return value

    def __repr__(self) -> str:
        return f"<CredpathBackend backends={self.search_path.names!r}>"


def _airflow_access_denied() -> type[Exception]:
    try:
        from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
    except ImportError:  # Task SDK before 1.2.2
        return PermissionError
    return AirflowSecretsBackendAccessDenied


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
    return BaseSecretsBackend


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
