"""Settings, loaded once: ``credpath.toml``, ``CREDPATH_*`` and Airflow's ``[secrets]`` / ``[workers]``
environment settings, checked in one place into frozen, typed values, and the one function that builds a
search path from them (:func:`build_search_path`). The CLI, the Python API, the web app and the Airflow
drop-in all build through it, so they cannot disagree on a setting.

Precedence: a config file with a ``[[backends]]`` list defines the whole search path, in its order.
Without one, the path is Airflow's: the custom backend from ``AIRFLOW__SECRETS__BACKEND`` (if set), then
``env``, then ``metastore``, reordered by ``AIRFLOW__SECRETS__BACKENDS_ORDER`` when set. Where Airflow only
logs a warning (invalid kwargs JSON, unknown class), credpath stops with a one-line ``ConfigError`` that
names the setting and where it came from (``file:line`` or the environment variable), never the value.

Validation is plain frozen records (:mod:`credpath._record`) and one table of number rules
(:data:`_CACHE_RULES`, :data:`_BREAKER_RULES`, :class:`Number`), not pydantic, attrs or msgspec: measured
side by side in fresh processes (best of 9), importing pydantic and defining one model costs about twice
the import of the whole ``credpath.cli``, attrs about two thirds of it, against the CLI's 150 ms budget;
the checks here are a dozen numbers and enums that one table covers, at no import cost.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from credpath._cache import CacheSettings
from credpath._record import Frozen
from credpath._resilience import BreakerSettings
from credpath.errors import ConfigError
from credpath.model import is_sensitive_name
from credpath.protocol import KINDS, Kind

if TYPE_CHECKING:
    from credpath._search_path import SearchPath

__all__ = [
    "COUNT",
    "PORT",
    "RETRIES",
    "TIMEOUT",
    "BackendSpec",
    "BackendsOrder",
    "Number",
    "Settings",
    "SharedTierSettings",
    "airflow_backend_kwargs",
    "airflow_custom_backend",
    "airflow_default_backends",
    "backends_order",
    "build_search_path",
    "check_bool",
    "check_number",
    "config_path",
    "credpath_home",
    "default_name",
    "kinds_from_patterns",
    "load_drop_in_settings",
    "load_settings",
    "open_shared_tier",
    "parse_backend",
    "parse_backends",
    "parse_backends_order",
    "parse_breaker",
    "parse_cache",
    "parse_shared",
    "read_toml",
    "search_path_from_config",
    "settings_of",
]

log = logging.getLogger("credpath.config")

ENV_BACKEND = "AIRFLOW__SECRETS__BACKEND"
ENV_BACKEND_KWARGS = "AIRFLOW__SECRETS__BACKEND_KWARGS"
ENV_BACKEND_KWARG_PREFIX = "AIRFLOW__SECRETS__BACKEND_KWARG__"
ENV_SECRETS_ORDER = "AIRFLOW__SECRETS__BACKENDS_ORDER"
ENV_WORKERS_ORDER = "AIRFLOW__WORKERS__BACKENDS_ORDER"
ENV_CACHE_SHARED = "CREDPATH_CACHE_SHARED"
ENV_CACHE_KEY = "CREDPATH_CACHE_KEY"
ON_ERROR_CHOICES = ("skip", "fail")
_PATTERN_KEYS: dict[str, Kind] = {
    "connections_lookup_pattern": "connection",
    "variables_lookup_pattern": "variable",
    "config_lookup_pattern": "config",
}
_BACKEND_KEYS = {"name", "type", "kwargs", "on_error", *_PATTERN_KEYS}
_TOP_LEVEL = ("backends", "cache", "circuit_breaker", "audit")  # audit: read by credpath._audit
_NO_SHARED = ("", "off", "none", "false")


# --- the one number check ------------------------------------------------------------------------------


class Number(Frozen):
    """A number setting's rule: finite, within ``[low, high]`` (``low`` excluded when ``above``)."""

    low: float
    high: float
    above: bool  # > low rather than >= low
    integer: bool
    unit: str

    _fields = ("low", "high", "above", "integer", "unit")

    def __init__(
        self, low: float, high: float, above: bool = False, integer: bool = False, unit: str = ""
    ) -> None:
        vars(self).update(low=low, high=high, above=above, integer=integer, unit=unit)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low = f"> {_num(self.low)}" if self.above else f">= {_num(self.low)}"
        unit = f" ({self.unit})" if self.unit else ""
        return f"{kind} {low} and <= {_num(self.high)}{unit}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


