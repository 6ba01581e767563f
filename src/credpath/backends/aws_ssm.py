"""AWS SSM Parameter Store backend, a drop-in for Airflow's ``SystemsManagerParameterStoreBackend``.

Parameter names are ``<prefix>/<id>`` with a leading ``/`` ensured (as Airflow does); a null prefix switches
that kind off. Reads decrypt SecureStrings. Cost: one ``GetParameter`` per uncached read; ``GetParameters``
(10 names per call, AWS's limit) for batches; ``GetParametersByPath`` (10 per page) for prefix prefetch
and listing. Writes are SecureStrings.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar

from credpath.backends._aws import AwsSession, chunks, client_error_code
from credpath.errors import ConfigError
from credpath.model import Connection
from credpath.protocol import BaseBackend, Kind

log = logging.getLogger("credpath.backends.aws_ssm")

BATCH_SIZE = 10  # GetParameters' limit
PAGE_SIZE = 10  # GetParametersByPath's MaxResults limit
# Characters SSM allows in a parameter name: anything else cannot exist, so it is a miss without a call.
_VALID_NAME = re.compile(r"^[a-zA-Z0-9_.\-/]{1,2048}$")


class ParameterStoreBackend(BaseBackend):
    alias: ClassVar[str] = "aws-ssm"
    store_name: ClassVar[str] = "AWS Systems Manager Parameter Store"

    def __init__(
        self,
        connections_prefix: str | None = "/airflow/connections",
        variables_prefix: str | None = "/airflow/variables",
        config_prefix: str | None = "/airflow/config",
        *,
        connections_lookup_pattern: str | None = None,
        variables_lookup_pattern: str | None = None,
        config_lookup_pattern: str | None = None,
        connection_format: str | dict[str, Any] | None = None,
        region_name: str | None = None,
        profile_name: str | None = None,
        role_arn: str | None = None,
        assume_role_kwargs: dict[str, Any] | None = None,
        endpoint_url: str | None = None,
        verify: bool | str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        config_kwargs: dict[str, Any] | None = None,
        kms_key_id: str | None = None,
    ) -> None:
        super().__init__(
            connections_lookup_pattern=connections_lookup_pattern,
            variables_lookup_pattern=variables_lookup_pattern,
            config_lookup_pattern=config_lookup_pattern,
            connection_format=connection_format,
        )
        for setting, prefix in (
            ("connections_prefix", connections_prefix),
            ("variables_prefix", variables_prefix),
            ("config_prefix", config_prefix),
        ):
            if prefix is not None and not isinstance(prefix, str):
                raise ConfigError(f"{setting} must be a string or null, got {type(prefix).__name__}")
        self.prefixes: dict[Kind, str | None] = {
            "connection": connections_prefix.rstrip("/") if connections_prefix else connections_prefix,
            "variable": variables_prefix.rstrip("/") if variables_prefix else variables_prefix,
            "config": config_prefix.rstrip("/") if config_prefix else config_prefix,
        }
        self.kms_key_id = kms_key_id
        self.aws = AwsSession(
            "aws-ssm",
            region_name=region_name,
            profile_name=profile_name,
            role_arn=role_arn,
            assume_role_kwargs=assume_role_kwargs,
            endpoint_url=endpoint_url,
            verify=verify,
            aws_access_key_id=aws_access_key_id,
            aws_secret_access_key=aws_secret_access_key,
            aws_session_token=aws_session_token,
            config_kwargs=config_kwargs,
        )

    @property
    def client(self) -> Any:
        return self.aws.client("ssm")

    # --- naming ------------------------------------------------------------------------------------

    def parameter_name(self, kind: Kind, key: str) -> str | None:
        prefix = self.prefixes[kind]
        if prefix is None or not self.wants(kind, key):
            return None
        name = f"{prefix}/{key}" if prefix else key
        return name if name.startswith("/") else f"/{name}"

    def _names(self, kind: Kind, keys: list[str]) -> dict[str, str]:
        names: dict[str, str] = {}
        for key in dict.fromkeys(keys):
            name = self.parameter_name(kind, key)
            if name is not None and _VALID_NAME.match(name):
                names[name] = key
        return names

    # --- reads -------------------------------------------------------------------------------------

    def get_conn_value(self, conn_id: str) -> str | None:
        return self._get("connection", conn_id)

    def get_variable(self, key: str) -> str | None:
        return self._get("variable", key)

    def get_config(self, key: str) -> str | None:
        return self._get("config", key)

    def _get(self, kind: Kind, key: str) -> str | None:
        name = self.parameter_name(kind, key)
        if name is None:
            return None
        if not _VALID_NAME.match(name):
            log.debug("%s: %s %r cannot be a parameter name; a miss", self.name, kind, key)
            return None
        try:
            response = self.client.get_parameter(Name=name, WithDecryption=True)
        except Exception as exc:  # translated, never re-raised raw
            if client_error_code(exc) == "ParameterNotFound":
                log.debug("%s: parameter %s not found", self.name, name)
                return None
            raise self.aws.error(exc, f"parameter {name!r}") from None
        log.debug("%s: read parameter %s", self.name, name)
        return response["Parameter"]["Value"]

    # --- batches -----------------------------------------------------------------------------------

    def get_conn_values(self, ids: list[str]) -> dict[str, str]:
        return self._batch_get(self._names("connection", list(ids)))

    def get_variables(self, keys: list[str]) -> dict[str, str]:
        return self._batch_get(self._names("variable", list(keys)))

    def _batch_get(self, names: dict[str, str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in chunks(list(names), BATCH_SIZE):
            try:
                response = self.client.get_parameters(Names=chunk, WithDecryption=True)
            except Exception as exc:
                raise self.aws.error(
                    exc, f"batch read of {len(chunk)} parameter(s) from {chunk[0]!r}"
                ) from None
            # Misses come back in InvalidParameters; anything else failing fails the whole call above.
            for parameter in response.get("Parameters", []):
                name = parameter.get("Name")
                if name in names:
                    found[names[name]] = parameter["Value"]
        log.debug("%s: batch read %d of %d parameter(s)", self.name, len(found), len(names))
        return found

    def prefetch_connections(self) -> dict[str, str]:
        return self._by_path("connection", decrypt=True)

    def prefetch_variables(self) -> dict[str, str]:
        return self._by_path("variable", decrypt=True)

    def _by_path(self, kind: Kind, *, decrypt: bool) -> dict[str, str]:
        """{key: value} for every parameter under the kind's prefix (GetParametersByPath, recursive)."""
        prefix = self.prefixes[kind]
        if not prefix:
            # Null: kind is off. Empty: the whole account's parameters would match; refuse.
            return {}
        path = prefix if prefix.startswith("/") else f"/{prefix}"
        head = f"{path}/"
        found: dict[str, str] = {}
        params: dict[str, Any] = {
            "Path": path,
            "Recursive": True,
            "WithDecryption": decrypt,
            "MaxResults": PAGE_SIZE,
        }
        while True:
            try:
                response = self.client.get_parameters_by_path(**params)
            except Exception as exc:
                raise self.aws.error(exc, f"parameters under {path!r}") from None
            for parameter in response.get("Parameters", []):
                name = parameter.get("Name", "")
                if not name.startswith(head):
                    continue
                key = name[len(head) :]
                if key and self.wants(kind, key):
                    found[key] = parameter.get("Value", "")
            token = response.get("NextToken")
            if not token:
                break
            params["NextToken"] = token
        return found

    def list_connections(self) -> list[str]:
        return sorted(self._by_path("connection", decrypt=False))

    def list_variables(self) -> list[str]:
        return sorted(self._by_path("variable", decrypt=False))

    # --- writes ------------------------------------------------------------------------------------

    def _target(self, kind: Kind, key: str) -> str:
        prefix = self.prefixes[kind]
        if prefix is None:
            setting = "connections_prefix" if kind == "connection" else "variables_prefix"
            raise ConfigError(f"{self.name}: {setting} is null, so {kind}s are switched off in this backend")
        name = f"{prefix}/{key}" if prefix else key
        name = name if name.startswith("/") else f"/{name}"
        if not key or not _VALID_NAME.match(name):
            raise ConfigError(
                f"{self.name}: {kind} id {key!r} is not a valid parameter name (letters, digits, _.-/ only)"
            )
        return name

    def set_connection(
        self, conn: Connection, *, overwrite: bool = True, serialization: str = "json"
    ) -> None:
        if not conn.conn_id:
            raise ConfigError("connection has no conn_id")
        self._put(
            self._target("connection", conn.conn_id),
            self.serialize_connection(conn, serialization),
            overwrite=overwrite,
        )

    def set_variable(self, key: str, value: str, *, overwrite: bool = True) -> None:
        if not isinstance(value, str):
            raise ConfigError(f"variable {key!r}: value must be a string, got {type(value).__name__}")
        self._put(self._target("variable", key), value, overwrite=overwrite)

    def _put(self, name: str, value: str, *, overwrite: bool) -> None:
        params: dict[str, Any] = {
            "Name": name,
            "Value": value,
            "Type": "SecureString",
            "Overwrite": overwrite,
        }
        if self.kms_key_id:
            params["KeyId"] = self.kms_key_id
        try:
            self.client.put_parameter(**params)
        except Exception as exc:
            if client_error_code(exc) == "ParameterAlreadyExists":
                raise ConfigError(
                    f"{self.name}: parameter {name!r} already exists (overwrite not allowed)"
                ) from None
            raise self.aws.error(exc, f"write parameter {name!r}") from None
        log.debug("%s: wrote parameter %s", self.name, name)

    def delete_connection(self, conn_id: str) -> bool:
        return self._delete(self._target("connection", conn_id))

    def delete_variable(self, key: str) -> bool:
        return self._delete(self._target("variable", key))

    def _delete(self, name: str) -> bool:
        try:
            self.client.delete_parameter(Name=name)
        except Exception as exc:
            if client_error_code(exc) == "ParameterNotFound":
                return False
            raise self.aws.error(exc, f"delete parameter {name!r}") from None
        log.debug("%s: deleted parameter %s", self.name, name)
        return True

    # --- misc --------------------------------------------------------------------------------------

    def check(self) -> str:
        try:
            self.client.describe_parameters(MaxResults=1)
        except Exception as exc:
            raise self.aws.error(exc, "check (DescribeParameters)") from None
        return f"AWS SSM Parameter Store reachable ({self.aws.describe()})"

    def describe(self) -> str:
        return f"aws-ssm ({self.aws.describe()})"

    def close(self) -> None:
        self.aws.close()
