"""``aws`` connections whose keys are temporary credentials from STS ``AssumeRole``.

``leases`` maps a connection id to a role: ``{"aws_reporting": {"role_arn":
"arn:aws:iam::123456789012:role/x", "role_session_name": "...", "duration_seconds": 900, "external_id": "...",
"extra": {...}}}``. Each lookup of
such an id gets an ``aws`` connection whose extra carries ``aws_access_key_id``, ``aws_secret_access_key`` and
``aws_session_token`` (the keys Airflow's ``AwsConnectionWrapper`` reads), plus the entry's own ``extra``
(``region_name``, ...). The base credentials that call STS are the backend's AWS settings (the same kwargs as
the Secrets Manager backend: keys, profile, region; ``AWS_ENDPOINT_URL_STS`` for a non-AWS endpoint).

The keys are held by :mod:`credpath._leases`: one set per process per id, re-minted (STS keys cannot be
renewed) at two thirds of their duration, never handed out with less than a tenth of it left. STS cannot
revoke one session's keys, so nothing is revoked at exit: they expire at ``duration_seconds`` (AWS's minimum
is 900 s). ``cache_results = False``: no cache tier keeps them. ``share = "node"`` or ``"deployment"``
shares one set through the shared cache tier instead (:mod:`credpath._lease_sharing`). Ids not in
``leases`` are misses.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Unpack

from credpath import _leases
from credpath.backends._aws import AwsOptions, AwsSession, client_error_code
from credpath.errors import AccessDenied, ConfigError
from credpath.protocol import BaseBackend

if TYPE_CHECKING:
    from credpath.model import Connection

__all__ = ["AwsStsBackend"]

_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
_ENTRY_KEYS = frozenset(
    {"role_arn", "role_session_name", "duration_seconds", "external_id", "policy", "extra", "share"}
)
DEFAULT_DURATION = 900


class AwsStsBackend(_leases.LeasedIds, BaseBackend):
    """``leases`` (id -> role entry) and the AWS settings of the caller that assumes the roles."""

    alias: ClassVar[str] = "aws-sts"
    store_name: ClassVar[str] = "AWS STS"
    requires: ClassVar[tuple[str, ...]] = ("botocore",)
    extra: ClassVar[str | None] = "aws"
    # Temporary keys live in the lease manager only: no cache tier may keep them past their expiry.
    cache_results: ClassVar[bool] = False

    def __init__(
        self, leases: dict[str, Any] | None = None, share: str = "process", **options: Unpack[AwsOptions]
    ) -> None:
        session = {k: options.pop(k) for k in list(options) if k in _SESSION_KEYS}  # type: ignore[misc]
        super().__init__(**options)  # type: ignore[misc]  # the AWS settings were popped above
        from credpath._lease_sharing import check_share

        self.share = check_share(share, "share", self.config_error)
        self.leases = _leases.parse_entries(
            leases, self._entry, self.config_error, shorthand="role_arn", known=_ENTRY_KEYS
        )
        self.aws = AwsSession(self, **session)
        self.lease_key_prefix = f"aws-sts:{self.name}:{id(self)}:"

    def _entry(self, conn_id: str, entry: Any) -> dict[str, Any]:
        where = f"leases.{conn_id}"
        arn = entry.get("role_arn")
        if not isinstance(arn, str) or not _ROLE_ARN.match(arn):
            raise self.config_error(
                f"{where}.role_arn must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
            )
        name = entry.get("role_session_name") or f"credpath-{conn_id}"[:64]
        name = re.sub(r"[^\w+=,.@-]", "-", name)
        if not _SESSION_NAME.match(name):
            raise self.config_error(f"{where}.role_session_name must be 2-64 characters of [\\w+=,.@-]")
        duration = entry.get("duration_seconds", DEFAULT_DURATION)
        if isinstance(duration, bool) or not isinstance(duration, int) or not 900 <= duration <= 43200:
            raise self.config_error(f"{where}.duration_seconds must be an integer from 900 to 43200")
        extra = entry.get("extra") or {}
        if not isinstance(extra, dict):
            raise self.config_error(f"{where}.extra must be an object")
        from credpath._lease_sharing import check_share

        share = check_share(entry.get("share", self.share), f"{where}.share", self.config_error)
        return {
            **entry,
            "role_session_name": name,
            "duration_seconds": duration,
            "extra": extra,
            "share": share,
        }

    @property
    def timeout(self) -> float:
        return self.aws.timeout

    def prepare(self) -> None:
        self.aws.client("sts")

    def use_shared_state(self, state: Any) -> None:
        self.lease_tier = state.tier  # where keys shared per node or deployment live

    # --- reads -------------------------------------------------------------------------------------

    def get_connection(self, conn_id: str, team_name: str | None = None) -> Connection | None:
        if conn_id not in self.leases or not self.wants("connection", conn_id):
            return None
        conn: Connection = self.leased(conn_id)
        return conn

    def get_conn_value(self, conn_id: str, team_name: str | None = None) -> str | None:
        conn = self.get_connection(conn_id, team_name)
        return None if conn is None else conn.to_json()

    def get_variable(self, key: str, team_name: str | None = None) -> str | None:
        return None

    # --- the lease source ---------------------------------------------------------------------------

    def mint(self, key: str) -> _leases.Minted:
        conn_id = self.conn_id_of(key)
        entry = self.leases[conn_id]
        params: dict[str, Any] = {
            "RoleArn": entry["role_arn"],
            "RoleSessionName": entry["role_session_name"],
            "DurationSeconds": entry["duration_seconds"],
        }
        if entry.get("external_id"):
            params["ExternalId"] = entry["external_id"]
        if entry.get("policy"):
            policy = entry["policy"]
            params["Policy"] = policy if isinstance(policy, str) else json.dumps(policy)
        what = f"assuming {entry['role_arn']} for lease {conn_id!r}"
        try:
            answer = self.aws.call("sts", "assume_role", params, what)
        except Exception as exc:
            code = client_error_code(exc)
            if code in ("ValidationError", "MalformedPolicyDocument", "NoSuchEntity"):
                raise self.config_error(f"{what}: {code}") from None
            error = self.aws.error(exc, what) if type(exc).__name__ == "ClientError" else exc
            if isinstance(error, AccessDenied):
                # A configuration fact, not an outage: one line, exit 2 from the CLI.
                raise ConfigError(
                    f"{error}: the trust policy or the caller's policy denies sts:AssumeRole"
                ) from None
            if error is exc:
                raise
            raise error from None
        creds = answer["Credentials"]
        from credpath._masking import mask_secret
        from credpath.model import Connection

        mask_secret(creds["SecretAccessKey"])
        mask_secret(creds["SessionToken"])
        extra = {
            **entry["extra"],
            "aws_access_key_id": creds["AccessKeyId"],
            "aws_secret_access_key": creds["SecretAccessKey"],
            "aws_session_token": creds["SessionToken"],
        }
        if "region_name" not in extra and self.aws.region_name:
            extra["region_name"] = self.aws.region_name
        expiration = creds["Expiration"]
        if isinstance(expiration, str):
            expiration = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        ttl = (expiration - datetime.now(UTC)).total_seconds()
        conn = Connection(conn_id=conn_id, conn_type="aws", extra=json.dumps(extra))
        lease_id = f"sts/{conn_id}/{creds['AccessKeyId']}"
        return _leases.Minted(conn, lease_id, max(ttl, 1.0), renewable=False, revocable=False)

    def renew(self, lease_id: str, increment: float) -> float:
        raise _leases.LeaseRefused("STS credentials cannot be renewed")

    def revoke(self, lease_id: str) -> None:
        """STS cannot revoke one session's keys: they expire at their duration."""

    def describe(self) -> str:
        text = f"aws-sts {self.aws.describe()} leased={','.join(sorted(self.leases)) or '-'}"
        text += self.lease_lines()
        return text

    def close(self) -> None:
        self.aws.close()


_SESSION_KEYS = frozenset(AwsOptions.__annotations__) - frozenset(
    ("connections_lookup_pattern", "variables_lookup_pattern", "config_lookup_pattern", "connection_format")
)