DAY = 86_400.0
YEAR = 365 * DAY
#: Seconds that may be 0 (off): cache lifetimes. A year bounds them so the shared tier's expiry (Redis
#: milliseconds) can always be computed; ``inf`` would overflow it and fail every write.
SECONDS = Number(0.0, YEAR, unit="seconds")
#: Seconds that must be > 0: waits and pauses. ``nan`` would keep a breaker open or a waiter waiting.
PAUSE = Number(0.0, DAY, above=True, unit="seconds")
#: A call's deadline.
TIMEOUT = Number(0.0, 3600.0, above=True, unit="seconds")
FRACTION = Number(0.0, 1.0)
COUNT = Number(1, 1_000_000_000, integer=True)
RETRIES = Number(0, 100, integer=True)
PORT = Number(1, 65_535, integer=True)


def check_number(
    value: Any, rule: Number, setting: str, fail: Callable[[str], ConfigError] = ConfigError
) -> Any:
    """``value`` if it satisfies ``rule`` (as float, or int for integer rules), else ``fail("<setting> must
    be ...")`` raised (a backend passes its ``config_error``, which names it). The value is never shown: a
    misplaced credential must not reach a message."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (not rule.integer or isinstance(value, int)) and math.isfinite(value)
    if not (ok and (value > rule.low if rule.above else value >= rule.low) and value <= rule.high):
        raise fail(f"{setting} must be {rule.describe()}")
    return value if rule.integer else float(value)


def check_bool(value: Any, setting: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{setting} must be true or false")
    return value


#: ``[cache]``'s scalar settings and their rules (``shared`` and ``shared_key`` are checked apart).
_CACHE_RULES: dict[str, Number | None] = {
    "enabled": None,  # None: a boolean
    "ttl": SECONDS,
    "miss_ttl": SECONDS,
    "max_size": COUNT,
    "jitter": FRACTION,
    "stale_if_error": SECONDS,
    "shared_lease": PAUSE,
    "invalidate_failed_tasks": None,
}
_CACHE_KEYS = {*_CACHE_RULES, "shared", "shared_key"}
_BREAKER_RULES: dict[str, Number | None] = {
    "enabled": None,
    "failures": COUNT,
    "cool_down": PAUSE,
    "max_cool_down": PAUSE,
}


# --- the settings --------------------------------------------------------------------------------------


# Frozen records rather than dataclasses: the CLI defines these on its way to one lookup (credpath._record
# says why); ``replace`` is their ``dataclasses.replace``.


class BackendSpec(Frozen):
    """One entry of the search path, as configured."""

    type: str
    name: str
    kwargs: dict[str, Any]
    lookup_patterns: dict[Kind, str | None]
    on_error: str
    #: Where this entry was configured, for error messages ("credpath.toml backends[2]").
    origin: str

    _fields = ("type", "name", "kwargs", "lookup_patterns", "on_error", "origin")
    _hidden = frozenset({"kwargs"})  # a token or password given inline

    def __init__(
        self,
        type: str,
        name: str = "",
        kwargs: dict[str, Any] | None = None,
        lookup_patterns: dict[Kind, str | None] | None = None,
        on_error: str = "skip",
        origin: str = "",
    ) -> None:
        vars(self).update(
            type=type,
            name=name,
            kwargs={} if kwargs is None else kwargs,
            lookup_patterns={} if lookup_patterns is None else lookup_patterns,
            on_error=on_error,
            origin=origin,
        )


class SharedTierSettings(Frozen):
    """``[cache] shared``, resolved once at start-up: the normalized store ("file:/abs/path" or a Redis URL),
    its Fernet keys (the first encrypts) and the single-flight lease."""

    url: str
    keys: tuple[bytes, ...]
    lease: float

    _fields = ("url", "keys", "lease")
    _hidden = frozenset({"url", "keys"})  # a Redis URL may hold a password
    _uncompared = frozenset({"keys"})

    def __init__(self, url: str, keys: tuple[bytes, ...], lease: float = 5.0) -> None:
        vars(self).update(url=url, keys=keys, lease=lease)


class BackendsOrder(Frozen):
    """The search path's order and where it came from, as Airflow's ``GET /ui/backends_order`` shows it.

    ``names``: the backends searched, in order (credpath names); ``airflow``: the order in Airflow's
    vocabulary (custom, environment_variable, metastore) when Airflow's default path is in use;
    ``source``: the setting that decided it."""

    names: tuple[str, ...]
    source: str
    airflow: tuple[str, ...]
    #: ``[workers] backends_order`` as configured (validated), for display; the Task SDK applies it.
    workers: tuple[str, ...]

    _fields = ("names", "source", "airflow", "workers")

    def __init__(
        self,
        names: tuple[str, ...],
        source: str,
        airflow: tuple[str, ...] = (),
        workers: tuple[str, ...] = (),
    ) -> None:
        vars(self).update(names=names, source=source, airflow=airflow, workers=workers)


class Settings(Frozen):
    backends: tuple[BackendSpec, ...]
    cache: CacheSettings
    breaker: BreakerSettings
    config_file: Path | None
    shared: SharedTierSettings | None
    order: BackendsOrder | None
    #: Whether the file has an [audit] table (read by credpath._audit, which is imported only then).
    audit: bool

    _fields = ("backends", "cache", "breaker", "config_file", "shared", "order", "audit")

    def __init__(
        self,
        backends: tuple[BackendSpec, ...],
        cache: CacheSettings | None = None,
        breaker: BreakerSettings | None = None,
        config_file: Path | None = None,
        shared: SharedTierSettings | None = None,
        order: BackendsOrder | None = None,
        audit: bool = False,
    ) -> None:
        vars(self).update(
            backends=tuple(backends),  # a list given in code is kept frozen
            cache=CacheSettings() if cache is None else cache,
            breaker=BreakerSettings() if breaker is None else breaker,
            config_file=config_file,
            shared=shared,
            order=order,
            audit=audit,
        )


# --- files and locations -------------------------------------------------------------------------------


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


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(file)!r}: {exc.strerror}") from None


def _parse_toml(file: Path, text: str) -> dict[str, Any]:
    import tomllib  # only with a config file: the embedded default has none, and its start-up is timed

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries line/column and the kind of error, not the offending text.
        raise ConfigError(f"{file}: invalid TOML: {exc}") from None


def read_toml(file: Path) -> dict[str, Any]:
    return _parse_toml(file, _read_text(file))


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.-]+)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def _key_lines(text: str) -> dict[tuple[str, str | None], int]:
    """Line numbers of simple tables' headers ``(table, None)`` and keys ``(table, key)`` (first seen),
    so an error names ``credpath.toml:LINE``; ``[[backends]]`` entries keep their index instead."""
    lines: dict[tuple[str, str | None], int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            table = header.group(1)
            lines.setdefault((table, None), number)
        elif line.lstrip().startswith("[["):
            table = ""
        elif table:
            key = _KEY.match(line)
            if key:
                lines.setdefault((table, key.group(1)), number)
    return lines


Where = Callable[[str | None], str]


def _where_in_file(file: Path | None, table: str, lines: Mapping[tuple[str, str | None], int]) -> Where:
    """Where a key of ``[table]`` was set: ``credpath.toml:12 [cache]`` (the header's line for the table)."""
    name = file.name if file is not None else "config"

    def where(key: str | None) -> str:
        line = lines.get((table, key)) or lines.get((table, None))
        return f"{name}:{line} [{table}]" if line else f"{name} [{table}]"

    return where


def _fixed(origin: str) -> Where:
    return lambda key: origin


# --- loading -------------------------------------------------------------------------------------------


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Everything credpath is configured with, checked: the config file (``path``, else ``CREDPATH_CONFIG``,
    else ``$CREDPATH_HOME/credpath.toml``), ``CREDPATH_*`` and Airflow's ``AIRFLOW__SECRETS__*`` /
    ``AIRFLOW__WORKERS__BACKENDS_ORDER``."""
    env = os.environ if env is None else env
    file = Path(path).expanduser() if path is not None else config_path(env)
    data: dict[str, Any] = {}
    lines: Mapping[tuple[str, str | None], int] = {}
    if file is not None:
        text = _read_text(file)
        data = _parse_toml(file, text)
        lines = _key_lines(text)
    unknown = sorted(set(data) - set(_TOP_LEVEL))
    if unknown:
        raise ConfigError(
            f"{file}: unknown top-level key(s) {', '.join(unknown)}; expected {', '.join(_TOP_LEVEL)}"
        )
    cache, shared = _parse_cache(data.get("cache", {}), _where_in_file(file, "cache", lines), env)
    breaker = _parse_breaker(data.get("circuit_breaker", {}), _where_in_file(file, "circuit_breaker", lines))
    workers = _order_setting(env, ENV_WORKERS_ORDER)
    if "backends" in data:
        specs = parse_backends(data["backends"], origin=file.name if file else "config")
        source = f"{file.name if file else 'config'} [[backends]]"
        if env.get(ENV_SECRETS_ORDER, "").strip():
            log.warning("%s is ignored: %s sets the order of the search path", ENV_SECRETS_ORDER, source)
        order = BackendsOrder(tuple(s.name for s in specs), source, workers=workers)
    else:
        specs, order = _airflow_default_path(env, workers)
    return Settings(
        backends=tuple(specs),
        cache=cache,
        breaker=breaker,
        config_file=file,
        shared=shared,
        order=order,
        audit="audit" in data,
    )


def load_drop_in_settings(
    origin: str,
    config: str | os.PathLike[str] | None,
    backends: list[dict[str, Any]] | None,
    cache: dict[str, Any] | None,
    env: Mapping[str, str],
) -> Settings:
    """The Airflow drop-in's settings: its kwargs (``config``, or inline ``backends`` and ``cache``) read as
    a config file is. ``env`` must not point back at the drop-in (the caller removes Airflow's settings)."""
    if config is not None and backends is not None:
        raise ConfigError(f"{origin}: give either 'config' or 'backends', not both")
    if backends is not None:
        specs = parse_backends(backends, origin=f"{origin} backends")
        cache_settings, shared = _parse_cache(cache or {}, _fixed(f"{origin} cache"), env)
        return Settings(
            backends=tuple(specs),
            cache=cache_settings,
            shared=shared,
            order=BackendsOrder(tuple(s.name for s in specs), f"{origin} backends"),
        )
    if config is not None:
        if not isinstance(config, str | os.PathLike) or not str(config).strip():
            raise ConfigError(f"{origin}: 'config' must be the path of a credpath.toml file")
        file = Path(config).expanduser()
        if not file.is_file():
            raise ConfigError(f"{origin}: 'config' points to {str(file)!r}, which is not a file")
    else:
        found = config_path(env)
        if found is None:
            raise ConfigError(
                f"{origin}: needs 'config' (a credpath.toml path) or 'backends' "
                "(and no default credpath.toml was found via CREDPATH_CONFIG or CREDPATH_HOME)"
            )
        file = found
    if "backends" not in read_toml(file):
        # Airflow already adds its env and metastore backends after this one; a file without a
        # [[backends]] list would only repeat them.
        raise ConfigError(f"{file}: no [[backends]] list; {origin.split()[0]} needs the stores to search")
    settings = load_settings(file, env)
    if cache is not None:  # the kwargs' cache table replaces the file's
        cache_settings, shared = _parse_cache(cache, _fixed(f"{origin} cache"), env)
        settings = settings.replace(cache=cache_settings, shared=shared)
    return settings


def parse_cache(raw: Any, origin: str, env: Mapping[str, str] | None = None) -> CacheSettings:
    """``[cache]``: the in-process tier's settings (the shared tier's, resolved: :func:`parse_shared`)."""
    return _parse_cache(raw, _fixed(origin), os.environ if env is None else env)[0]


def parse_shared(raw: Any, origin: str, env: Mapping[str, str] | None = None) -> SharedTierSettings | None:
    """``[cache]``'s shared tier, resolved (store normalized, keys read); None when off."""
    return _parse_cache(raw, _fixed(origin), os.environ if env is None else env)[1]


def _known_table(raw: Any, where: Where, allowed: set[str]) -> None:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where(None)} must be a table")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{where(unknown[0])}: unknown key(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}"
        )


