"""Backend types by short alias or dotted class path; Airflow's provider classes map to credpath's own."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from credpath.errors import ConfigError

__all__ = [
    "AIRFLOW_CLASS_PATHS",
    "ALIASES",
    "ENTRY_POINT_GROUP",
    "create_backend",
    "declared_options",
    "load_class",
    "resolve_type",
]


ALIASES: dict[str, str] = {
    "env": "credpath.backends.env.EnvironmentBackend",
    "files": "credpath.backends.files.LocalFilesystemBackend",
    "metastore": "credpath.backends.metastore.MetastoreBackend",
    "vault": "credpath.backends.vault.VaultBackend",
    "aws-secrets-manager": "credpath.backends.aws_secrets_manager.SecretsManagerBackend",
    "aws-ssm": "credpath.backends.aws_ssm.ParameterStoreBackend",
    "gcp-secret-manager": "credpath.backends.gcp_secret_manager.SecretManagerBackend",
    "azure-key-vault": "credpath.backends.azure_key_vault.KeyVaultBackend",
    "airflow-db": "credpath.backends.airflow_db.AirflowDatabaseBackend",
    "kubernetes-secrets": "credpath.backends.kubernetes_secrets.KubernetesSecretsBackend",
    "kubernetes-labels": "credpath.backends.kubernetes_labels.KubernetesLabelSecretsBackend",
    "vault-database": "credpath.backends.vault_database.VaultDatabaseBackend",
    "aws-sts": "credpath.backends.aws_sts.AwsStsBackend",
}

#: Installed packages register more aliases here: ``[project.entry-points."credpath.backends"]``
#: ``my-store = "my_package.module:MyBackend"``. Consulted only for a name that is no built-in alias.
ENTRY_POINT_GROUP = "credpath.backends"

# Class paths published in Airflow's and Astronomer's guides -> credpath alias, so those configurations
# work with no Airflow installed.
AIRFLOW_CLASS_PATHS: dict[str, str] = {
    "airflow.providers.hashicorp.secrets.vault.VaultBackend": "vault",
    "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend": "aws-secrets-manager",
    "airflow.providers.amazon.aws.secrets.systems_manager.SystemsManagerParameterStoreBackend": "aws-ssm",
    "airflow.providers.google.cloud.secrets.secret_manager.CloudSecretManagerBackend": "gcp-secret-manager",
    "airflow.providers.microsoft.azure.secrets.key_vault.AzureKeyVaultBackend": "azure-key-vault",
    "airflow.secrets.local_filesystem.LocalFilesystemBackend": "files",
    "airflow.secrets.environment_variables.EnvironmentVariablesBackend": "env",
    "airflow.providers.cncf.kubernetes.secrets.kubernetes_secrets_backend.KubernetesSecretsBackend": (
        "kubernetes-labels"
    ),
}


def resolve_type(type_name: str, *, setting: str = "type") -> tuple[str, str]:
    """Return (alias or class path, dotted class path) for a configured backend type."""
    if not isinstance(type_name, str) or not type_name.strip():
        raise ConfigError(
            f"{setting} must be a backend alias ({', '.join(sorted(ALIASES))}) or a dotted class path"
        )
    type_name = type_name.strip()
    alias = AIRFLOW_CLASS_PATHS.get(type_name, type_name)
    if alias in ALIASES:
        return alias, ALIASES[alias]
    if "." not in type_name and (plugin := _entry_point_alias(type_name)) is not None:
        return type_name, plugin
    if "." not in type_name:
        raise ConfigError(
            f"{setting}: unknown backend type {type_name!r}; use one of {', '.join(sorted(ALIASES))} "
            "or a dotted class path"
        )
    return type_name, type_name


def _entry_point_alias(name: str) -> str | None:
    """The dotted class path an installed package registers for alias ``name`` (lazily, on a miss)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return entry.value.strip().replace(":", ".")
    return None


def load_class(class_path: str, *, setting: str = "type") -> type:
    module_name, _, class_name = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None) or module_name
        raise ConfigError(f"{setting}: cannot import {class_path!r} (missing module {missing!r})") from None
    try:
        cls = getattr(module, class_name)
    except AttributeError:
        raise ConfigError(f"{setting}: module {module_name!r} has no class {class_name!r}") from None
    if not isinstance(cls, type):
        raise ConfigError(f"{setting}: {class_path!r} is not a class")
    return cls


def create_backend(
    type_name: str,
    kwargs: dict[str, Any] | None = None,
    *,
    setting: str = "type",
    name: str | None = None,
) -> Any:
    """Instantiate a backend; unknown or missing kwargs become a one-line ConfigError naming them.

    ``name`` is the configured name: credpath backends carry it from construction on, so every message,
    construction errors included, names the backend the user wrote. A store client that is not installed
    is reported here, before any use, with the extra that installs it.
    """
    from credpath.protocol import BaseBackend

    alias, class_path = resolve_type(type_name, setting=setting)
    cls = load_class(class_path, setting=setting)
    if issubclass(cls, BaseBackend):
        missing = cls.missing_dependency(name or alias)
        if missing is not None:
            raise missing
    kwargs = dict(kwargs or {})
    # Kwarg errors name the kwargs setting, not the type setting they were reached through.
    kwargs_setting = _kwargs_setting(setting)
    bad = [k for k in kwargs if not isinstance(k, str) or not k.isidentifier()]
    if bad:
        raise ConfigError(f"{kwargs_setting}: backend kwargs keys must be identifiers, got {bad!r}")
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        params = signature.parameters.values()
        var_keyword = [p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        known = {p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD}
        takes_any = bool(var_keyword)
        if var_keyword == ["options"] and issubclass(cls, BaseBackend):
            # The convention `**options: Unpack[SomeOptions]` (a TypedDict): still a closed set of names.
            known |= set(declared_options(cls))
            takes_any = False
        if not takes_any:
            unknown = sorted(set(kwargs) - known)
            if unknown:
                raise ConfigError(
                    f"{kwargs_setting}: unknown kwarg(s) {', '.join(unknown)} for backend {class_path}; "
                    f"accepted: {', '.join(sorted(known)) or 'none'}"
                )
        try:
            signature.bind(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{kwargs_setting}: bad kwargs for backend {class_path}: {exc}") from None
    if issubclass(cls, BaseBackend) and name:
        backend = cls.__new__(cls)
        backend.name = name
        cls.__init__(backend, **kwargs)  # the name is set before __init__ runs, so its errors carry it
        return backend
    return cls(**kwargs)


def _kwargs_setting(type_setting: str) -> str:
    """The setting that holds the kwargs beside a type setting ("x backends[0] type" -> "... kwargs",
    "AIRFLOW__SECRETS__BACKEND" -> "AIRFLOW__SECRETS__BACKEND_KWARGS")."""
    if type_setting.endswith(" type"):
        return type_setting.removesuffix(" type") + " kwargs"
    if type_setting.isupper() and " " not in type_setting:
        return type_setting + "_KWARGS"
    return type_setting + " kwargs"


def declared_options(cls: type) -> tuple[str, ...]:
    """Names of the TypedDict that ``cls.__init__``'s ``**options`` unpacks (BackendOptions by default)."""
    import typing

    from credpath.protocol import BackendOptions

    try:
        hint = typing.get_type_hints(cls.__init__, include_extras=True).get("options")  # type: ignore[misc]
    except (NameError, TypeError):
        hint = None
    args = typing.get_args(hint) if typing.get_origin(hint) is typing.Unpack else ()
    options = args[0] if args and typing.is_typeddict(args[0]) else BackendOptions
    return tuple(options.__annotations__)
