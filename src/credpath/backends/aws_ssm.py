"""AWS SSM Parameter Store backend, a drop-in for Airflow's ``SystemsManagerParameterStoreBackend``.

Parameter names are ``<prefix>/<id>`` with a leading ``/`` ensured (as Airflow does); a null prefix switches
that kind off. Reads decrypt SecureStrings. Cost: one ``GetParameter`` per uncached read; ``GetParameters``
(10 names per call, AWS's limit) for batches; ``GetParametersByPath`` (10 per page) for prefix prefetch
and listing. Writes are SecureStrings. Kwargs, deadlines and retries as for Secrets Manager (``_aws.py``);
a team lookup tries ``<prefix>/<team>--<id>`` first, under an empty prefix too (as Airflow's SSM backend).
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar, Unpack

from credpath._deadlines import Deadline
from credpath.backends._aws import AwsBackend, AwsOptions, client_error_code
from credpath.model import Connection
from credpath.protocol import Capability, Kind, Serialization

__all__ = ["BATCH_SIZE", "ParameterStoreBackend"]


log = logging.getLogger("credpath.backends.aws_ssm")

BATCH_SIZE = 10  # GetParameters' limit
PAGE_SIZE = 10  # GetParametersByPath's MaxResults limit
# Characters SSM allows in a parameter name: anything else cannot exist, so it is a miss without a call.
_VALID_NAME = re.compile(r"^[a-zA-Z0-9_.\-/]{1,2048}$")


class ParameterStoreBackend(AwsBackend):
    alias: ClassVar[str] = "aws-ssm"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({"write", "list", "batch", "prefetch"})
    store_name: ClassVar[str] = "AWS Systems Manager Parameter Store"
    requires: ClassVar[tuple[str, ...]] = ("botocore",)
    extra: ClassVar[str | None] = "aws"
    service: ClassVar[str] = "ssm"
    noun: ClassVar[str] = "parameter"
    batch_size: ClassVar[int] = BATCH_SIZE
    list_results: ClassVar[str] = "Parameters"

    def __init__(
        self,
        connections_prefix: str | None = "/airflow/connections",
        variables_prefix: str | None = "/airflow/variables",
        config_prefix: str | None = "/airflow/config",
        *,
        kms_key_id: str | None = None,
        **options: Unpack[AwsOptions],
    ) -> None:
        super().__init__(
            connections_prefix,
            variables_prefix,
            config_prefix,
            sep="/",  # SSM's hierarchy separator; not an Airflow kwarg for this backend
            absolute=True,
            # Airflow's SSM backend tries the team's name whatever the prefix ("" gives "/<team>--<id>").
            team_under_empty_prefix=True,
            **options,
        )
        self.kms_key_id = kms_key_id
        self.aws = self._open_session()

    # --- naming ------------------------------------------------------------------------------------

    name_noun: ClassVar[str] = "parameter name"
    name_rules: ClassVar[str] = "letters, digits, '_', '.', '-', '/'; at most 2048"

    def _can_exist(self, name: str) -> bool:
        return _VALID_NAME.match(name) is not None

    # --- reads -------------------------------------------------------------------------------------

    def _get_name(self, kind: Kind, key: str, name: str, deadline: Deadline) -> str | None:
        try:
            response = self._call(
                "get_parameter", {"Name": name, "WithDecryption": True}, f"parameter {name!r}", deadline
            )
        except Exception as exc:  # translated, never re-raised raw
            if client_error_code(exc) == "ParameterNotFound":
                log.debug("%s: parameter %s not found", self.name, name)
                return None
            raise self.aws.error(exc, f"parameter {name!r}") from None
        log.debug("%s: read parameter %s", self.name, name)
        value: str = response["Parameter"]["Value"]
        return value

    # --- batches -----------------------------------------------------------------------------------

    def _batch_get(self, names: dict[str, str]) -> dict[str, str]:
        found: dict[str, str] = {}
        # GetParameters has no NextToken: one response per chunk.
        for response in self._batch_responses(names, "get_parameters", "Names", WithDecryption=True):
            # Misses come back in InvalidParameters; anything else failing fails the whole call.
            for parameter in response.get("Parameters", []):
                name = parameter.get("Name")
                if name in names:
                    found[names[name]] = parameter["Value"]
        log.debug("%s: batch read %d of %d parameter(s)", self.name, len(found), len(names))
        return found

    def _prefetch(self, kind: Kind) -> dict[str, str]:
        return self._by_path(kind, decrypt=True)

    def _list_keys(self, kind: Kind) -> dict[str, str]:
        return self._by_path(kind, decrypt=False)

    def _list_request(self, head: str) -> tuple[str, dict[str, Any], str]:
        path = head[:-1]  # head is the rooted prefix plus "/"
        params = {"Path": path, "Recursive": True, "MaxResults": PAGE_SIZE}
        return "get_parameters_by_path", params, f"parameters under {path!r}"

    def _by_path(self, kind: Kind, *, decrypt: bool) -> dict[str, str]:
        """{key: value} for every parameter under the kind's prefix (GetParametersByPath, recursive)."""
        return {key: entry.get("Value", "") for _, key, entry in self._listed(kind, WithDecryption=decrypt)}

    # --- writes ------------------------------------------------------------------------------------

    def set_connection(
        self, conn: Connection, *, overwrite: bool = True, serialization: Serialization = "json"
    ) -> None:
        if not conn.conn_id:
            raise self.config_error("connection has no conn_id")
        self._put(
            self._write_name("connection", conn.conn_id),
            self.serialize_connection(conn, serialization),
            overwrite=overwrite,
        )

    def _write(self, kind: Kind, key: str, value: str, *, overwrite: bool) -> None:
        self._put(self._write_name(kind, key), value, overwrite=overwrite)

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
            self._call("put_parameter", params, f"write parameter {name!r}")
        except Exception as exc:
            if client_error_code(exc) == "ParameterAlreadyExists":
                raise self.config_error(
                    f"parameter {name!r} already exists (overwrite not allowed)"
                ) from None
            raise self.aws.error(exc, f"write parameter {name!r}") from None
        log.debug("%s: wrote parameter %s", self.name, name)

    def delete_connection(self, conn_id: str) -> bool:
        return self._delete(self._write_name("connection", conn_id))

    def delete_variable(self, key: str) -> bool:
        return self._delete(self._write_name("variable", key))

    def _delete(self, name: str) -> bool:
        try:
            self._call("delete_parameter", {"Name": name}, f"delete parameter {name!r}")
        except Exception as exc:
            if client_error_code(exc) == "ParameterNotFound":
                return False
            raise self.aws.error(exc, f"delete parameter {name!r}") from None
        log.debug("%s: deleted parameter %s", self.name, name)
        return True

    # --- misc --------------------------------------------------------------------------------------

    def check(self) -> str:
        try:
            self._call("describe_parameters", {"MaxResults": 1}, "check (DescribeParameters)")
        except Exception as exc:
            raise self.aws.error(exc, "check (DescribeParameters)") from None
        return f"AWS SSM Parameter Store reachable ({self.aws.describe()})"
