"""The published set-up: AWS's guide to moving Airflow (MWAA) connections into Secrets Manager, end to end.

Airflow settings only (``AIRFLOW__SECRETS__BACKEND`` names Airflow's provider class, no Airflow installed),
the credpath CLI in a subprocess, moto behind a counting proxy (``AWS_ENDPOINT_URL``) so the HTTP requests
the CLI makes are counted too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from tests.conftest import assert_no_secret
from tests.servers.moto import FaultProxy, MotoServer

PW = "pw-s3cr3t-3"
AIRFLOW_SM = "airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend"
SNOWFLAKE_URI = (
    f"snowflake://myusername:{PW}@myaccount.snowflakecomputing.com:1234/myschema"
    "?account=myaccount&warehouse=mywarehouse&database=mydatabase&region=us-east-1"
)
RDS = {
    "engine": "postgres",
    "host": "mydb.cluster-abc.us-east-1.rds.amazonaws.com",
    "username": "dbadmin",
    "password": PW,
    "dbname": "orders",
    "port": 5432,
}


@pytest.fixture
def guide_env(moto_env: MotoServer, aws_fault_proxy: FaultProxy) -> dict[str, str]:
    sm = moto_env.client("secretsmanager")
    sm.create_secret(Name="my-airflow-env-1/variables/my_variable_name", SecretString="12345")
    sm.create_secret(Name="my-airflow-env-1/connections/snowflake_conn", SecretString=SNOWFLAKE_URI)
    sm.create_secret(Name="my-airflow-env-1/connections/rds_orders", SecretString=json.dumps(RDS))
    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW__SECRETS__BACKEND": AIRFLOW_SM,
            "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(
                {
                    "connections_prefix": "my-airflow-env-1/connections",
                    "variables_prefix": "my-airflow-env-1/variables",
                }
            ),
            "AWS_ENDPOINT_URL": aws_fault_proxy.url,
        }
    )
    return env


def credpath(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "credpath", *args], env=env, capture_output=True, text=True, timeout=60
    )
    return result


def sm_calls(proxy: FaultProxy) -> Counter[str]:
    return Counter(
        t.removeprefix("secretsmanager.") for t in proxy.targets if t.startswith("secretsmanager.")
    )


def test_variable_from_the_guide(guide_env: dict[str, str], aws_fault_proxy: FaultProxy) -> None:
    result = credpath(guide_env, "variables", "get", "my_variable_name")
    assert result.returncode == 0, result.stderr
    assert "12345" in result.stdout
    assert sm_calls(aws_fault_proxy) == {"GetSecretValue": 1}

    as_json = credpath(guide_env, "variables", "get", "my_variable_name", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert "12345" in as_json.stdout


def test_snowflake_uri_connection_from_the_guide_is_masked(
    guide_env: dict[str, str], aws_fault_proxy: FaultProxy
) -> None:
    result = credpath(guide_env, "connections", "get", "snowflake_conn", "--json")
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout + result.stderr, PW)
    record = json.loads(result.stdout)
    assert {
        k: record[k] for k in ("conn_id", "conn_type", "host", "login", "password", "schema", "port")
    } == {
        "conn_id": "snowflake_conn",
        "conn_type": "snowflake",
        "host": "myaccount.snowflakecomputing.com",
        "login": "myusername",
        "password": "***",
        "schema": "myschema",
        "port": 1234,
    }
    assert record["extra"] == {
        "account": "myaccount",
        "warehouse": "mywarehouse",
        "database": "mydatabase",
        "region": "us-east-1",
    }
    assert record["source"]  # the backend that served it is named
    assert sm_calls(aws_fault_proxy) == {"GetSecretValue": 1}

    table = credpath(guide_env, "connections", "get", "snowflake_conn")
    assert table.returncode == 0, table.stderr
    assert "myusername" in table.stdout
    assert_no_secret(table.stdout + table.stderr, PW)


@pytest.mark.reveals_secrets
def test_reveal_shows_the_stored_password(guide_env: dict[str, str]) -> None:
    result = credpath(guide_env, "connections", "get", "snowflake_conn", "--json", "--reveal")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["password"] == PW


def test_rds_json_secret_resolves_to_postgres(guide_env: dict[str, str]) -> None:
    result = credpath(guide_env, "connections", "get", "rds_orders", "--json")
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout + result.stderr, PW)
    record = json.loads(result.stdout)
    assert (record["conn_type"], record["host"], record["login"], record["password"], record["port"]) == (
        "postgres",
        RDS["host"],
        "dbadmin",
        "***",
        5432,
    )
    assert record["schema"] == "orders"  # RDS's dbname is the database: Airflow's schema field
    assert record["extra"] is None


def test_several_ids_are_one_batch_call_and_a_miss_exits_1(
    guide_env: dict[str, str], aws_fault_proxy: FaultProxy
) -> None:
    result = credpath(guide_env, "connections", "get", "snowflake_conn", "rds_orders", "nope", "--json")
    assert result.returncode == 1
    assert "'nope' not found" in result.stderr
    assert_no_secret(result.stdout + result.stderr, PW)
    records = json.loads(result.stdout)
    assert [r["conn_id"] for r in records] == ["snowflake_conn", "rds_orders"]
    assert sm_calls(aws_fault_proxy) == {"BatchGetSecretValue": 1}


def test_endpoint_as_a_single_backend_kwarg(guide_env: dict[str, str], moto_env: MotoServer) -> None:
    env = dict(guide_env)
    del env["AWS_ENDPOINT_URL"]
    env["AIRFLOW__SECRETS__BACKEND_KWARG__ENDPOINT_URL"] = moto_env.url
    result = credpath(env, "variables", "get", "my_variable_name")
    assert result.returncode == 0, result.stderr
    assert "12345" in result.stdout


def test_published_backend_kwargs_with_use_ssl_false(
    guide_env: dict[str, str], aws_fault_proxy: FaultProxy
) -> None:
    # Settings copied from Airflow set-ups: {"use_ssl": false} (for an http:// endpoint) and the AWS hook's
    # extras. Airflow pops use_ssl/api_version for the client and passes the rest on; so does credpath.
    env = dict(guide_env)
    kwargs = json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    kwargs.update(use_ssl=False, region_name="us-east-1", config_kwargs={"connect_timeout": 2}, timeout=5)
    env["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps(kwargs)
    result = credpath(env, "variables", "get", "my_variable_name")
    assert result.returncode == 0, result.stderr
    assert "12345" in result.stdout
    assert sm_calls(aws_fault_proxy) == {"GetSecretValue": 1}
