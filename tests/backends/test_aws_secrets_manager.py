"""SecretsManagerBackend against a real moto server over HTTP (no in-process patching of boto3).

API calls are counted with botocore event hooks on the backend's own client (``CallLog``), so every test
that claims "one call" or "chunks of 20" proves it.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from credpath.backends.aws_secrets_manager import BATCH_SIZE, SecretsManagerBackend
from credpath.errors import AccessDenied, BackendError, ConfigError
from credpath.model import Connection, ConnectionFormatError
from tests.servers.moto import ACCOUNT_ID, CallLog, FaultProxy, MotoServer, SecretsManagerHarness

PW = "pw-s3cr3t-1"


def calls_of(backend: SecretsManagerBackend) -> CallLog:
    return CallLog.attach(backend.client)


# --- reads -----------------------------------------------------------------------------------------


def test_reads_uri_connection_variable_and_config_one_call_each(
    aws_secrets_manager_harness: SecretsManagerHarness,
) -> None:
    h = aws_secrets_manager_harness
    h.seed("connection", "pg", f"postgres://user:{PW}@db.example.com:5432/sales?sslmode=require")
    h.seed("variable", "answer", "42")
    h.seed("config", "sql_alchemy_conn", "sqlite:////tmp/x.db")
    backend = h.make_backend()
    log = calls_of(backend)

    conn = backend.get_connection("pg")
    assert conn is not None
    assert (conn.conn_type, conn.host, conn.login, conn.password, conn.schema, conn.port) == (
        "postgres",
        "db.example.com",
        "user",
        PW,
        "sales",
        5432,
    )
    assert conn.extra_dejson == {"sslmode": "require"}
    assert backend.get_variable("answer") == "42"
    assert backend.get_config("sql_alchemy_conn") == "sqlite:////tmp/x.db"
    assert log.counts == {"GetSecretValue": 3}
    assert [p["SecretId"] for p in log.params("GetSecretValue")] == [
        "airflow/connections/pg",
        "airflow/variables/answer",
        "airflow/config/sql_alchemy_conn",
    ]


def test_missing_and_pending_deletion_are_misses(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    h = aws_secrets_manager_harness
    h.seed("connection", "doomed", f"http://u:{PW}@h")
    h.client.delete_secret(SecretId="airflow/connections/doomed", RecoveryWindowInDays=7)
    backend = h.make_backend()
    assert backend.get_conn_value("nope") is None
    assert backend.get_conn_value("doomed") is None
    assert backend.get_variable("nope") is None
    assert backend.get_conn_values(["nope", "doomed"]) == {}


def test_null_prefix_switches_kind_off_and_empty_prefix_means_bare_id(
    aws_secrets_manager_harness: SecretsManagerHarness,
) -> None:
    h = aws_secrets_manager_harness
    h.seed_secret("bare_var", "v1")
    h.seed("variable", "bare_var", "prefixed")
    off = h.make_backend(variables_prefix=None, connections_prefix=None)
    log = calls_of(off)
    assert off.get_variable("bare_var") is None
    assert off.get_conn_value("x") is None
    assert off.get_variables(["bare_var"]) == {}
    assert off.prefetch_variables() == {}
    assert len(log) == 0
    with pytest.raises(ConfigError, match="variables_prefix is null"):
        off.set_variable("k", "v")

    bare = h.make_backend(variables_prefix="")
    assert bare.get_variable("bare_var") == "v1"
    # Listing everything in the account as "variables" would be wrong and expensive: refused.
    assert bare.prefetch_variables() == {}


def test_prefix_trailing_separator_and_custom_sep(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    h = aws_secrets_manager_harness
    h.seed_secret("team-a:vars:colour", "blue")
    backend = h.make_backend(variables_prefix="team-a:vars:", sep=":")
    assert backend.variables_prefix == "team-a:vars"
    assert backend.get_variable("colour") == "blue"


def test_lookup_pattern_skips_without_a_call(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    h = aws_secrets_manager_harness
    h.seed("connection", "aws_default", "aws://")
    h.seed("connection", "pg_main", f"postgres://u:{PW}@h/db")
    backend = h.make_backend(connections_lookup_pattern="^pg_")
    log = calls_of(backend)
    assert backend.get_conn_value("aws_default") is None
    assert len(log) == 0
    assert (
        backend.get_conn_value("PG_MAIN") is None
    )  # matched (IGNORECASE) but the secret name is case-sensitive
    assert backend.get_conn_value("pg_main") is not None
    assert backend.get_conn_values(["aws_default", "pg_main"]).keys() == {"pg_main"}
    assert log.params("BatchGetSecretValue")[0]["SecretIdList"] == ["airflow/connections/pg_main"]


def test_a_binary_only_secret_is_not_found_as_in_airflow(
    aws_secrets_manager_harness: SecretsManagerHarness,
) -> None:
    """Airflow's SecretsManagerBackend reads SecretString only: a binary-only secret is a miss."""
    h = aws_secrets_manager_harness
    h.client.create_secret(Name="airflow/variables/bin", SecretBinary=b"hello")
    h.client.create_secret(Name="airflow/variables/junk", SecretBinary=b"\xff\xfe")
    h.client.create_secret(Name="airflow/variables/text", SecretString="plain")
    backend = h.make_backend()
    assert backend.get_variable("bin") is None
    assert backend.get_variable("junk") is None
    assert backend.get_variables(["bin", "junk", "text"]) == {"text": "plain"}


