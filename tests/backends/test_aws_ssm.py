"""ParameterStoreBackend against a real moto server over HTTP; API calls counted with botocore hooks."""

from __future__ import annotations

import json

import pytest

from credpath.backends.aws_ssm import BATCH_SIZE, ParameterStoreBackend
from credpath.errors import AccessDenied, BackendError, ConfigError
from credpath.model import Connection
from tests.servers.moto import ACCOUNT_ID, CallLog, FaultProxy, MotoServer, ParameterStoreHarness

PW = "pw-s3cr3t-2"


def calls_of(backend: ParameterStoreBackend) -> CallLog:
    return CallLog.attach(backend.client)


def test_reads_decrypt_secure_strings_one_call_each(aws_ssm_harness: ParameterStoreHarness) -> None:
    h = aws_ssm_harness
    h.seed("connection", "pg", f"postgres://u:{PW}@db:5432/sales")
    h.seed_parameter("/airflow/variables/plain", "hello", type_="String")
    h.seed("config", "fernet_key", "k")
    backend = h.make_backend()
    log = calls_of(backend)
    conn = backend.get_connection("pg")
    assert conn is not None and (conn.password, conn.host, conn.port) == (PW, "db", 5432)
    assert backend.get_variable("plain") == "hello"
    assert backend.get_config("fernet_key") == "k"
    assert backend.get_variable("missing") is None
    assert log.counts == {"GetParameter": 4}
    assert all(p["WithDecryption"] is True for p in log.params("GetParameter"))
    assert log.params("GetParameter")[0]["Name"] == "/airflow/connections/pg"


def test_prefixes_leading_slash_null_and_patterns(aws_ssm_harness: ParameterStoreHarness) -> None:
    h = aws_ssm_harness
    h.seed_parameter("/team/vars/colour", "blue")
    h.seed_parameter("/bare", "b")
    backend = h.make_backend(variables_prefix="team/vars/", connections_prefix=None, config_prefix="")
    log = calls_of(backend)
    assert backend.get_variable("colour") == "blue"  # leading slash ensured, trailing one stripped
    assert backend.get_config("bare") == "b"  # empty prefix: the bare id, with a leading slash
    assert backend.get_conn_value("anything") is None
    assert backend.get_variable("has space") is None  # cannot be a parameter name: a miss, no call
    assert log.counts == {"GetParameter": 2}

    patterned = h.make_backend(variables_lookup_pattern="^col")
    log = calls_of(patterned)
    assert patterned.get_variable("other") is None
    assert len(log) == 0


def test_batch_get_uses_get_parameters_in_tens(aws_ssm_harness: ParameterStoreHarness) -> None:
    h = aws_ssm_harness
    ids = [f"c{i:02d}" for i in range(23)]
    for i, conn_id in enumerate(ids):
        h.seed("connection", conn_id, f"http://u:{PW}@h{i}")
    backend = h.make_backend()
    log = calls_of(backend)
    values = backend.get_conn_values([*ids, "missing", "bad name"])
    assert sorted(values) == ids
    assert Connection.from_value(values["c05"]).host == "h5"
    sizes = [len(p["Names"]) for p in log.params("GetParameters")]
    assert sizes == [10, 10, 4] and max(sizes) <= BATCH_SIZE
    assert all(p["WithDecryption"] for p in log.params("GetParameters"))
    assert backend.get_variables(["nope"]) == {}


def test_prefix_prefetch_and_listing_use_get_parameters_by_path(
    aws_ssm_harness: ParameterStoreHarness,
) -> None:
    h = aws_ssm_harness
    for i in range(15):
        h.seed("connection", f"c{i}", f"http://u:{PW}@h{i}")
    h.seed("connection", "team/nested", "http://nested")
    h.seed_parameter("/airflow/connections-other/x", "http://not-mine")
    h.seed("variable", "v", "1")
    backend = h.make_backend()
    log = calls_of(backend)

    values = backend.prefetch_connections()
    assert sorted(values) == sorted([*(f"c{i}" for i in range(15)), "team/nested"])
    assert values["c4"] == f"http://u:{PW}@h4"
    pages = log.params("GetParametersByPath")
    assert len(pages) == 2 and all(p["MaxResults"] == 10 and p["Recursive"] for p in pages)
    assert backend.prefetch_variables() == {"v": "1"}

    log.clear()
    assert backend.list_connections() == sorted([*(f"c{i}" for i in range(15)), "team/nested"])
    assert [p["WithDecryption"] for p in log.params("GetParametersByPath")] == [False, False]


def test_writes_are_secure_strings_and_respect_overwrite(aws_ssm_harness: ParameterStoreHarness) -> None:
    h = aws_ssm_harness
    backend = h.make_backend()
    log = calls_of(backend)
    conn = Connection(conn_id="w", conn_type="postgres", host="h", password=PW, description="desc")
    backend.set_connection(conn)
    assert log.counts == {"PutParameter": 1}
    stored = h.client.get_parameter(Name="/airflow/connections/w", WithDecryption=True)["Parameter"]
    assert stored["Type"] == "SecureString"
    assert backend.get_connection("w") == conn

    with pytest.raises(ConfigError, match="'/airflow/connections/w' already exists"):
        backend.set_connection(Connection(conn_id="w", conn_type="http"), overwrite=False)
    assert backend.get_connection("w") == conn
    backend.set_variable("v", "1")
    backend.set_variable("v", "2")
    assert backend.get_variable("v") == "2"
    with pytest.raises(ConfigError, match=r"parameter name '/airflow/variables/bad name', which .* rejects"):
        backend.set_variable("bad name", "x")

    assert backend.delete_variable("v") is True
    assert backend.delete_variable("v") is False
    assert backend.get_variable("v") is None


