"""aws-sts: an ``aws`` connection whose keys are temporary STS credentials (real moto server)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest

from credpath import _leases
from credpath.backends.aws_sts import AwsStsBackend
from credpath.errors import ConfigError
from tests.servers.moto import MotoServer

ROLE = "arn:aws:iam::123456789012:role/reporting"


@contextlib.contextmanager
def _iam_enforced(moto: MotoServer) -> Iterator[None]:
    moto.set_auth(0)
    try:
        yield
    finally:
        moto.set_auth(None)


@pytest.fixture
def sts_env(moto_env: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_env.url)
    return moto_env


def _backend(**entry: Any) -> AwsStsBackend:
    return AwsStsBackend(
        leases={"aws_reporting": {"role_arn": ROLE, "extra": {"region_name": "us-east-1"}, **entry}},
        region_name="us-east-1",
    )


def test_the_connection_carries_temporary_keys_that_work_and_expire_as_sts_says(sts_env: MotoServer) -> None:
    backend = _backend(duration_seconds=1800, role_session_name="task-1")
    before = _leases.counts(backend.name)
    conn = backend.get_connection("aws_reporting")
    assert conn is not None and conn.conn_type == "aws" and conn.login is None and conn.password is None
    extra = conn.extra_dejson
    # The keys Airflow's AwsConnectionWrapper reads from extra.
    assert extra["aws_access_key_id"].startswith("ASIA")  # a temporary key id
    assert extra["aws_secret_access_key"] and extra["aws_session_token"]
    assert extra["region_name"] == "us-east-1"
    # They work: the caller is the assumed role's session.
    sts = sts_env.client(
        "sts",
        aws_access_key_id=extra["aws_access_key_id"],
        aws_secret_access_key=extra["aws_secret_access_key"],
        aws_session_token=extra["aws_session_token"],
    )
    arn = sts.get_caller_identity()["Arn"]
    assert ":assumed-role/reporting/task-1" in arn
    # One set per process; held for the duration STS gave (1800 s), re-minted at two thirds of it.
    assert backend.get_connection("aws_reporting") is conn
    (lease,) = _leases.manager().leases(backend.lease_key_prefix)
    assert 1790 <= lease.left() <= 1800 and not lease.renewable
    assert abs(lease.next_at - time.monotonic() - 1200) < 10
    assert _leases.counts(backend.name)["minted"] == before["minted"] + 1
    text = backend.describe() + repr(conn)
    assert extra["aws_secret_access_key"] not in text and extra["aws_session_token"] not in text
    # STS cannot revoke one session's keys: nothing is counted as revoked, they expire.
    assert _leases.revoke_all(backend.lease_key_prefix) == 0
    assert _leases.manager().leases(backend.lease_key_prefix) == []


def test_the_minted_secret_is_masked(sts_env: MotoServer) -> None:
    from credpath._masking import redact

    conn = _backend().get_connection("aws_reporting")
    assert conn is not None
    secret = conn.extra_dejson["aws_secret_access_key"]
    assert secret not in redact(f"leaked {secret}")
    _leases.revoke_all()


def test_ids_that_are_not_leased_are_misses(sts_env: MotoServer) -> None:
    backend = _backend()
    assert backend.get_connection("other") is None and backend.get_conn_value("other") is None
    assert backend.get_variable("x") is None


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"role_arn": "reporting"}, "role_arn must be an IAM role ARN"),
        ({"role_arn": ROLE, "duration_seconds": 60}, "duration_seconds must be an integer from 900 to 43200"),
        ({"role_arn": ROLE, "password": "pw-s3cr3t-x"}, "unknown key(s) password"),
        ({"role_arn": ROLE, "role_session_name": "x"}, "role_session_name must be 2-64"),
    ],
    ids=["bad-arn", "short-duration", "password-given", "short-session-name"],
)
def test_bad_entries_are_one_line(entry: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        AwsStsBackend(leases={"aws_reporting": entry})
    message = str(info.value)
    assert expected in message and "\n" not in message and "s3cr3t" not in message


def test_a_policy_that_denies_assume_role_is_one_line(sts_env: MotoServer) -> None:
    iam = sts_env.client("iam")
    iam.create_user(UserName="no-sts")
    key = iam.create_access_key(UserName="no-sts")["AccessKey"]  # no policy: nothing is allowed
    keys = {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}
    backend = AwsStsBackend(leases={"aws_reporting": ROLE}, region_name="us-east-1", **keys)
    with _iam_enforced(sts_env), pytest.raises(ConfigError) as info:
        backend.get_connection("aws_reporting")
    message = str(info.value)
    assert "denies sts:AssumeRole" in message and ROLE in message and "\n" not in message
    assert key["SecretAccessKey"] not in message
    assert _leases.manager().leases(backend.lease_key_prefix) == []