def _check_table(
    raw: Any, where: Where, rules: Mapping[str, Number | None], allowed: set[str]
) -> dict[str, Any]:
    """A settings table checked against its rules: a table, only ``allowed`` keys, each ruled value valid."""
    _known_table(raw, where, allowed)
    values: dict[str, Any] = {}
    for key, rule in rules.items():
        if key in raw:
            setting = f"{where(key)}: {key}"
            values[key] = (
                check_bool(raw[key], setting) if rule is None else check_number(raw[key], rule, setting)
            )
    return values


def _parse_cache(
    raw: Any, where: Where, env: Mapping[str, str]
) -> tuple[CacheSettings, SharedTierSettings | None]:
    """``[cache]`` with its shared tier (``shared``, ``shared_key``, ``shared_lease``), which
    ``CREDPATH_CACHE_SHARED`` / ``CREDPATH_CACHE_KEY`` override; the shared tier's store and keys are
    checked here (start-up), without connecting."""
    values = _check_table(raw, where, _CACHE_RULES, _CACHE_KEYS)
    shared = _parse_shared(raw, where, env, values.get("shared_lease", CacheSettings.shared_lease))
    if shared is not None:
        values["shared"] = shared.url
    return CacheSettings(**values), shared


def _parse_shared(
    raw: Mapping[str, Any], where: Where, env: Mapping[str, str], lease: float
) -> SharedTierSettings | None:
    """The shared tier: its normalized setting and resolved keys (errors name the setting, never values)."""
    shared: Any
    if env.get(ENV_CACHE_SHARED) is not None:
        shared, setting = env[ENV_CACHE_SHARED], ENV_CACHE_SHARED
    else:
        shared, setting = raw.get("shared"), f"{where('shared')}: shared"
    if (
        shared is None
        or shared is False
        or (isinstance(shared, str) and shared.strip().lower() in _NO_SHARED)
    ):
        return None
    if not isinstance(shared, str):
        raise ConfigError(f"{setting} must be 'file', 'file:PATH', or a redis:// or rediss:// URL")
    key_setting = raw.get("shared_key")
    if key_setting is not None and not isinstance(key_setting, str):
        raise ConfigError(
            f"{where('shared_key')}: shared_key must be a string (Fernet keys, comma-separated)"
        )
    from credpath._shared_cache import normalize_shared, resolve_keys

    home = credpath_home(env)
    try:
        normalized = normalize_shared(shared, home)
    except ConfigError as exc:
        raise type(exc)(f"{setting} {exc}", **_dependency(exc)) from None
    try:
        keys = resolve_keys(key_setting, env, home, file_tier=normalized.startswith("file:"))
    except ConfigError as exc:
        # The environment variable wins over the file: its errors name it alone, not the file.
        if env.get(ENV_CACHE_KEY, "").strip():
            raise ConfigError(str(exc)) from None
        raise ConfigError(f"{where('shared_key')}: {exc}") from None
    return SharedTierSettings(url=normalized, keys=tuple(keys), lease=lease)


