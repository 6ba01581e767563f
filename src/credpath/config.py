"""Settings: ``credpath.toml`` and Airflow's ``AIRFLOW__SECRETS__*`` environment variables.

Precedence: a config file with a ``[[backends]]`` list defines the whole search path, in its order.
Without one, the path is Airflow's: the custom backend from ``AIRFLOW__SECRETS__BACKEND`` (if set), then
``env``, then ``metastore``. Where Airflow only logs a warning (invalid kwargs JSON, unknown class), credpath
stops with a one-line ``ConfigError`` that names the setting and never echoes the value.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from credpath.cache import CacheSettings
from credpath.errors import ConfigError
from credpath.model import is_sensitive_name
from credpath.protocol import KINDS, Kind
from credpath.resilience import BreakerSettings

__all__ = [
    "BackendSpec",
    "Settings",
    "airflow_backend_kwargs",
    "config_path",
    "credpath_home",
    "default_name",
    "kinds_from_patterns",
    "load_settings",
    "parse_backends",
    "parse_cache",
    "read_toml",
]


ENV_BACKEND = "AIRFLOW__SECRETS__BACKEND"
ENV_BACKEND_KWARGS = "AIRFLOW__SECRETS__BACKEND_KWARGS"
ENV_BACKEND_KWARG_PREFIX = "AIRFLOW__SECRETS__BACKEND_KWARG__"
ON_ERROR_CHOICES = ("skip", "fail")
_PATTERN_KEYS: dict[str, Kind] = {
    "connections_lookup_pattern": "connection",
    "variables_lookup_pattern": "variable",
    "config_lookup_pattern": "config",
}
_BACKEND_KEYS = {"name", "type", "kwargs", "on_error", *_PATTERN_KEYS}


@dataclass
class BackendSpec:
    """One entry of the search path, as configured."""

    type: str
    name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    lookup_patterns: dict[Kind, str | None] = field(default_factory=dict)
    on_error: str = "skip"
    #: Where this entry was configured, for error messages ("credpath.toml backends[2]").
    origin: str = ""


@dataclass
class Settings:
    backends: list[BackendSpec]
    cache: CacheSettings = field(default_factory=CacheSettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    config_file: Path | None = None


def credpath_home(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("CREDPATH_HOME") or Path.home() / ".credpath").expanduser()


def config_path(env: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if env is None else env
    explicit = env.get("CREDPATH_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"CREDPATH_CONFIG points to {str(path)!r}, which is not a file")
        return path
    default = credpath_home(env) / "credpath.toml"
    return default if default.is_file() else None


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    file = Path(path).expanduser() if path is not None else config_path(env)
    data: dict[str, Any] = {}
    if file is not None:
        data = read_toml(file)
    cache = parse_cache(data.get("cache", {}), origin=f"{file.name if file else 'config'} [cache]", env=env)
    breaker = parse_breaker(
        data.get("circuit_breaker", {}), origin=f"{file.name if file else 'config'} [circuit_breaker]"
    )
    if "backends" in data:
        specs = parse_backends(data["backends"], origin=file.name if file else "config")
    else:
        specs = airflow_default_backends(env)
    unknown = sorted(set(data) - {"backends", "cache", "circuit_breaker", "audit"})  # audit: credpath._audit
    if unknown:
        raise ConfigError(
            f"{file}: unknown top-level key(s) {', '.join(unknown)}; "
            "expected backends, cache, circuit_breaker"
        )
    return Settings(backends=specs, cache=cache, breaker=breaker, config_file=file)


def read_toml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(file)!r}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries line/column and the kind of error, not the offending text.
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None


ENV_CACHE_SHARED = "CREDPATH_CACHE_SHARED"
ENV_CACHE_KEY = "CREDPATH_CACHE_KEY"
_NO_SHARED = ("", "off", "none", "false")


def _table_with_enabled(raw: Any, origin: str, allowed: set[str]) -> dict[str, Any]:
    """A settings table's checks shared by ``[cache]`` and ``[circuit_breaker]``: a table, only ``allowed``
    keys, and a boolean ``enabled``. Returns ``{"enabled": ...}`` when given, for the caller to fill."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin} must be a table")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{origin}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}"
        )
    values: dict[str, Any] = {}
    if "enabled" in raw:
        if not isinstance(raw["enabled"], bool):
            raise ConfigError(f"{origin}: enabled must be true or false")
        values["enabled"] = raw["enabled"]
    return values


