"""The Airflow half of the differential harness, run by the Airflow 3.3.2 venv's python (one process a batch).

Reads ``{"cases": [{"op": ..., ...}, ...]}`` as JSON on stdin and writes a JSON list of results in the same
order to the file named by its argument: ``{"outcome": OUTCOME, "value": ...}``. OUTCOME is one of a small
set shared with the credpath half (:func:`classify`): ``ok``, ``missing`` (None), ``rejected`` (the input is
refused: ValueError, TypeError, AirflowException, a YAML error), ``file_not_found``, or ``error:<Class>``
for anything else.

The module imports nothing of Airflow at import time, so the test process reuses :func:`classify` and
:func:`fields`. Airflow's secrets masker is switched off here: it recompiles one regular expression per new
secret, which would make thousands of generated connections take minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

# Airflow's and its providers' "bad input" errors (VaultError: the hashicorp provider's bad settings).
REJECTED_NAMES = frozenset({"AirflowException", "YAMLError", "ConfigError", "VaultError"})


def classify(exc: BaseException) -> str:
    """The outcome class of an exception, the same for both halves."""
    if isinstance(exc, FileNotFoundError):
        return "file_not_found"
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, ValueError | TypeError | UnicodeError) or names & REJECTED_NAMES:
        return "rejected"
    return f"error:{type(exc).__name__}"


def extra_value(extra: Any) -> Any:
    """``extra`` as data: the parsed object, or the text itself when it is not JSON."""
    if extra is None or extra == "":
        return extra
    try:
        return json.loads(extra)
    except (TypeError, ValueError):
        return {"<not json>": str(extra)}


def fields(conn: Any) -> dict[str, Any]:
    """Every field of an Airflow or credpath connection object, as JSON data."""
    return {
        "conn_id": getattr(conn, "conn_id", None),
        "conn_type": conn.conn_type,
        "description": conn.description,
        "host": conn.host,
        "login": conn.login,
        "password": conn.password,
        "schema": conn.schema,
        "port": conn.port,
        "extra": extra_value(conn.extra),
    }


def run(func: Callable[[], Any]) -> dict[str, Any]:
    try:
        value = func()
    except Exception as exc:
        return {"outcome": classify(exc), "value": None}
    if value is None:
        return {"outcome": "missing", "value": None}
    return {"outcome": "ok", "value": value}


@contextlib.contextmanager
def environ(values: dict[str, str], multi_team: bool) -> Iterator[None]:
    """Exactly ``values`` as AIRFLOW_CONN_*/AIRFLOW_VAR_*, and [core] multi_team (read at call time)."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__SECRETS__", "AIRFLOW__WORKERS__")):
            del os.environ[name]
    os.environ.update(values)
    os.environ["AIRFLOW__CORE__MULTI_TEAM"] = "True" if multi_team else "False"
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# --- the Airflow side ---------------------------------------------------------------------------------


class _Recorder:
    """Answers every store read with 'not found' and records the names asked for, in order."""

    def __init__(self) -> None:
        self.names: list[Any] = []


def _aws_client(recorder: _Recorder, operation: str, not_found: str) -> Any:
    class Exceptions:
        pass

    for name in (
        "ResourceNotFoundException",
        "InvalidParameterException",
        "InvalidRequestException",
        "DecryptionFailure",
        "InternalServiceError",
        "ParameterNotFound",
    ):
        setattr(Exceptions, name, type(name, (Exception,), {}))

    class Client:
        exceptions = Exceptions

        def __getattr__(self, item: str) -> Any:
            if item != operation:
                raise AttributeError(item)

            def call(**kwargs: Any) -> Any:
                recorder.names.append(kwargs.get("SecretId") or kwargs.get("Name"))
                raise getattr(Exceptions, not_found)()

            return call

    return Client()


