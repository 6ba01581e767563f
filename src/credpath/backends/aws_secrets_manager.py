"""AWS Secrets Manager backend, a drop-in for Airflow's ``SecretsManagerBackend`` with batch reads.

Secret names are ``<prefix><sep><id>`` (Airflow's ``build_path``); an empty prefix means the bare id, a null
prefix switches that kind off. Connection values are a URI or JSON; JSON accepts Airflow's alias keys
(``username`` -> ``login``, ``engine`` -> ``conn_type``, ...) and, unlike Airflow, keeps unknown keys in
``extra`` instead of dropping them.

Kwargs: Airflow's (``connections_prefix`` ... ``extra_conn_words``; ``use_ssl`` and ``api_version`` for the
client; every AWS hook extra Airflow passes on: ``region_name``, ``profile_name``, ``role_arn``,
``assume_role_kwargs``, ``endpoint_url``, ``verify``, ``aws_access_key_id``/``aws_secret_access_key``/
``aws_session_token``, ``session_kwargs``, ``config_kwargs``, ``botocore_config``, ``service_config``) and
``timeout``: seconds a whole lookup may take (connect, reads, retries, back-off and ``Retry-After`` waits;
default 10). An unknown kwarg is a one-line error (Airflow would ignore a typo silently). Deletes schedule
the secret's deletion after ``recovery_window_in_days`` (7-30, default 30); ``force_delete_without_recovery``
(default false) deletes at once instead, without recovery. credpath's own (no Airflow kwarg has these names):
``cap_at_rotation`` (default false): one ``DescribeSecret`` before each read learns the secret's
``NextRotationDate``, and no cache tier serves the value past it; ``version_check`` (default false): at
expiry, ``DescribeSecret`` first, and an unchanged ``AWSCURRENT`` version is cached again without a read
(README "Rotation" has the costs).

Faults: botocore's retries are off; throttling, 429, 5xx and transient network errors are retried (3 tries
by default, ``config_kwargs["retries"]`` sets them) with full-jitter back-off inside ``timeout``; a
``Retry-After`` beyond it fails the lookup at once; access denied and refused connections are not retried.

Cost: one ``GetSecretValue`` per uncached read; ``BatchGetSecretValue`` (20 ids per call, AWS's limit) for
``get_conn_values``/``get_variables``; ``ListSecrets`` (100 per page) + batches for prefix prefetch.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, ClassVar, Literal, Unpack
from urllib.parse import unquote

from credpath._deadlines import Deadline
from credpath._lookup.trace import VersionCheck, note_valid_until, note_version
from credpath.backends._aws import AwsBackend, AwsOptions, client_error_code, client_error_message
from credpath.errors import AccessDenied, ConfigError, CredpathError
from credpath.model import Connection, ConnectionFormatError
from credpath.protocol import Capability, Kind, PinnedReads, Serialization, WriteConfirmation, pinned_version

__all__ = ["BATCH_SIZE", "FIELD_WORDS", "SecretsManagerBackend"]


log = logging.getLogger("credpath.backends.aws_secrets_manager")

BATCH_SIZE = 20  # BatchGetSecretValue's SecretIdList limit on AWS (moto accepts more)
LIST_PAGE_SIZE = 100  # ListSecrets' MaxResults limit

# Airflow's aliases; the canonical name comes first and wins over an alias. "dbname" is credpath's
# addition: it is the database name in the JSON that AWS (RDS, Secrets Manager rotation) writes.
FIELD_WORDS: dict[str, tuple[str, ...]] = {
    "login": ("login", "user", "username", "user_name"),
    "password": ("password", "pass", "key"),
    "host": ("host", "remote_host", "server"),
    "port": ("port",),
    "schema": ("schema", "database", "dbname"),
    "conn_type": ("conn_type", "connection_type", "engine", "conn_id"),
    "extra": ("extra",),
}
_PASSTHROUGH = ("description",)
#: Seconds a DescribeSecret's rotation date is reused by a read that follows it (a version check that found
#: a change): the read then costs GetSecretValue alone.
DESCRIBE_REUSE = 2.0
#: Seconds a value read after its NextRotationDate passed is served: the rotation is due (AWS rotates "on or
#: before" that date, and the date moves on when it is done), so the store is asked again this often.
ROTATION_DUE_RECHECK = 10.0


def rotation_cap(response: dict[str, Any]) -> float | None:
    """The wall-clock time after which a value read now must not be served, from a DescribeSecret answer:
    its ``NextRotationDate`` (None: no rotation scheduled)."""
    if response.get("RotationEnabled") is False:
        return None
    when = response.get("NextRotationDate")
    if when is None:
        return None
    at = when.timestamp() if hasattr(when, "timestamp") else float(when)
    now = time.time()
    return at if at > now else now + ROTATION_DUE_RECHECK


# A pin is a stage (a label AWS moves on rotation) or a VersionId (fixed): AWS's own stages and
# ``stage:<label>`` are stages; anything else must look like a VersionId (a UUID, or the 32-64 character
# ClientRequestToken a writer chose).
AWS_STAGES = ("AWSCURRENT", "AWSPREVIOUS", "AWSPENDING")
STAGE_PREFIX = "stage:"
_VERSION_ID = re.compile(r"[A-Za-z0-9_-]{32,64}\Z")
_STAGE = re.compile(r"[A-Za-z0-9_.:+=@/-]{1,256}\Z")


def version_request(version: str) -> dict[str, str] | None:
    """The GetSecretValue parameter that reads ``version`` (``VersionStage`` or ``VersionId``), or None
    for a form that is neither."""
    if version in AWS_STAGES:
        return {"VersionStage": version}
    if version.startswith(STAGE_PREFIX):
        stage = version[len(STAGE_PREFIX) :]
        return {"VersionStage": stage} if _STAGE.match(stage) else None
    return {"VersionId": version} if _VERSION_ID.match(version) else None


def _is_deleted_error(exc: BaseException) -> bool:
    # GetSecretValue on a secret scheduled for deletion: InvalidRequestException "... marked for deletion".
    return (
        client_error_code(exc) == "InvalidRequestException" and "delet" in client_error_message(exc).lower()
    )


class SecretsManagerBackend(PinnedReads, AwsBackend):
    alias: ClassVar[str] = "aws-secrets-manager"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {"write", "list", "batch", "prefetch", "versions", "version_check", "rotation_dates"}
    )
    version_form: ClassVar[str] = "a VersionId, AWSPREVIOUS/AWSCURRENT/AWSPENDING, or stage:<label>"
    store_name: ClassVar[str] = "AWS Secrets Manager"
    requires: ClassVar[tuple[str, ...]] = ("botocore",)
    extra: ClassVar[str | None] = "aws"
    service: ClassVar[str] = "secretsmanager"
    noun: ClassVar[str] = "secret"
    batch_size: ClassVar[int] = BATCH_SIZE
    list_results: ClassVar[str] = "SecretList"

    def __init__(
        self,
        connections_prefix: str | None = "airflow/connections",
        variables_prefix: str | None = "airflow/variables",
        config_prefix: str | None = "airflow/config",
        sep: str = "/",
        extra_conn_words: dict[str, list[str]] | None = None,
        *,
        recovery_window_in_days: int = 30,
        force_delete_without_recovery: bool = False,
        are_secret_values_urlencoded: bool = False,
        full_url_mode: bool | None = None,  # deprecated in Airflow, accepted and ignored (format is auto)
        cap_at_rotation: bool = False,
        version_check: bool = False,
        **options: Unpack[AwsOptions],
    ) -> None:
        super().__init__(
            connections_prefix,
            variables_prefix,
            config_prefix,
            sep=sep,
            **options,
        )
        if not isinstance(recovery_window_in_days, int) or not 7 <= recovery_window_in_days <= 30:
            raise self.config_error("recovery_window_in_days must be an integer from 7 to 30")
        try:
            self.field_words = _field_words(extra_conn_words)
        except ConfigError as exc:
            raise self.config_error(str(exc)) from None
        self.recovery_window_in_days = recovery_window_in_days
        if not isinstance(force_delete_without_recovery, bool):
            raise self.config_error("force_delete_without_recovery must be true or false")
        self.force_delete_without_recovery = force_delete_without_recovery
        self.are_secret_values_urlencoded = bool(are_secret_values_urlencoded)
        for setting, flag in (("cap_at_rotation", cap_at_rotation), ("version_check", version_check)):
            if not isinstance(flag, bool):
                raise self.config_error(f"{setting} must be true or false")
        #: Learn each secret's NextRotationDate (one DescribeSecret per read): no tier serves past it.
        self.cap_at_rotation = cap_at_rotation
        #: At expiry, DescribeSecret first; an unchanged AWSCURRENT version is not read again.
        self.version_check = version_check
        #: name -> (monotonic time, its valid-until) of the last DescribeSecret, reused by a read that
        #: follows a version check at once (so a changed secret costs one DescribeSecret, not two).
        self._described: dict[str, tuple[float, float | None]] = {}
        self.aws = self._open_session()
        # Secret names known to exist (seen in a read or a listing): writes to them need one PutSecretValue
        # instead of CreateSecret failing first.
        self._existing: set[str] = set()
        # Secrets this backend scheduled for deletion: a write restores them first (moto, unlike AWS, accepts
        # a new version on a deleted secret and leaves it deleted).
        self._scheduled: set[str] = set()

    # --- reads -------------------------------------------------------------------------------------

    def accepts_version(self, version: str) -> bool:
        return version_request(version) is not None

    def version_moves(self, version: str) -> bool:
        return "VersionStage" in (version_request(version) or {})

    def _get_name(self, kind: Kind, key: str, name: str, deadline: Deadline) -> str | None:
        params = {"SecretId": name}
        if (pin := pinned_version()) is not None:
            pinned = version_request(pin)
            if pinned is None:  # never the latest in place of a version asked for
                raise self.config_error(f"version {pin[:80]!r} is not {self.version_form}")
            params.update(pinned)
        elif self.cap_at_rotation:  # a pinned version never rotates
            self._note_rotation(name, deadline)
        try:
            response = self._call("get_secret_value", params, f"secret {name!r}", deadline)
        except Exception as exc:  # translated below, never re-raised raw
            code = client_error_code(exc)
            if code == "ResourceNotFoundException" or _is_deleted_error(exc):
                log.debug("%s: secret %s not found (%s)", self.name, name, code)
                return None
            raise self.aws.error(exc, f"secret {name!r}") from None
        self._existing.add(name)
        log.debug("%s: read secret %s", self.name, name)
        stages = response.get("VersionStages") or ()
        version = response.get("VersionId")
        note_version(f"{version} ({', '.join(stages)})" if version and stages else version)
        return self._value_of(name, response)

    # --- rotation dates and version checks (DescribeSecret: metadata, never the value) ----------------

    def _describe(self, name: str, deadline: Deadline) -> dict[str, Any] | None:
        """DescribeSecret of ``name``; None if it does not exist. Remembers its rotation cap a moment."""
        try:
            response: dict[str, Any] = self._call(
                "describe_secret", {"SecretId": name}, f"describe secret {name!r}", deadline
            )
        except Exception as exc:  # translated below, never re-raised raw
            if client_error_code(exc) == "ResourceNotFoundException":
                return None
            raise self.aws.error(exc, f"describe secret {name!r}") from None
        if len(self._described) > 4096:
            self._described.clear()
        self._described[name] = (time.monotonic(), rotation_cap(response))
        return response

    def _note_rotation(self, name: str, deadline: Deadline) -> None:
        """Report the secret's next rotation to the lookup record before its value is read (a rotation
        between the two calls then only makes the cap early, never late)."""
        known = self._described.get(name)
        if known is not None and time.monotonic() - known[0] < DESCRIBE_REUSE:
            note_valid_until(known[1])
            return
        response = self._describe(name, deadline)
        if response is not None:
            note_valid_until(rotation_cap(response))

    def check_version(self, kind: Kind, key: str, team_name: str | None, version: str) -> VersionCheck | None:
        """Whether ``version`` (as a read reported it) is still the secret's AWSCURRENT one: one
        DescribeSecret per name a read would try (its metadata: never the value)."""
        deadline = Deadline(self.timeout)
        cached_id = version.split(" ", 1)[0]
        for name in self._lookup_names(kind, key, team_name):
            response = self._describe(name, deadline)
            if response is None or response.get("DeletedDate"):
                continue  # a read would go on to the next name
            stages = response.get("VersionIdsToStages") or {}
            current = next((v for v, s in stages.items() if "AWSCURRENT" in (s or ())), None)
            if current != cached_id:
                return VersionCheck(False)
            self._described.pop(name, None)  # unchanged: no read follows
            note_version(version)
            cap = rotation_cap(response) if self.cap_at_rotation else None
            note_valid_until(cap)
            return VersionCheck(True, cap)
        return VersionCheck(False)

    def _value_of(self, name: str, entry: dict[str, Any]) -> str | None:
        """The secret's text; None for a binary-only secret, which Airflow's backend (it reads
        ``SecretString`` only) treats as not found."""
        value: str | None = entry.get("SecretString")
        if value is None:
            log.debug("%s: secret %s holds no SecretString (binary only): not found", self.name, name)
        return value

    # --- JSON connection values --------------------------------------------------------------------

    def _connection_value(self, conn_id: str, raw: str) -> str:
        return self._standardize(conn_id, raw)

    def _standardize(self, conn_id: str, raw: str) -> str:
        """Rename Airflow's alias keys; unknown keys go to ``extra``. URIs pass through unchanged."""
        if not raw.strip().startswith("{"):
            return raw
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            return raw  # the model's parser reports the position
        if not isinstance(data, dict) or "uri" in data:
            return raw
        out: dict[str, Any] = {}
        used: set[str] = set()
        for field_name, words in self.field_words.items():
            present = [w for w in words if w in data]
            if not present:
                continue
            used.update(present)
            values = {json.dumps(data[w], sort_keys=True) for w in present}
            if len(values) > 1 and field_name != "conn_type":
                raise ConnectionFormatError(
                    f"connection JSON for connection {conn_id!r} sets field {field_name!r} "
                    f"more than once with different values (keys {', '.join(present)})"
                )
            out[field_name] = data[present[0]]
        for key in _PASSTHROUGH:
            if key in data:
                out[key] = data[key]
                used.add(key)
        unknown = {k: v for k, v in data.items() if k not in used}
        if unknown:
            extra = out.get("extra")
            if isinstance(extra, str) and extra.strip():
                try:
                    extra = json.loads(extra)
                except json.JSONDecodeError:
                    raise ConnectionFormatError(
                        f"field 'extra' of connection {conn_id!r} is not valid JSON"
                    ) from None
            if extra in (None, ""):
                extra = {}
            if not isinstance(extra, dict):
                raise ConnectionFormatError(f"field 'extra' of connection {conn_id!r} must be a JSON object")
            out["extra"] = {**unknown, **extra}  # an explicit extra wins over a stray top-level key
        if self.are_secret_values_urlencoded:
            out = {k: unquote(v) if isinstance(v, str) and k != "extra" else v for k, v in out.items()}
        return json.dumps(out)

    # --- batches -----------------------------------------------------------------------------------

    def _prefetch(self, kind: Kind) -> dict[str, str]:
        return self._batch_get(self._list_names(kind))

    def _batch_get(self, names: dict[str, str]) -> dict[str, str]:
        """BatchGetSecretValue, at most BATCH_SIZE ids a call; returns {key: raw value} for hits only."""
        found: dict[str, str] = {}
        denied: list[str] = []
        failed: list[str] = []
        for response in self._batch_responses(names, "batch_get_secret_value", "SecretIdList"):
            for entry in response.get("SecretValues", []):
                name = entry.get("Name")
                if name in names:
                    self._existing.add(name)
                    value = self._value_of(name, entry)
                    if value is not None:
                        found[names[name]] = value
            for error in response.get("Errors", []):
                code = error.get("ErrorCode", "")
                secret_id = str(error.get("SecretId", "?"))
                if code == "ResourceNotFoundException" or (
                    code == "InvalidRequestException" and "delet" in str(error.get("Message", "")).lower()
                ):
                    continue
                (denied if "AccessDenied" in code else failed).append(f"{secret_id} ({code})")
        # A partial answer would let the search path cache a miss for an id that failed: fail it whole.
        if denied:
            raise self.error(
                f"access denied for {len(denied)} secret(s): {', '.join(denied[:5])} "
                f"for {self.aws.caller_arn()}",
                AccessDenied,
            )
        if failed:
            raise self.error(f"batch read failed for {len(failed)} secret(s): {', '.join(failed[:5])}")
        log.debug("%s: batch read %d of %d secret(s)", self.name, len(found), len(names))
        return found

    # --- listing -----------------------------------------------------------------------------------

    def _list_request(self, head: str) -> tuple[str, dict[str, Any], str]:
        params = {"MaxResults": LIST_PAGE_SIZE, "Filters": [{"Key": "name", "Values": [head]}]}
        return "list_secrets", params, f"list secrets under {head!r}"

    def _list_names(self, kind: Kind) -> dict[str, str]:
        """{secret name: key} for every live secret under the kind's prefix (ListSecrets, paginated)."""
        names: dict[str, str] = {}
        for name, key, entry in self._listed(kind):
            if not entry.get("DeletedDate"):
                names[name] = key
                self._existing.add(name)
        return names

    def _list_keys(self, kind: Kind) -> list[str]:
        return list(self._list_names(kind).values())

    # --- writes ------------------------------------------------------------------------------------

    def set_connection(
        self, conn: Connection, *, overwrite: bool = True, serialization: Serialization = "json"
    ) -> WriteConfirmation | None:
        if not conn.conn_id:
            raise self.config_error("connection has no conn_id")
        return self._write(
            "connection", conn.conn_id, self.serialize_connection(conn, serialization), overwrite=overwrite
        )

    def _write(self, kind: Kind, key: str, value: str, *, overwrite: bool) -> WriteConfirmation | None:
        """Create the secret, or put a new version when it exists: one call when the state is known. The
        answer's ``VersionId`` (the version this write created) is the write's confirmation.

        State is known from this backend's own reads, listings, writes and deletes; otherwise CreateSecret
        is tried first (the common case in a migration) and PutSecretValue follows only if it exists.
        """
        name = self._write_name(kind, key)
        if name in self._scheduled:
            if not overwrite:
                raise self._exists_error(name, scheduled=True)
            self._restore(name)
        elif overwrite and name in self._existing:
            if (put := self._put(name, value)) is not False:
                return put
        else:
            try:
                created = self._call(
                    "create_secret", {"Name": name, "SecretString": value}, f"write secret {name!r}"
                )
            except Exception as exc:
                if client_error_code(exc) == "ResourceExistsException":
                    if not overwrite:
                        raise self._exists_error(name) from None
                elif _is_deleted_error(exc):  # AWS: "already scheduled for deletion"
                    if not overwrite:
                        raise self._exists_error(name, scheduled=True) from None
                    self._restore(name)
                else:
                    raise self._write_error(exc, name) from None
            else:
                self._existing.add(name)
                log.debug("%s: created secret %s", self.name, name)
                return _confirmation(created)
        if (put := self._put(name, value)) is False:
            raise self.error(f"secret {name!r} vanished while being written")
        return put

    def _put(self, name: str, value: str) -> WriteConfirmation | Literal[False] | None:
        """PutSecretValue and its confirmation; False if the secret does not exist. A secret scheduled for
        deletion is restored."""
        for attempt in range(2):
            try:
                response = self._call(
                    "put_secret_value", {"SecretId": name, "SecretString": value}, f"write secret {name!r}"
                )
            except Exception as exc:
                if client_error_code(exc) == "ResourceNotFoundException":
                    self._existing.discard(name)
                    return False
                if attempt == 0 and _is_deleted_error(exc):
                    self._restore(name)
                    continue
                raise self._write_error(exc, name) from None
            break
        self._existing.add(name)
        log.debug("%s: put a new version of secret %s", self.name, name)
        return _confirmation(response)

    def _exists_error(self, name: str, *, scheduled: bool = False) -> ConfigError:
        state = "is scheduled for deletion" if scheduled else "already exists"
        return self.config_error(f"secret {name!r} {state} (overwrite not allowed)")

    def _restore(self, name: str) -> None:
        try:
            self._call("restore_secret", {"SecretId": name}, f"restore secret {name!r}")
        except Exception as exc:
            raise self._write_error(exc, name) from None
        self._scheduled.discard(name)
        self._existing.add(name)
        log.debug("%s: restored secret %s scheduled for deletion", self.name, name)

    def _write_error(self, exc: BaseException, name: str) -> CredpathError:
        return self.aws.error(exc, f"write secret {name!r}")

    def delete_connection(self, conn_id: str) -> bool:
        return self._delete(self._write_name("connection", conn_id))

    def delete_variable(self, key: str) -> bool:
        return self._delete(self._write_name("variable", key))

    def _delete(self, name: str) -> bool:
        """Schedule deletion after the recovery window, or delete at once with
        ``force_delete_without_recovery``.

        Returns False when there was nothing live to delete. A forced delete of a missing secret succeeds
        on AWS, so unless the secret is known to exist, one DescribeSecret tells the truth first.
        """
        force = self.force_delete_without_recovery
        params: dict[str, Any] = {"SecretId": name}
        if force:
            params["ForceDeleteWithoutRecovery"] = True
            if name not in self._existing and not self._exists(name):
                return False
        else:
            params["RecoveryWindowInDays"] = self.recovery_window_in_days
        try:
            self._call("delete_secret", params, f"delete secret {name!r}")
        except Exception as exc:
            if client_error_code(exc) == "ResourceNotFoundException" or _is_deleted_error(exc):
                self._existing.discard(name)
                return False
            raise self.aws.error(exc, f"delete secret {name!r}") from None
        self._existing.discard(name)
        if force:
            self._scheduled.discard(name)
        else:
            self._scheduled.add(name)
        log.debug("%s: deleted secret %s (force=%s)", self.name, name, force)
        return True

    def _exists(self, name: str) -> bool:
        """True if the secret exists and is not scheduled for deletion (DescribeSecret)."""
        try:
            response = self._call("describe_secret", {"SecretId": name}, f"describe secret {name!r}")
        except Exception as exc:
            if client_error_code(exc) == "ResourceNotFoundException":
                return False
            raise self.aws.error(exc, f"describe secret {name!r}") from None
        return not response.get("DeletedDate")

    # --- misc --------------------------------------------------------------------------------------

    def check(self) -> str:
        try:
            self._call("list_secrets", {"MaxResults": 1}, "check (ListSecrets)")
        except Exception as exc:
            raise self.aws.error(exc, "check (ListSecrets)") from None
        return f"AWS Secrets Manager reachable ({self.aws.describe()})"