# --- JSON values -----------------------------------------------------------------------------------


def test_rds_shaped_json_resolves_to_postgres_connection(
    aws_secrets_manager_harness: SecretsManagerHarness,
) -> None:
    h = aws_secrets_manager_harness
    rds = {
        "engine": "postgres",
        "host": "mydb.abc.us-east-1.rds.amazonaws.com",
        "username": "admin",
        "password": PW,
        "dbname": "orders",
        "port": 5432,
        "dbInstanceIdentifier": "mydb",
    }
    h.seed("connection", "rds", json.dumps(rds))
    conn = h.make_backend().get_connection("rds")
    assert conn is not None
    assert (conn.conn_type, conn.host, conn.login, conn.password, conn.port, conn.schema) == (
        "postgres",
        rds["host"],
        "admin",
        PW,
        5432,
        "orders",
    )
    # Unlike Airflow, keys it does not know are kept in extra instead of being dropped.
    assert conn.extra_dejson == {"dbInstanceIdentifier": "mydb"}


@pytest.mark.parametrize(
    ("aliases", "expected"),
    [
        (
            {"user": "u1", "pass": "p", "remote_host": "rh", "database": "d", "connection_type": "mysql"},
            "mysql",
        ),
        ({"user_name": "u1", "key": "p", "server": "rh", "schema": "d", "conn_id": "http"}, "http"),
        ({"login": "u1", "password": "p", "host": "rh", "database": "d", "conn_type": "ftp"}, "ftp"),
    ],
    ids=["user-pass-remote_host", "user_name-key-server", "canonical"],
)
def test_json_alias_keys(
    aws_secrets_manager_harness: SecretsManagerHarness, aliases: dict[str, str], expected: str
) -> None:
    h = aws_secrets_manager_harness
    value = {k: (PW if v == "p" else v) for k, v in aliases.items()}
    h.seed("connection", "c", json.dumps({**value, "extra": {"timeout": 5}}))
    conn = h.make_backend().get_connection("c")
    assert conn is not None
    assert (conn.conn_type, conn.login, conn.password, conn.host, conn.schema) == (
        expected,
        "u1",
        PW,
        "rh",
        "d",
    )
    assert conn.extra_dejson == {"timeout": 5}


def test_json_explicit_extra_merges_with_unknown_keys_and_wins(
    aws_secrets_manager_harness: SecretsManagerHarness,
) -> None:
    h = aws_secrets_manager_harness
    h.seed(
        "connection", "c", json.dumps({"conn_type": "http", "region": "top", "extra": '{"region": "inner"}'})
    )
    conn = h.make_backend().get_connection("c")
    assert conn is not None and conn.extra_dejson == {"region": "inner"}