def parse_cache(raw: Any, origin: str, env: Mapping[str, str] | None = None) -> CacheSettings:
    """``[cache]``: the in-process tier's settings and the shared tier's (``shared``, ``shared_key``,
    ``shared_lease``). ``CREDPATH_CACHE_SHARED`` / ``CREDPATH_CACHE_KEY`` override the file's; the shared
    tier's store and key are checked here (start-up), without connecting."""
    env = os.environ if env is None else env
    allowed = {
        "enabled",
        "ttl",
        "miss_ttl",
        "max_size",
        "jitter",
        "stale_if_error",
        "shared",
        "shared_key",
        "shared_lease",
    }
    values = _table_with_enabled(raw, origin, allowed)
    for key in ("ttl", "miss_ttl", "jitter", "stale_if_error"):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{origin}: {key} must be a number >= 0 (seconds)")
            values[key] = float(value)
    if "max_size" in raw:
        value = raw["max_size"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{origin}: max_size must be an integer >= 1")
        values["max_size"] = value
    if "shared_lease" in raw:
        value = raw["shared_lease"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{origin}: shared_lease must be a number > 0 (seconds)")
        values["shared_lease"] = float(value)
    values.update(_parse_shared(raw, origin, env))
    return CacheSettings(**values)


def _parse_shared(raw: Mapping[str, Any], origin: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The shared tier: its normalized setting and resolved keys (errors name the setting, never values)."""
    if env.get(ENV_CACHE_SHARED) is not None:
        shared, where = env[ENV_CACHE_SHARED], ENV_CACHE_SHARED
    else:
        shared, where = raw.get("shared"), f"{origin}: shared"
    if (
        shared is None
        or shared is False
        or (isinstance(shared, str) and shared.strip().lower() in _NO_SHARED)
    ):
        return {}
    if not isinstance(shared, str):
        raise ConfigError(f"{where} must be 'file', 'file:PATH', or a redis:// or rediss:// URL")
    key_setting = raw.get("shared_key")
    if key_setting is not None and not isinstance(key_setting, str):
        raise ConfigError(f"{origin}: shared_key must be a string (Fernet keys, comma-separated)")
    from credpath.shared_cache import normalize_shared, resolve_keys

    home = credpath_home(env)
    try:
        normalized = normalize_shared(shared, home)
    except ConfigError as exc:
        raise type(exc)(f"{where} {exc}", **_dependency(exc)) from None
    try:
        keys = resolve_keys(key_setting, env, home, file_tier=normalized.startswith("file:"))
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    return {"shared": normalized, "shared_keys": tuple(keys)}


def _dependency(exc: ConfigError) -> dict[str, Any]:
    module = getattr(exc, "module", None)
    return {} if module is None else {"module": module}


def parse_breaker(raw: Any, origin: str) -> BreakerSettings:
    """``[circuit_breaker]``: enabled, failures (consecutive, >= 1), cool_down and max_cool_down (seconds)."""
    values = _table_with_enabled(raw, origin, {"enabled", "failures", "cool_down", "max_cool_down"})
    if "failures" in raw:
        value = raw["failures"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{origin}: failures must be an integer >= 1")
        values["failures"] = value
    for key in ("cool_down", "max_cool_down"):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"{origin}: {key} must be a number > 0 (seconds)")
            values[key] = float(value)
    settings = BreakerSettings(**values)
    if settings.max_cool_down < settings.cool_down:
        raise ConfigError(f"{origin}: max_cool_down must be >= cool_down")
    return settings


def parse_backends(raw: Any, origin: str) -> list[BackendSpec]:
    if not isinstance(raw, list):
        raise ConfigError(f"{origin}: 'backends' must be a list of tables ([[backends]])")
    specs = [parse_backend(item, f"{origin} backends[{i}]") for i, item in enumerate(raw)]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigError(
                f"{spec.origin}: duplicate backend name {spec.name!r}; give each a distinct 'name'"
            )
        seen.add(spec.name)
    return specs


def parse_backend(raw: Any, origin: str) -> BackendSpec:
    from credpath.registry import resolve_type

    if not isinstance(raw, dict):
        raise ConfigError(f"{origin} must be a table")
    unknown = sorted(set(raw) - _BACKEND_KEYS)
    if unknown:
        raise ConfigError(
            f"{origin}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(_BACKEND_KEYS))}"
        )
    if "type" not in raw:
        raise ConfigError(f"{origin}: missing 'type' (a backend alias or dotted class path)")
    type_name, _ = resolve_type(raw["type"], setting=f"{origin} type")
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{origin}: 'kwargs' must be a table")
    on_error = raw.get("on_error", "skip")
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"{origin}: on_error must be one of {', '.join(ON_ERROR_CHOICES)}")
    name = raw.get("name") or default_name(type_name)
    if not isinstance(name, str):
        raise ConfigError(f"{origin}: 'name' must be a string")
    patterns: dict[Kind, str | None] = {}
    for key, kind in _PATTERN_KEYS.items():
        if key in raw:
            if not isinstance(raw[key], str):
                raise ConfigError(f"{origin}: {key} must be a string (a regular expression)")
            patterns[kind] = raw[key]
    return BackendSpec(
        type=type_name,
        name=name,
        kwargs=dict(kwargs),
        lookup_patterns=patterns,
        on_error=on_error,
        origin=origin,
    )


def default_name(type_name: str) -> str:
    return type_name.rsplit(".", 1)[-1] if "." in type_name else type_name


def airflow_default_backends(env: Mapping[str, str] | None = None) -> list[BackendSpec]:
    """Airflow's fixed order: custom backend (if configured), environment variables, metastore."""
    env = os.environ if env is None else env
    specs: list[BackendSpec] = []
    custom = airflow_custom_backend(env)
    if custom is not None:
        specs.append(custom)
    specs.append(BackendSpec(type="env", name="env", origin="default"))
    specs.append(BackendSpec(type="metastore", name="metastore", origin="default"))
    return specs


def airflow_custom_backend(env: Mapping[str, str]) -> BackendSpec | None:
    from credpath.registry import resolve_type

    class_path = env.get(ENV_BACKEND, "").strip()
    if not class_path:
        if env.get(ENV_BACKEND_KWARGS, "").strip():
            raise ConfigError(
                f"{ENV_BACKEND_KWARGS} is set but {ENV_BACKEND} is not; set the backend class path"
            )
        return None
    type_name, _ = resolve_type(class_path, setting=ENV_BACKEND)
    kwargs = airflow_backend_kwargs(env)
    # A lookup pattern given as a kwarg is also the search path's pattern (Airflow: AWS only; credpath: all).
    return BackendSpec(type=type_name, name=default_name(type_name), kwargs=kwargs, origin=ENV_BACKEND)


def airflow_backend_kwargs(env: Mapping[str, str]) -> dict[str, Any]:
    raw = env.get(ENV_BACKEND_KWARGS, "").strip()
    kwargs: dict[str, Any] = {}
    if raw:
        try:
            kwargs = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{ENV_BACKEND_KWARGS} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} "
                f"(char {exc.pos})"
            ) from None
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{ENV_BACKEND_KWARGS} must be a JSON object, got {type(kwargs).__name__}")
    for name, value in env.items():
        if name.startswith(ENV_BACKEND_KWARG_PREFIX) and len(name) > len(ENV_BACKEND_KWARG_PREFIX):
            key = name[len(ENV_BACKEND_KWARG_PREFIX) :].lower()
            kwargs[key] = _kwarg_value(key, value)
    return kwargs


def _kwarg_value(key: str, value: str) -> Any:
    # Secrets stay strings (a numeric token must not become an int); other literals are decoded so
    # that e.g. KV_ENGINE_VERSION=1 or CONNECTIONS_PATH=null mean what they would in the JSON.
    if is_sensitive_name(key):
        return value
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return value
    return decoded if not isinstance(decoded, str) else value


def kinds_from_patterns(patterns: Mapping[str, str | None]) -> dict[Kind, str | None]:
    return {kind: patterns.get(kind) for kind in KINDS}