def _provider_backend(backend: str, kwargs: dict[str, Any], recorder: _Recorder) -> Any:
    if backend == "vault":
        from airflow.providers.hashicorp.secrets.vault import VaultBackend
        from hvac.exceptions import InvalidPath

        vault = VaultBackend(**kwargs)
        client = vault.vault_client

        def get_secret(secret_path: str, secret_version: Any = None) -> Any:
            try:
                mount, path = client._parse_secret_path(secret_path)
            except InvalidPath:
                return None
            # The secret the server reads: Vault answers a path with repeated slashes (an empty base path
            # gives "/<team>/<id>") with a redirect to the cleaned path, which hvac follows.
            recorder.names.append([mount, re.sub("/+", "/", path).lstrip("/")])
            return None

        client.get_secret = get_secret
        return vault
    if backend == "aws-secrets-manager":
        from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend

        sm = SecretsManagerBackend(**kwargs)
        sm.__dict__["client"] = _aws_client(recorder, "get_secret_value", "ResourceNotFoundException")
        return sm
    if backend == "aws-ssm":
        from airflow.providers.amazon.aws.secrets.systems_manager import (
            SystemsManagerParameterStoreBackend,
        )

        ssm = SystemsManagerParameterStoreBackend(**kwargs)
        ssm.__dict__["client"] = _aws_client(recorder, "get_parameter", "ParameterNotFound")
        return ssm
    if backend == "gcp-secret-manager":
        from airflow.providers.google.cloud.secrets import secret_manager

        class Client:
            def get_secret(self, secret_id: str, project_id: str, secret_version: str = "latest") -> None:
                recorder.names.append(secret_id)

        cls = type(
            "RecordingGcp",
            (secret_manager.CloudSecretManagerBackend,),
            {"client": property(lambda self: Client())},
        )
        return cls(**kwargs)
    if backend == "azure-key-vault":
        from airflow.providers.microsoft.azure.secrets.key_vault import AzureKeyVaultBackend
        from azure.core.exceptions import ResourceNotFoundError

        class AzureClient:
            def get_secret(self, name: str) -> Any:
                recorder.names.append(name)
                raise ResourceNotFoundError("not found")

        azure = AzureKeyVaultBackend(**kwargs)
        azure.__dict__["client"] = AzureClient()
        return azure
    raise ValueError(f"unknown backend {backend!r}")


def _lookup(backend: Any, kind: str, key: str, team: str | None) -> Any:
    if kind == "connection":
        return backend.get_conn_value(key, team_name=team)
    if kind == "variable":
        return backend.get_variable(key, team_name=team)
    return backend.get_config(key)


def _names(case: dict[str, Any]) -> list[Any]:
    recorder = _Recorder()
    with environ({}, case.get("multi_team", False)):
        backend = _provider_backend(case["backend"], dict(case["kwargs"]), recorder)
        _lookup(backend, case["kind"], case["key"], case.get("team"))
    return recorder.names


def _aws_conn(case: dict[str, Any]) -> Any:
    from airflow.models.connection import Connection
    from airflow.providers.amazon.aws.secrets.secrets_manager import SecretsManagerBackend

    sm = SecretsManagerBackend(**case.get("kwargs", {}))

    class Client:
        def get_secret_value(self, SecretId: str) -> dict[str, str]:
            return {"SecretString": case["secret"]}

    sm.__dict__["client"] = Client()
    value = sm.get_conn_value("c")
    if value is None:
        return None
    return fields(sm._deserialize_connection_value(Connection, "c", value))


def _files_missing(case: dict[str, Any]) -> Any:
    from airflow.secrets.local_filesystem import LocalFilesystemBackend

    if case["kind"] == "connection":
        return LocalFilesystemBackend(connections_file_path=case["path"]).get_connection("x")
    return LocalFilesystemBackend(variables_file_path=case["path"]).get_variable("x")


def _vault_jwt_missing(case: dict[str, Any]) -> Any:
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

    backend = VaultBackend(
        url=case["url"],
        auth_type="kubernetes",
        kubernetes_role="airflow",
        kubernetes_jwt_path=case["path"],
    )
    return backend.get_conn_value("x")