def test_json_conflicting_aliases_fail_without_quoting_values(
    aws_secrets_manager_harness: SecretsManagerHarness,
) -> None:
    h = aws_secrets_manager_harness
    h.seed("connection", "c", json.dumps({"conn_type": "http", "password": PW, "pass": PW + "x"}))
    with pytest.raises(ConnectionFormatError) as info:
        h.make_backend().get_connection("c")
    assert "'password'" in str(info.value) and "pass" in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_extra_conn_words(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    h = aws_secrets_manager_harness
    h.seed("connection", "c", json.dumps({"kind": "http", "account": "svc", "secret": PW, "hostname": "api"}))
    backend = h.make_backend(
        extra_conn_words={
            "user": ["account"],
            "password": ["secret"],
            "conn_type": ["kind"],
            "host": ["hostname"],
        }
    )
    conn = backend.get_connection("c")
    assert conn is not None
    assert (conn.conn_type, conn.login, conn.password, conn.host, conn.extra) == (
        "http",
        "svc",
        PW,
        "api",
        None,
    )
    with pytest.raises(ConfigError, match="extra_conn_words: unknown connection field 'colour'"):
        h.make_backend(extra_conn_words={"colour": ["x"]})


def test_url_encoded_json_values(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    h = aws_secrets_manager_harness
    h.seed("connection", "c", json.dumps({"conn_type": "http", "login": "a%40b", "password": "pw%2Fs3cr3t"}))
    conn = h.make_backend(are_secret_values_urlencoded=True).get_connection("c")
    assert conn is not None and (conn.login, conn.password) == ("a@b", "pw/s3cr3t")


# --- batches -----------------------------------------------------------------------------------------


def test_batch_get_chunks_at_20_ids_per_call(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    h = aws_secrets_manager_harness
    ids = [f"c{i:03d}" for i in range(45)]
    for i, conn_id in enumerate(ids):
        h.seed("connection", conn_id, f"postgres://u{i}:{PW}@h{i}:5432/db")
    wanted = [*ids, "missing1", "missing2", "c000"]  # duplicates are asked for once
    backend = h.make_backend()
    log = calls_of(backend)

    values = backend.get_conn_values(wanted)

    assert sorted(values) == ids
    assert Connection.from_value(values["c017"]).host == "h17"
    batches = [p["SecretIdList"] for p in log.params("BatchGetSecretValue")]
    # moto accepts more than 20 ids, AWS does not: prove the chunking from the requests themselves.
    assert [len(b) for b in batches] == [20, 20, 7]
    assert all(len(b) <= BATCH_SIZE for b in batches)
    assert sorted(i for batch in batches for i in batch) == sorted(
        f"airflow/connections/{i}" for i in {*ids, "missing1", "missing2"}
    )
    assert log.counts == {"BatchGetSecretValue": math.ceil(47 / 20)}


def test_batch_variables(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    h = aws_secrets_manager_harness
    for i in range(3):
        h.seed("variable", f"v{i}", f"value-{i}")
    backend = h.make_backend()
    assert backend.get_variables(["v0", "v2", "v9"]) == {"v0": "value-0", "v2": "value-2"}


def test_prefetch_by_prefix_lists_then_batch_gets(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    h = aws_secrets_manager_harness
    for i in range(25):
        h.seed("connection", f"c{i}", f"http://u:{PW}@h{i}")
    h.seed("connection", "nested/deep", "http://deep")
    h.seed("variable", "v", "1")
    h.seed_secret("airflow/connections-other/x", "http://not-mine")
    h.seed_secret("other/airflow/connections/y", "http://not-mine")
    h.seed("connection", "gone", "http://gone")
    h.client.delete_secret(SecretId="airflow/connections/gone")
    backend = h.make_backend()
    log = calls_of(backend)

    values = backend.prefetch_connections()

    assert sorted(values) == sorted([*(f"c{i}" for i in range(25)), "nested/deep"])
    assert values["c3"] == f"http://u:{PW}@h3"
    assert log.counts == {"ListSecrets": 1, "BatchGetSecretValue": 2}
    assert [len(p["SecretIdList"]) for p in log.params("BatchGetSecretValue")] == [20, 6]
    assert backend.prefetch_variables() == {"v": "1"}


def test_list_paginates_and_is_sorted(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    h = aws_secrets_manager_harness
    for i in range(130):
        h.seed("variable", f"k{i:03d}", "x")
    h.seed("connection", "one", "http://h")
    backend = h.make_backend()
    log = calls_of(backend)
    assert backend.list_variables() == [f"k{i:03d}" for i in range(130)]
    assert log.counts == {"ListSecrets": 2}
    assert log.params("ListSecrets")[1]["NextToken"]
    assert backend.list_connections() == ["one"]


# --- writes ------------------------------------------------------------------------------------------


def test_create_is_one_call_and_known_secret_update_is_one_call(
    aws_secrets_manager_harness: SecretsManagerHarness,
) -> None:
    h = aws_secrets_manager_harness
    backend = h.make_backend()
    log = calls_of(backend)
    conn = Connection(conn_id="new", conn_type="postgres", host="h", login="u", password=PW, description="d")

    backend.set_connection(conn)
    assert log.counts == {"CreateSecret": 1}
    stored = h.client.get_secret_value(SecretId="airflow/connections/new")["SecretString"]
    assert backend.deserialize_connection("new", stored) == conn

    log.clear()
    backend.set_connection(Connection(conn_id="new", conn_type="postgres", host="h2"))
    assert log.counts == {"PutSecretValue": 1}
    assert backend.get_connection("new").host == "h2"  # type: ignore[union-attr]


def test_overwrite_of_a_secret_not_seen_before_and_overwrite_false(
    aws_secrets_manager_harness: SecretsManagerHarness,
) -> None:
    h = aws_secrets_manager_harness
    h.seed("variable", "k", "old")
    backend = h.make_backend()
    log = calls_of(backend)
    with pytest.raises(ConfigError, match="'airflow/variables/k' already exists"):
        backend.set_variable("k", "new", overwrite=False)
    assert h.client.get_secret_value(SecretId="airflow/variables/k")["SecretString"] == "old"
    backend.set_variable("k", "new")
    assert backend.get_variable("k") == "new"
    assert log.counts == {"CreateSecret": 2, "PutSecretValue": 1, "GetSecretValue": 1}


def test_delete_with_recovery_window_then_restore_by_writing(
    aws_secrets_manager_harness: SecretsManagerHarness,
) -> None:
    h = aws_secrets_manager_harness
    backend = h.make_backend(recovery_window_in_days=7)
    backend.set_variable("k", "v1")
    log = calls_of(backend)
    assert backend.delete_variable("k") is True
    assert log.params("DeleteSecret") == [{"SecretId": "airflow/variables/k", "RecoveryWindowInDays": 7}]
    assert "DeletedDate" in h.client.describe_secret(SecretId="airflow/variables/k")
    assert backend.get_variable("k") is None
    assert backend.delete_variable("k") is False
    with pytest.raises(ConfigError, match="scheduled for deletion"):
        backend.set_variable("k", "v2", overwrite=False)
    backend.set_variable("k", "v2")
    assert backend.get_variable("k") == "v2"
    assert "DeletedDate" not in h.client.describe_secret(SecretId="airflow/variables/k")


def test_forced_delete(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    h = aws_secrets_manager_harness
    h.seed("connection", "c", "http://h")
    backend = h.make_backend(force_delete_without_recovery=True)
    assert backend.delete_connection("c") is True
    with pytest.raises(h.client.exceptions.ResourceNotFoundException):
        h.client.describe_secret(SecretId="airflow/connections/c")
    # AWS accepts a forced delete of a missing secret; credpath still reports that nothing was deleted.
    assert backend.delete_connection("c") is False
    with pytest.raises(ConfigError, match="force_delete_without_recovery"):
        h.make_backend(force_delete_without_recovery="yes")
    with pytest.raises(ConfigError, match="recovery_window_in_days"):
        h.make_backend(recovery_window_in_days=3)


# --- errors, retries, auth ---------------------------------------------------------------------------


def test_access_denied_names_secret_and_caller(moto_env: MotoServer) -> None:
    iam = moto_env.client("iam")
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["secretsmanager:ListSecrets"], "Resource": "*"}],
    }
    iam.put_user_policy(UserName="reader", PolicyName="list-only", PolicyDocument=json.dumps(policy))
    moto_env.client("secretsmanager").create_secret(
        Name="airflow/connections/locked", SecretString=f"http://{PW}"
    )
    backend = SecretsManagerBackend(
        endpoint_url=moto_env.url,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    moto_env.set_auth(0)  # IAM enforced from here on
    try:
        assert backend.list_connections() == ["locked"]
        with pytest.raises(AccessDenied) as info:
            backend.get_conn_value("locked")
        with pytest.raises(AccessDenied):
            backend.get_conn_values(["locked"])
    finally:
        moto_env.set_auth(None)
    message = str(info.value)
    assert "'airflow/connections/locked'" in message
    assert f"arn:aws:iam::{ACCOUNT_ID}:user/reader" in message
    assert "s3cr3t" not in message and key["SecretAccessKey"] not in message


def test_access_denied_without_arn_in_message_asks_sts_once(
    aws_fault_proxy: FaultProxy,
    aws_secrets_manager_harness: SecretsManagerHarness,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", aws_secrets_manager_harness.server.url)
    backend = aws_secrets_manager_harness.make_backend(endpoint_url=aws_fault_proxy.url)
    aws_fault_proxy.fail_next(2, 400, "AccessDeniedException")  # message without an ARN
    for key in ("a", "b"):
        with pytest.raises(AccessDenied, match=rf"'airflow/variables/{key}': access denied .* for arn:aws:"):
            backend.get_variable(key)
    assert aws_fault_proxy.requests == 2  # access denied is not retried
    assert backend.aws.calls["GetCallerIdentity"] == 1  # the identity is looked up once, then remembered


def test_throttling_is_retried_with_backoff(
    aws_fault_proxy: FaultProxy, aws_secrets_manager_harness: SecretsManagerHarness
) -> None:
    h = aws_secrets_manager_harness
    h.seed("variable", "k", "v")
    backend = h.make_backend(endpoint_url=aws_fault_proxy.url)
    log = calls_of(backend)
    aws_fault_proxy.fail_next(2, 400, "ThrottlingException")
    assert backend.get_variable("k") == "v"
    # credpath retries (botocore's own retries are off), so each try is one client call and one request.
    assert (len(log), log.http_requests, aws_fault_proxy.requests) == (3, 3, 3)


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [(400, "ThrottlingException", "throttled"), (503, "ServiceUnavailable", "server error 503")],
)
def test_persistent_throttling_or_5xx_surface_as_backend_error(
    aws_fault_proxy: FaultProxy,
    aws_secrets_manager_harness: SecretsManagerHarness,
    status: int,
    code: str,
    reason: str,
) -> None:
    h = aws_secrets_manager_harness
    backend = h.make_backend(
        endpoint_url=aws_fault_proxy.url,
        config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 3}},
    )
    aws_fault_proxy.fail_next(10, status, code)
    with pytest.raises(BackendError) as info:
        backend.get_variable("k")
    assert not isinstance(info.value, AccessDenied)
    assert f"'airflow/variables/k': {reason}" in str(info.value)
    assert "after 3 attempt(s)" in str(info.value)
    assert aws_fault_proxy.failed == 3


def test_unreachable_endpoint_is_a_backend_error(moto_env: MotoServer) -> None:
    from tests.servers._util import free_port

    backend = SecretsManagerBackend(
        endpoint_url=f"http://127.0.0.1:{free_port()}", config_kwargs={"retries": {"total_max_attempts": 1}}
    )
    with pytest.raises(BackendError, match="cannot reach the AWS endpoint"):
        backend.get_conn_value("x")


# --- session settings ---------------------------------------------------------------------------------


def test_role_arn_assumes_the_role_in_another_account(
    moto_env: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    role_arn = "arn:aws:iam::222222222222:role/airflow-secrets"
    creds = moto_env.client("sts").assume_role(RoleArn=role_arn, RoleSessionName="seed")["Credentials"]
    other = moto_env.client(
        "secretsmanager",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    other.create_secret(Name="airflow/variables/where", SecretString="account-2")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_env.url)

    plain = SecretsManagerBackend(endpoint_url=moto_env.url)
    assert plain.get_variable("where") is None  # accounts are isolated: proves the role is really used
    assumed = SecretsManagerBackend(
        endpoint_url=moto_env.url, role_arn=role_arn, assume_role_kwargs={"RoleSessionName": "credpath-test"}
    )
    assert assumed.get_variable("where") == "account-2"
    assert assumed.get_variable("where") == "account-2"
    assert assumed.aws.calls == {"AssumeRole": 1, "GetSecretValue": 2}


def test_explicit_keys_and_profile(moto_env: MotoServer, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    moto_env.client("secretsmanager").create_secret(Name="airflow/variables/k", SecretString="v")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    explicit = SecretsManagerBackend(
        endpoint_url=moto_env.url, aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="testing"
    )
    assert explicit.get_variable("k") == "v"
    with pytest.raises(ConfigError, match="must be given together"):
        SecretsManagerBackend(aws_access_key_id="AKIDEXAMPLE")

    config = tmp_path / "aws-config"
    config.write_text(
        "[profile etl]\nregion = us-east-1\n"
        "aws_access_key_id = AKIDPROFILE\naws_secret_access_key = testing\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert SecretsManagerBackend(endpoint_url=moto_env.url, profile_name="etl").get_variable("k") == "v"
    with pytest.raises(ConfigError, match="profile_name 'nope' not found"):
        SecretsManagerBackend(endpoint_url=moto_env.url, profile_name="nope").get_variable("k")
    with pytest.raises(ConfigError, match="no AWS region"):
        SecretsManagerBackend(endpoint_url=moto_env.url).get_variable("k")


def test_no_credentials_is_a_backend_error(moto_env: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(BackendError, match="no AWS credentials"):
        SecretsManagerBackend(endpoint_url=moto_env.url).get_variable("k")


def test_construction_is_lazy_and_repr_is_safe() -> None:
    code = (
        "import sys, credpath\n"
        "from credpath.backends.aws_secrets_manager import SecretsManagerBackend\n"
        "from credpath.backends.aws_ssm import ParameterStoreBackend\n"
        "b = SecretsManagerBackend(aws_access_key_id='AKID', aws_secret_access_key='pw-s3cr3t-9')\n"
        "ParameterStoreBackend()\n"
        "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules), repr(b), repr(b.aws))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("[] ")
    assert "s3cr3t" not in out


def test_registry_maps_airflow_class_path_and_rejects_unknown_kwargs(moto_env: MotoServer) -> None:
    from credpath.registry import create_backend

    backend = create_backend(
        "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend",
        {"connections_prefix": "x/conns", "endpoint_url": moto_env.url, "full_url_mode": False},
    )
    assert isinstance(backend, SecretsManagerBackend) and backend.connections_prefix == "x/conns"
    with pytest.raises(ConfigError, match="unknown kwarg"):
        create_backend("aws-secrets-manager", {"connection_prefix": "typo"})


def test_check(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    assert "reachable" in aws_secrets_manager_harness.make_backend().check()


# --- through the search path ---------------------------------------------------------------------------


def test_search_path_prefetch_fills_the_cache(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    from credpath._search_path import SearchPath

    h = aws_secrets_manager_harness
    ids = [f"c{i}" for i in range(30)]
    for conn_id in ids:
        h.seed("connection", conn_id, f"http://u:{PW}@{conn_id}.example.com")
    h.seed("variable", "v", "1")
    backend = h.make_backend()
    path = SearchPath([backend], mask_logs=False)

    reports = path.prefetch(connections=[*ids, "absent"], variables=["v"])
    assert (reports["connection"].hits, reports["connection"].misses) == (30, 1)
    after_prefetch = dict(backend.aws.calls)
    assert after_prefetch == {"BatchGetSecretValue": 3}  # 2 for 31 connections, 1 for the variable

    assert path.get_connection("c7").host == "c7.example.com"
    assert path.get_variable("v") == "1"
    assert path.get_variable("absent-var", default=None) is None  # a real miss costs one call
    assert dict(backend.aws.calls) == {**after_prefetch, "GetSecretValue": 1}


def test_search_path_prefix_prefetch(aws_secrets_manager_harness: SecretsManagerHarness) -> None:
    from credpath._search_path import SearchPath

    h = aws_secrets_manager_harness
    for i in range(5):
        h.seed("connection", f"c{i}", f"http://h{i}")
    backend = h.make_backend()
    path = SearchPath([backend], mask_logs=False)
    path.prefetch(prefix=True)
    calls = dict(backend.aws.calls)
    assert calls == {"ListSecrets": 2, "BatchGetSecretValue": 1}  # connections (list + batch) and variables
    assert [path.get_connection(f"c{i}").host for i in range(5)] == [f"h{i}" for i in range(5)]
    assert dict(backend.aws.calls) == calls


def test_first_client_does_not_list_every_botocore_service(
    aws_secrets_manager_harness: SecretsManagerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # botocore's loader lists all ~400 service folders to validate a name (49 ms per process); credpath's
    # loader must find its own services directly, and still serve any other service a provider needs.
    import botocore.loaders

    aws_secrets_manager_harness.seed("variable", "k", "v")  # the harness's own boto3 client, not counted
    listed: list[str] = []
    real_listdir = botocore.loaders.os.listdir

    def counting_listdir(path: str) -> list[str]:
        listed.append(path)
        return real_listdir(path)

    monkeypatch.setattr(botocore.loaders.os, "listdir", counting_listdir)
    backend = aws_secrets_manager_harness.make_backend()
    assert backend.get_variable("k") == "v"
    assert len(listed) < 10, len(listed)
    session = backend.aws._session._session
    assert session.create_client("sso", region_name="us-east-1").meta.service_model.service_name == "sso"


# --- Airflow parity: kwargs, teams, one voice ------------------------------------------------------------


def test_airflow_kwargs_use_ssl_api_version_and_hook_extras_are_accepted(moto_env: MotoServer) -> None:
    from credpath.registry import create_backend

    moto_env.client("secretsmanager").create_secret(Name="airflow/variables/k", SecretString="v")
    # A published Airflow setting: backend_kwargs = {"use_ssl": false}, plus the AWS hook's extras.
    backend = create_backend(
        "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend",
        {
            "use_ssl": False,
            "api_version": "2017-10-17",
            "endpoint_url": moto_env.url,
            "region_name": "us-east-1",
            "config_kwargs": {"connect_timeout": 2},
            "botocore_config": {"read_timeout": 3},
            "service_config": {"sts": {"endpoint_url": moto_env.url}},
            "session_kwargs": {},
            "aws_session_token": None,
            "verify": False,
        },
    )
    assert backend.get_variable("k") == "v"
    client = backend.client
    assert client.meta.config.connect_timeout == 2 and client.meta.config.read_timeout == 3
    with pytest.raises(ConfigError, match=r"unknown kwarg\(s\) use_tls"):
        create_backend("aws-secrets-manager", {"use_tls": False})
    with pytest.raises(ConfigError, match="use_ssl must be true or false"):
        SecretsManagerBackend(use_ssl="no")


def test_session_kwargs_credentials_and_service_config_sts_endpoint(
    moto_env: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    moto_env.client("secretsmanager").create_secret(Name="airflow/variables/k", SecretString="v")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    backend = SecretsManagerBackend(
        endpoint_url=moto_env.url,
        session_kwargs={"aws_access_key_id": "AKIDSESSION", "aws_secret_access_key": "testing"},
    )
    assert backend.get_variable("k") == "v"
    # role_arn with service_config's STS endpoint (Airflow's meaning: where AssumeRole goes).
    assumed = SecretsManagerBackend(
        endpoint_url=moto_env.url,
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="testing",
        role_arn="arn:aws:iam::123456789012:role/r",
        service_config={"sts": {"endpoint_url": moto_env.url}},
    )
    assumed.prepare()  # builds the session without any request (credentials are fetched on first use)
    assert sum(assumed.aws.calls.values()) == 0
    assert assumed.get_variable("k") == "v"
    assert assumed.aws.calls == {"AssumeRole": 1, "GetSecretValue": 1}
    with pytest.raises(ConfigError, match="assume_role_method 'assume_role_with_saml' is not supported"):
        SecretsManagerBackend(role_arn="arn:aws:iam::1:role/r", assume_role_method="assume_role_with_saml")


def test_team_scoped_reads_as_the_provider(
    aws_secrets_manager_harness: SecretsManagerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = aws_secrets_manager_harness
    h.seed("variable", "shared", "global")
    h.seed("variable", "team_a--shared", "team-a's")
    h.seed("variable", "only", "global-only")
    h.seed("variable", "x--y", "ambiguous")
    backend = h.make_backend()
    log = calls_of(backend)
    assert backend.get_variable("shared", team_name="team_a") == "team-a's"
    assert backend.get_variable("shared", team_name="team_b") == "global"
    assert backend.get_variable("only", team_name="team_a") == "global-only"
    assert backend.get_variable("shared") == "global"
    assert [p["SecretId"] for p in log.params("GetSecretValue")][:3] == [
        "airflow/variables/team_a--shared",
        "airflow/variables/team_b--shared",
        "airflow/variables/shared",
    ]
    assert backend.get_variables(["shared", "only"], team_name="team_a") == {
        "shared": "team-a's",
        "only": "global-only",
    }
    assert backend.prefetch_variables(team_name="team_a") == {
        "shared": "team-a's",
        "only": "global-only",
    }
    # Outside multi-team mode an id with "--" is an id like any other (Airflow checks [core] multi_team).
    assert backend.get_variable("x--y") == "ambiguous"
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "True")
    log.clear()
    assert backend.get_variable("x--y") is None and backend.get_config("x--y") is None
    assert backend.get_variable("y", team_name="x") == "ambiguous"  # the team's own namespace
    assert len(log) == 1
    # Under an empty prefix the provider has no team-scoped name: the bare id only.
    bare = h.make_backend(variables_prefix="")
    log = calls_of(bare)
    assert bare.get_variable("k", team_name="team_a") is None
    assert [p["SecretId"] for p in log.params("GetSecretValue")] == ["k"]


def test_messages_name_the_configured_backend(aws_fault_proxy: FaultProxy, moto_env: MotoServer) -> None:
    from credpath.registry import create_backend

    backend = create_backend(
        "aws-secrets-manager",
        {"endpoint_url": aws_fault_proxy.url, "config_kwargs": {"retries": {"total_max_attempts": 1}}},
        name="prod-sm",
    )
    aws_fault_proxy.fail_next(1, 500, "InternalServiceError")
    with pytest.raises(BackendError) as info:
        backend.get_variable("k")
    assert str(info.value).startswith("backend 'prod-sm' (AWS Secrets Manager): secret 'airflow/variables/k'")
    with pytest.raises(ConfigError, match=r"^backend 'prod-sm' \(AWS Secrets Manager\): recovery_window"):
        create_backend("aws-secrets-manager", {"recovery_window_in_days": 3}, name="prod-sm")
    with pytest.raises(ConfigError, match=r"^backend 'prod-sm' \(AWS Secrets Manager\): variables_prefix is"):
        create_backend("aws-secrets-manager", {"variables_prefix": None}, name="prod-sm").set_variable(
            "a", "b"
        )