def _dependency(exc: ConfigError) -> dict[str, Any]:
    module = getattr(exc, "module", None)
    return {} if module is None else {"module": module}


def parse_breaker(raw: Any, origin: str) -> BreakerSettings:
    """``[circuit_breaker]``: enabled, failures (consecutive, >= 1), cool_down and max_cool_down (seconds)."""
    return _parse_breaker(raw, _fixed(origin))


def _parse_breaker(raw: Any, where: Where) -> BreakerSettings:
    values = _check_table(raw, where, _BREAKER_RULES, set(_BREAKER_RULES))
    settings = BreakerSettings(**values)
    if settings.max_cool_down < settings.cool_down:
        raise ConfigError(f"{where('max_cool_down')}: max_cool_down must be >= cool_down")
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

    _known_table(raw, _fixed(origin), _BACKEND_KEYS)
    if "type" not in raw:
        raise ConfigError(f"{origin}: missing 'type' (a backend alias or dotted class path)")
    type_name, _ = resolve_type(raw["type"], setting=f"{origin} type")
    kwargs = raw.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"{origin}: 'kwargs' must be a table")
    on_error = raw.get("on_error", "skip")
    if on_error not in ON_ERROR_CHOICES:
        raise ConfigError(f"{origin}: on_error must be one of {', '.join(ON_ERROR_CHOICES)}")
    name = raw.get("name", "")
    if not isinstance(name, str):  # checked before the default: `name = false` is no name either
        raise ConfigError(f"{origin}: 'name' must be a string")
    name = name or default_name(type_name)
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