def test_kms_key_id_is_passed_on_writes(aws_ssm_harness: ParameterStoreHarness) -> None:
    h = aws_ssm_harness
    backend = h.make_backend(kms_key_id="alias/airflow")
    log = calls_of(backend)
    backend.set_variable("k", "v")
    assert log.params("PutParameter")[0]["KeyId"] == "alias/airflow"
    assert json.dumps(log.params("PutParameter")[0]["Type"]) == '"SecureString"'


def test_access_denied_names_parameter_and_caller(moto_env: MotoServer) -> None:
    iam = moto_env.client("iam")
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    moto_env.client("ssm").put_parameter(Name="/airflow/variables/locked", Value=PW, Type="SecureString")
    backend = ParameterStoreBackend(
        endpoint_url=moto_env.url,
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    moto_env.set_auth(0)
    try:
        with pytest.raises(AccessDenied) as info:
            backend.get_variable("locked")
    finally:
        moto_env.set_auth(None)
    assert "'/airflow/variables/locked'" in str(info.value)
    assert f"arn:aws:iam::{ACCOUNT_ID}:user/nobody" in str(info.value)


def test_throttling_retried_then_surfaces(
    aws_fault_proxy: FaultProxy, aws_ssm_harness: ParameterStoreHarness
) -> None:
    h = aws_ssm_harness
    h.seed("variable", "k", "v")
    backend = h.make_backend(
        endpoint_url=aws_fault_proxy.url,
        config_kwargs={"retries": {"mode": "standard", "total_max_attempts": 3}},
    )
    aws_fault_proxy.fail_next(1, 400, "ThrottlingException")
    assert backend.get_variable("k") == "v"
    assert aws_fault_proxy.requests == 2
    aws_fault_proxy.fail_next(5, 500, "InternalServerError")
    with pytest.raises(BackendError, match="server error 500"):
        backend.get_variable("k")


def test_registry_maps_airflow_class_path(moto_env: MotoServer) -> None:
    from credpath.registry import create_backend

    backend = create_backend(
        "airflow.providers.amazon.aws.secrets.systems_manager.SystemsManagerParameterStoreBackend",
        {"connections_prefix": "/prod/conns", "endpoint_url": moto_env.url},
    )
    assert isinstance(backend, ParameterStoreBackend)
    assert backend.secret_name("connection", "x") == "/prod/conns/x"
    assert "reachable" in backend.check()


def test_search_path_prefetch(aws_ssm_harness: ParameterStoreHarness) -> None:
    from credpath._search_path import SearchPath

    h = aws_ssm_harness
    for i in range(12):
        h.seed("connection", f"c{i}", f"http://h{i}")
    backend = h.make_backend()
    path = SearchPath([backend], mask_logs=False)
    path.prefetch(connections=[f"c{i}" for i in range(12)])
    assert dict(backend.aws.calls) == {"GetParameters": 2}
    assert [path.get_connection(f"c{i}").host for i in range(12)] == [f"h{i}" for i in range(12)]
    assert dict(backend.aws.calls) == {"GetParameters": 2}


def test_team_scoped_reads_and_use_ssl_as_the_provider(
    aws_ssm_harness: ParameterStoreHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = aws_ssm_harness
    h.seed("variable", "shared", "global")
    h.seed("variable", "team_a--shared", "team-a's")
    h.seed_parameter("/team_a--bare", "team-a bare")
    backend = h.make_backend(use_ssl=False, api_version="2014-11-06")
    log = CallLog.attach(backend.client)
    assert backend.get_variable("shared", team_name="team_a") == "team-a's"
    assert backend.get_variable("shared", team_name="team_b") == "global"
    assert [p["Name"] for p in log.params("GetParameter")] == [
        "/airflow/variables/team_a--shared",
        "/airflow/variables/team_b--shared",
        "/airflow/variables/shared",
    ]
    assert backend.get_variables(["shared"], team_name="team_a") == {"shared": "team-a's"}
    # Unlike Secrets Manager, Airflow's SSM backend tries the team's name under an empty prefix too.
    assert h.make_backend(variables_prefix="").get_variable("bare", team_name="team_a") == "team-a bare"
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "true")
    assert backend.get_variable("team_a--shared") is None
    assert backend.get_conn_value("a--b") is None


def test_messages_name_the_configured_backend() -> None:
    from credpath.registry import create_backend

    with pytest.raises(ConfigError, match=r"^backend 'prod-ssm' \(AWS Systems Manager Parameter Store\): "):
        create_backend("aws-ssm", {"timeout": -1}, name="prod-ssm")
    backend = create_backend("aws-ssm", {}, name="prod-ssm")
    with pytest.raises(ConfigError, match=r"^backend 'prod-ssm' .*: variable id 'a b' gives parameter name"):
        backend.set_variable("a b", "v")