def _override(case: dict[str, Any]) -> Any:
    from airflow.configuration import conf

    with environ(case["env"], False):
        backend = conf._get_custom_secret_backend()
    client = backend.vault_client
    return {"url": client.url, "token": client.token, "mount_point": client.mount_point}


def _env_lookup(case: dict[str, Any]) -> Any:
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend

    with environ(case["environ"], case.get("multi_team", False)):
        return _lookup(EnvironmentVariablesBackend(), case["kind"], case["key"], case.get("team"))


def _env_change(case: dict[str, Any]) -> Any:
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend

    backend = EnvironmentVariablesBackend()
    seen = []
    for value in case["values"]:
        with environ({case["name"]: value}, False):
            seen.append(backend.get_conn_value(case["key"]))
    return seen


def _construct(case: dict[str, Any]) -> Any:
    providers = "airflow.providers"
    classes = {
        "vault": f"{providers}.hashicorp.secrets.vault.VaultBackend",
        "aws-secrets-manager": f"{providers}.amazon.aws.secrets.secrets_manager.SecretsManagerBackend",
        "aws-ssm": f"{providers}.amazon.aws.secrets.systems_manager.SystemsManagerParameterStoreBackend",
        "gcp-secret-manager": f"{providers}.google.cloud.secrets.secret_manager.CloudSecretManagerBackend",
        "azure-key-vault": f"{providers}.microsoft.azure.secrets.key_vault.AzureKeyVaultBackend",
    }
    import importlib

    module, _, name = classes[case["backend"]].rpartition(".")
    getattr(importlib.import_module(module), name)(**case["kwargs"])
    return "constructed"


def _ops() -> dict[str, Callable[[dict[str, Any]], Any]]:
    from airflow.models.connection import Connection
    from airflow.secrets import BaseSecretsBackend
    from airflow.secrets.local_filesystem import load_connections_dict, load_variables

    def build(case: dict[str, Any]) -> Any:
        return Connection(conn_id="c", **case["fields"])

    def value(case: dict[str, Any]) -> Any:
        return fields(BaseSecretsBackend._deserialize_connection_value(Connection, "c", case["text"]))

    return {
        "uri": lambda c: fields(Connection(conn_id="c", uri=c["uri"])),
        "json": lambda c: fields(Connection.from_json(c["text"], conn_id="c")),
        "value": value,
        "get_uri": lambda c: build(c).get_uri(),
        "uri_roundtrip": lambda c: fields(Connection(conn_id="c", uri=build(c).get_uri())),
        "to_json": lambda c: json.loads(build(c).as_json()),
        "json_roundtrip": lambda c: fields(Connection.from_json(build(c).as_json(), conn_id="c")),
        "conn_id": lambda c: Connection(conn_id=c["conn_id"], conn_type="http").conn_id,
        "conn_file": lambda c: {k: fields(v) for k, v in load_connections_dict(c["path"]).items()},
        "var_file": lambda c: load_variables(c["path"]),
        "env": _env_lookup,
        "env_change": _env_change,
        "names": _names,
        "aws_conn": _aws_conn,
        "construct": _construct,
        "files_missing": _files_missing,
        "vault_jwt_missing": _vault_jwt_missing,
        "override": _override,
    }


def main() -> None:
    import logging

    logging.disable(logging.CRITICAL)  # provider warnings would only slow the batch down
    import airflow.models.connection as connection_module

    connection_module.mask_secret = lambda *args, **kwargs: None  # see the module docstring
    from airflow.providers.google.cloud.secrets import secret_manager

    # No credential discovery (it would probe the GCE metadata server): naming needs no credentials.
    secret_manager.get_credentials_and_project_id = lambda **kwargs: (None, None)
    ops = _ops()
    cases = json.load(sys.stdin)["cases"]
    results = [run(lambda case=case: ops[case["op"]](case)) for case in cases]
    # To a file: Airflow's loggers write to stdout.
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        json.dump(results, out, default=lambda o: {"<python>": type(o).__name__, "str": str(o)})


if __name__ == "__main__":
    main()
