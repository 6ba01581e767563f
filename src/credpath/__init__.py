"""credpath: Airflow-compatible connections and variables from any chain of secret stores.

The names below (``__all__``) are the package's public surface, documented in the README's "Python API"
section; ``tests/test_public_api.py`` keeps the two in step. Start with :func:`get_connection`,
:func:`get_variable` and :func:`get_config` (on a process-wide search path built from the configuration),
or build a :class:`SearchPath` yourself.

Everything is imported lazily so that ``import credpath`` stays cheap and never pulls in a store's
client library (boto3, hvac, SQLAlchemy, google, azure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Connection": "credpath.model",
    "Variable": "credpath.model",
    "NotFound": "credpath.errors",
    "ConfigError": "credpath.errors",
    "BackendError": "credpath.errors",
    "AccessDenied": "credpath.errors",
    "BackendUnavailable": "credpath.errors",
    "BackendTimeout": "credpath.errors",
    "CircuitOpen": "credpath.errors",
    "CredpathError": "credpath.errors",
    "MissingDependency": "credpath.errors",
    "MissingFile": "credpath.errors",
    "SearchPath": "credpath._search_path",
    "get_connection": "credpath.api",
    "aget_connection": "credpath.api",
    "aget_variable": "credpath.api",
    "get_variable": "credpath.api",
    "get_config": "credpath.api",
    "default_search_path": "credpath.api",
    "set_default_search_path": "credpath.api",
    "mask_secret": "credpath._masking",
}

__all__ = [
    "AccessDenied",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "CircuitOpen",
    "ConfigError",
    "Connection",
    "CredpathError",
    "MissingDependency",
    "MissingFile",
    "NotFound",
    "SearchPath",
    "Variable",
    "aget_connection",
    "aget_variable",
    "default_search_path",
    "get_config",
    "get_connection",
    "get_variable",
    "mask_secret",
    "set_default_search_path",
]

if TYPE_CHECKING:
    from credpath._masking import mask_secret
    from credpath._search_path import SearchPath
    from credpath.api import (
        aget_connection,
        aget_variable,
        default_search_path,
        get_config,
        get_connection,
        get_variable,
        set_default_search_path,
    )
    from credpath.errors import (
        AccessDenied,
        BackendError,
        BackendTimeout,
        BackendUnavailable,
        CircuitOpen,
        ConfigError,
        CredpathError,
        MissingDependency,
        MissingFile,
        NotFound,
    )
    from credpath.model import Connection, Variable


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'credpath' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value