def _field_words(extra_conn_words: dict[str, list[str]] | None) -> dict[str, tuple[str, ...]]:
    words = {field: list(aliases) for field, aliases in FIELD_WORDS.items()}
    if extra_conn_words is None:
        return {k: tuple(v) for k, v in words.items()}
    if not isinstance(extra_conn_words, dict):
        raise ConfigError(
            "extra_conn_words must be an object mapping a connection field to a list of key names"
        )
    for field_name, extra in extra_conn_words.items():
        target = "login" if field_name == "user" else field_name  # Airflow accepts "user" for login
        if target not in words:
            raise ConfigError(
                f"extra_conn_words: unknown connection field {field_name!r}; use one of "
                f"{', '.join(sorted({*words, 'user'}))}"
            )
        if not isinstance(extra, list) or not all(isinstance(w, str) for w in extra):
            raise ConfigError(f"extra_conn_words[{field_name!r}] must be a list of strings")
        words[target].extend(w for w in extra if w not in words[target])
    return {k: tuple(v) for k, v in words.items()}


def _confirmation(response: Any) -> WriteConfirmation | None:
    """The ``VersionId`` CreateSecret/PutSecretValue answered for the version just written, if any."""
    version = response.get("VersionId") if isinstance(response, dict) else None
    return WriteConfirmation(version) if isinstance(version, str) and version else None