# --- Airflow's default path and its order ---------------------------------------------------------------

#: ``backends_order`` per section (Airflow PR #70681): the names it accepts, and those it cannot drop.
ORDER_CHOICES: dict[str, tuple[str, ...]] = {
    ENV_SECRETS_ORDER: ("custom", "environment_variable", "metastore"),
    ENV_WORKERS_ORDER: ("custom", "environment_variable", "execution_api"),
}
_ORDER_REQUIRED: dict[str, tuple[str, ...]] = {
    ENV_SECRETS_ORDER: ("environment_variable", "metastore"),
    ENV_WORKERS_ORDER: ("environment_variable", "execution_api"),
}
#: Airflow's default order, which reproduces its fixed precedence (custom first).
DEFAULT_ORDER = ("custom", "environment_variable", "metastore")


def parse_backends_order(text: str, setting: str) -> tuple[str, ...]:
    """A comma-separated ``backends_order`` checked as Airflow does: known names only, each once, the
    required ones present (``custom`` may be left out, and is skipped when no custom backend is set)."""
    choices = ORDER_CHOICES[setting]
    names = tuple(part.strip().lower() for part in text.split(",") if part.strip())
    for name in names:
        if name not in choices:
            raise ConfigError(f"{setting}: unknown backend {name!r}; expected {', '.join(choices)}")
    for name in set(names):
        if names.count(name) > 1:
            raise ConfigError(f"{setting}: {name!r} is listed more than once")
    missing = [name for name in _ORDER_REQUIRED[setting] if name not in names]
    if missing:
        raise ConfigError(
            f"{setting}: must list {' and '.join(_ORDER_REQUIRED[setting])} (missing {', '.join(missing)})"
        )
    return names


