"""Settings: ``credpath.toml``, ``CREDPATH_*`` and Airflow's ``AIRFLOW__SECRETS__*`` environment variables.

The loading, checks and the search-path builder live in :mod:`credpath._settings`; this module keeps the
names callers already import.
"""

from __future__ import annotations

from credpath._settings import (
    ENV_BACKEND,
    ENV_BACKEND_KWARG_PREFIX,
    ENV_BACKEND_KWARGS,
    ENV_CACHE_KEY,
    ENV_CACHE_SHARED,
    ON_ERROR_CHOICES,
    BackendsOrder,
    BackendSpec,
    Settings,
    SharedTierSettings,
    airflow_backend_kwargs,
    airflow_custom_backend,
    airflow_default_backends,
    config_path,
    credpath_home,
    default_name,
    kinds_from_patterns,
    load_settings,
    parse_backend,
    parse_backends,
    parse_breaker,
    parse_cache,
    parse_shared,
    read_toml,
)

__all__ = [
    "ENV_BACKEND",
    "ENV_BACKEND_KWARGS",
    "ENV_BACKEND_KWARG_PREFIX",
    "ENV_CACHE_KEY",
    "ENV_CACHE_SHARED",
    "ON_ERROR_CHOICES",
    "BackendSpec",
    "BackendsOrder",
    "Settings",
    "SharedTierSettings",
    "airflow_backend_kwargs",
    "airflow_custom_backend",
    "airflow_default_backends",
    "config_path",
    "credpath_home",
    "default_name",
    "kinds_from_patterns",
    "load_settings",
    "parse_backend",
    "parse_backends",
    "parse_breaker",
    "parse_cache",
    "parse_shared",
    "read_toml",
]