def _order_setting(env: Mapping[str, str], setting: str) -> tuple[str, ...]:
    text = env.get(setting, "").strip()
    return parse_backends_order(text, setting) if text else ()


def _airflow_default_path(
    env: Mapping[str, str], workers: tuple[str, ...]
) -> tuple[list[BackendSpec], BackendsOrder]:
    configured = _order_setting(env, ENV_SECRETS_ORDER)
    airflow_order = configured or DEFAULT_ORDER
    custom = airflow_custom_backend(env)
    if custom is not None and "custom" not in airflow_order:
        log.warning("%s leaves out 'custom': %s is not searched", ENV_SECRETS_ORDER, ENV_BACKEND)
    by_name: dict[str, BackendSpec | None] = {
        "custom": custom,
        "environment_variable": BackendSpec(type="env", name="env", origin="default"),
        "metastore": BackendSpec(type="metastore", name="metastore", origin="default"),
    }
    specs = [spec for spec in (by_name[name] for name in airflow_order) if spec is not None]
    effective = tuple(name for name in airflow_order if by_name[name] is not None)
    source = ENV_SECRETS_ORDER if configured else "Airflow's default order"
    return specs, BackendsOrder(tuple(s.name for s in specs), source, airflow=effective, workers=workers)


def airflow_default_backends(env: Mapping[str, str] | None = None) -> list[BackendSpec]:
    """Airflow's order (custom backend if configured, environment variables, metastore), as reordered by
    ``AIRFLOW__SECRETS__BACKENDS_ORDER``."""
    env = os.environ if env is None else env
    return _airflow_default_path(env, ())[0]


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


# --- the one builder -----------------------------------------------------------------------------------

# The settings each built search path came from, for the views that show them (order, source).
_built: weakref.WeakKeyDictionary[Any, Settings] = weakref.WeakKeyDictionary()


def build_search_path(
    settings: Settings,
    *,
    backend_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    **kwargs: Any,
) -> SearchPath:
    """The search path for ``settings``: its backends (``backend_kwargs``, {backend name: {kwarg: value}},
    over their configured kwargs: how a CLI flag that is a store setting builds the backend with it), its
    cache and breaker, and its shared tier opened from the settings resolved at load (no connection)."""
    from credpath._search_path import SearchPath

    specs = list(settings.backends)
    if backend_kwargs:
        names = [spec.name for spec in specs]
        unknown = sorted(set(backend_kwargs) - set(names))
        if unknown:
            raise ConfigError(
                f"no backend named {unknown[0]!r} in the search path (have: {', '.join(names)})"
            )
        specs = [
            spec.replace(kwargs={**spec.kwargs, **backend_kwargs[spec.name]})
            if spec.name in backend_kwargs
            else spec
            for spec in specs
        ]
    kwargs.setdefault("breaker", settings.breaker)
    if "shared" not in kwargs and settings.shared is not None:
        # Resolved at load: handed over, so the search path does not resolve ``[cache] shared`` again
        # (Settings built in code with only ``CacheSettings.shared`` leave that to the search path).
        kwargs["shared"] = open_shared_tier(settings.shared, specs) if settings.cache.enabled else None
    path = SearchPath(specs, cache=settings.cache, **kwargs)
    _built[path] = settings
    return path


def open_shared_tier(shared: SharedTierSettings, specs: list[Any]) -> Any:
    """The shared tier for resolved settings (its store opened lazily: no connection here)."""
    from credpath._shared_cache import SharedTier, open_store, scope_of

    return SharedTier(open_store(shared.url), list(shared.keys), scope_of(specs), lease=shared.lease)


def search_path_from_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    backend_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> SearchPath:
    """Load the settings and build their search path: what the CLI, the API and the web app call."""
    settings = load_settings(path, env)
    if settings.audit or any(k.startswith("CREDPATH_AUDIT_") for k in (os.environ if env is None else env)):
        from credpath import _audit  # ~5 ms of start-up, paid only where auditing is configured

        _audit.setup(settings.config_file, env)  # [audit] and CREDPATH_AUDIT_*: bad input fails here
    return build_search_path(settings, backend_kwargs=backend_kwargs)


def settings_of(search_path: Any) -> Settings | None:
    """The settings a search path was built from by :func:`build_search_path` (None if built in code)."""
    try:
        return _built.get(search_path)
    except TypeError:  # not weak-referenceable: not one of ours
        return None


def backends_order(search_path: Any) -> BackendsOrder:
    """The effective order of ``search_path`` and its source (for ``credpath backends list`` and the web
    backends view): from its settings, else the order of its entries as built in code."""
    settings = settings_of(search_path)
    if settings is not None and settings.order is not None:
        return settings.order
    return BackendsOrder(tuple(e.name for e in getattr(search_path, "entries", ())), "built in code")
