"""Fault tier for the cloud stores (AWS Secrets Manager and SSM, GCP Secret Manager, Azure Key Vault).

Each test puts a real server (moto) or an HTTP fake behind a fault (a hanging or trickling answer, a 5xx
storm, ``429`` with ``Retry-After``, a killed server, a refused port) and asserts the bound: the time to the
error, the requests the server saw, the value returned. Timing bounds are generous (the machine is shared);
they separate "within the deadline" from "the old minutes".
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from credpath.backends.aws_secrets_manager import SecretsManagerBackend
from credpath.backends.aws_ssm import ParameterStoreBackend
from credpath.errors import AccessDenied, BackendError, BackendTimeout
from tests.servers._util import free_port, stop_process
from tests.servers.moto import REGION, MotoServer, start_moto

AWS_JSON = {"Content-Type": "application/x-amz-json-1.1"}
UNAVAILABLE = json.dumps({"__type": "ServiceUnavailable", "message": "injected"}).encode()
THROTTLED = json.dumps({"__type": "ThrottlingException", "message": "injected"}).encode()


@contextmanager
def elapsed() -> Iterator[list[float]]:
    took: list[float] = []
    started = time.monotonic()
    try:
        yield took
    finally:
        took.append(time.monotonic() - started)


def sm(endpoint: str, **kwargs: Any) -> SecretsManagerBackend:
    """A backend named like a user's (``prod-sm``), so messages show the configured name."""
    from credpath.registry import create_backend

    return _prepared(
        create_backend(
            "aws-secrets-manager", {"endpoint_url": endpoint, "region_name": REGION, **kwargs}, name="prod-sm"
        )
    )


def _prepared(backend: Any) -> Any:
    """The backend with its one-time start-up done (client imports: seconds on a loaded machine), so the
    timed calls measure the deadline, which bounds store calls, not imports."""
    backend.prepare()
    return backend


# --- AWS ------------------------------------------------------------------------------------------------


def test_aws_hanging_endpoint_times_out_by_default_within_the_deadline(
    moto_env: MotoServer, fault_proxy: Any
) -> None:
    proxy = fault_proxy("127.0.0.1", moto_env.port)
    proxy.add("hang")
    backend = sm(proxy.url)  # default settings: no timeout, no config_kwargs
    with elapsed() as took, pytest.raises(BackendTimeout) as info:
        backend.get_variable("k")
    assert 9 <= took[0] < 14, took  # the 10 s default (was 75.6 s: 5 attempts x 15 s)
    message = str(info.value)
    assert message.startswith("backend 'prod-sm' (AWS Secrets Manager): GetSecretValue of secret ")
    assert "'airflow/variables/k'" in message and "timed out after 10 s" in message
    assert info.value.backend == "prod-sm"
    # One hung connection gets one more try on a new one, inside the same deadline.
    assert 1 <= proxy.count() <= 2


def test_aws_trickling_server_cannot_outlast_the_deadline(moto_env: MotoServer, fault_proxy: Any) -> None:
    moto_env.client("secretsmanager").create_secret(Name="airflow/variables/k", SecretString="v")
    proxy = fault_proxy("127.0.0.1", moto_env.port)
    proxy.add("trickle", interval=0.1)  # every byte well inside any per-read timeout
    backend = sm(proxy.url, timeout=2)
    with elapsed() as took, pytest.raises(BackendTimeout, match="timed out after 2 s"):
        backend.get_variable("k")
    assert took[0] < 4, took
    assert proxy.count() == 1


def test_aws_5xx_storm_is_retried_with_backoff_a_bounded_number_of_times(
    moto_env: MotoServer, fault_proxy: Any
) -> None:
    proxy = fault_proxy("127.0.0.1", moto_env.port)
    proxy.add("status", status=503, headers=AWS_JSON, body=UNAVAILABLE)
    backend = sm(proxy.url)
    with elapsed() as took, pytest.raises(BackendError) as info:
        backend.get_variable("k")
    assert not isinstance(info.value, BackendTimeout | AccessDenied)
    assert proxy.count() == 3  # botocore's default was 5 tries per lookup
    assert took[0] < 3, took
    assert "server error 503 (ServiceUnavailable) after 3 attempt(s)" in str(info.value)


def test_aws_config_kwargs_retries_and_read_timeout_still_apply(
    moto_env: MotoServer, fault_proxy: Any
) -> None:
    proxy = fault_proxy("127.0.0.1", moto_env.port)
    proxy.add("status", status=500, headers=AWS_JSON, body=UNAVAILABLE)
    backend = sm(proxy.url, config_kwargs={"retries": {"total_max_attempts": 5, "mode": "legacy"}})
    with pytest.raises(BackendError, match="after 5 attempt"):
        backend.get_variable("k")
    assert proxy.count() == 5

    hang = fault_proxy("127.0.0.1", moto_env.port)
    hang.add("hang")
    backend = sm(hang.url, timeout=4, config_kwargs={"read_timeout": 1, "retries": {"max_attempts": 9}})
    with elapsed() as took, pytest.raises(BackendTimeout, match="timed out after 4 s"):
        backend.get_variable("k")
    assert took[0] < 6, took
    assert hang.count() >= 3  # each try gave up after the 1 s read timeout; the deadline ended the rest


def test_aws_retry_after_beyond_the_deadline_fails_at_once(moto_env: MotoServer, fault_proxy: Any) -> None:
    proxy = fault_proxy("127.0.0.1", moto_env.port)
    proxy.add("status", status=429, headers={**AWS_JSON, "Retry-After": "3600"}, body=THROTTLED)
    backend = sm(proxy.url)
    with elapsed() as took, pytest.raises(BackendError) as info:
        backend.get_variable("k")
    assert took[0] < 2, took
    assert proxy.count() == 1
    assert "Retry-After 3600 s is beyond the 10 s deadline" in str(info.value)


def test_aws_retry_after_inside_the_deadline_is_honoured(moto_env: MotoServer, fault_proxy: Any) -> None:
    moto_env.client("secretsmanager").create_secret(Name="airflow/variables/k", SecretString="v")
    proxy = fault_proxy("127.0.0.1", moto_env.port)
    proxy.add("status", times=1, status=429, headers={**AWS_JSON, "Retry-After": "1"}, body=THROTTLED)
    backend = sm(proxy.url)
    with elapsed() as took:
        assert backend.get_variable("k") == "v"
    assert 0.9 <= took[0] < 4, took
    assert proxy.count() == 2


def test_aws_refused_connection_fails_fast(moto_env: MotoServer) -> None:
    backend = sm(f"http://127.0.0.1:{free_port()}")
    with elapsed() as took, pytest.raises(BackendError, match="cannot reach the AWS endpoint") as info:
        backend.get_variable("k")
    assert not isinstance(info.value, BackendTimeout)
    assert took[0] < 1, took


def test_aws_kill_and_restart_moto_on_the_same_port_recovers(own_moto: MotoServer, tmp_path: Any) -> None:
    own_moto.client("secretsmanager").create_secret(Name="airflow/variables/k", SecretString="before")
    ssm_client = own_moto.client("ssm")
    ssm_client.put_parameter(Name="/airflow/variables/k", Value="p-before", Type="SecureString")
    secrets = sm(own_moto.url)
    params = ParameterStoreBackend(endpoint_url=own_moto.url, region_name=REGION)
    assert secrets.get_variable("k") == "before" and params.get_variable("k") == "p-before"

    assert own_moto.proc is not None
    stop_process(own_moto.proc)  # by PID
    for backend in (secrets, params):
        with elapsed() as took, pytest.raises(BackendError):
            backend.get_variable("k")
        assert took[0] < 1, took  # a refused port is not waited on

    own_moto.proc = start_moto(own_moto.port, tmp_path / "moto-restarted.log")
    own_moto.client("secretsmanager").create_secret(Name="airflow/variables/k", SecretString="after")
    own_moto.client("ssm").put_parameter(Name="/airflow/variables/k", Value="p-after", Type="SecureString")
    # The same backend objects (same clients and connection pools) work again: no process restart.
    assert secrets.get_variable("k") == "after" and params.get_variable("k") == "p-after"


def test_aws_ssm_hang_and_storm(moto_env: MotoServer, fault_proxy: Any) -> None:
    proxy = fault_proxy("127.0.0.1", moto_env.port)
    proxy.add("hang")
    backend = _prepared(ParameterStoreBackend(endpoint_url=proxy.url, region_name=REGION, timeout=2))
    with elapsed() as took, pytest.raises(BackendTimeout) as info:
        backend.get_variable("k")
    assert took[0] < 4, took
    assert "GetParameter of parameter '/airflow/variables/k' timed out after 2 s" in str(info.value)
    assert str(info.value).startswith("backend 'aws-ssm' (AWS Systems Manager Parameter Store): ")

    storm = fault_proxy("127.0.0.1", moto_env.port)
    storm.add("status", status=502, headers=AWS_JSON, body=UNAVAILABLE)
    backend = ParameterStoreBackend(endpoint_url=storm.url, region_name=REGION)
    with pytest.raises(BackendError, match="after 3 attempt"):
        backend.get_variable("k")
    assert storm.count() == 3


def test_aws_access_denied_is_not_retried(moto_env: MotoServer, fault_proxy: Any) -> None:
    proxy = fault_proxy("127.0.0.1", moto_env.port)
    denied = json.dumps({"__type": "AccessDeniedException", "message": "no"}).encode()
    proxy.add("status", path="^/$", status=400, headers=AWS_JSON, body=denied)
    backend = sm(proxy.url)
    with pytest.raises(AccessDenied):
        backend.get_variable("k")
    assert proxy.count() <= 2  # the read, and at most one GetCallerIdentity for the message


# --- GCP --------------------------------------------------------------------------------------------------


@pytest.fixture
def gcp(gcp_secret_manager_harness: Any) -> Any:
    yield gcp_secret_manager_harness
    gcp_secret_manager_harness.fake.clear_slow()


def gcp_accesses(h: Any) -> int:
    return h.fake.count("access")


def test_gcp_hang_and_trickle_end_at_the_deadline(gcp: Any) -> None:
    gcp.seed("variable", "v", "ok")
    gcp.fake.slow_next("hang", count=5)
    backend = _prepared(gcp.make_backend(timeout=2))
    with elapsed() as took, pytest.raises(BackendTimeout) as info:
        backend.get_variable("v")
    assert took[0] < 4, took
    message = str(info.value)
    assert message.startswith("backend 'gcp-secret-manager' (GCP Secret Manager): ")
    assert "AccessSecretVersion of 'airflow-variables-v' timed out after 2 s" in message
    assert gcp_accesses(gcp) == 2  # a hung try is given up at half the deadline for one more

    gcp.fake.clear_slow()
    gcp.fake.slow_next("hang", count=1)  # one hung connection: the next try on a new one succeeds
    with elapsed() as took:
        assert backend.get_variable("v") == "ok"
    assert took[0] < 4, took

    gcp.fake.clear_slow()
    gcp.fake.slow_next("trickle", count=5, interval=0.1)
    with elapsed() as took, pytest.raises(BackendTimeout, match="timed out after 2 s"):
        backend.get_variable("v")
    assert took[0] < 4, took


def test_gcp_5xx_storm_is_bounded_and_429_retry_after(gcp: Any) -> None:
    gcp.seed("variable", "v", "ok")
    gcp.fake.fail_next(503, 1000)
    backend = gcp.make_backend()
    with elapsed() as took, pytest.raises(BackendError, match="after 3 attempt"):
        backend.get_variable("v")
    assert took[0] < 3, took
    assert gcp_accesses(gcp) == 3  # the client's own retry kept trying for up to 60 s

    gcp.fake.reset()
    gcp.seed("variable", "v", "ok")
    gcp.fake.fail_next(429, 1, retry_after="3600")
    with elapsed() as took, pytest.raises(BackendError) as info:
        backend.get_variable("v")
    assert took[0] < 2 and gcp_accesses(gcp) == 1
    assert "Retry-After 3600 s is beyond the 10 s deadline" in str(info.value)

    gcp.fake.fail_next(429, 1, retry_after="1")
    with elapsed() as took:
        assert backend.get_variable("v") == "ok"
    assert 0.9 <= took[0] < 4 and gcp_accesses(gcp) == 3


def test_gcp_permission_denied_not_retried_and_refused_fails_fast(gcp: Any) -> None:
    gcp.seed("variable", "v", "ok")
    gcp.fake.deny(gcp.project, "airflow-variables-v")
    with pytest.raises(AccessDenied):
        gcp.make_backend().get_variable("v")
    assert gcp_accesses(gcp) == 1

    refused = gcp.make_backend(client_options={"api_endpoint": f"http://127.0.0.1:{free_port()}"})
    with elapsed() as took, pytest.raises(BackendError) as info:
        refused.get_variable("v")
    assert not isinstance(info.value, BackendTimeout)
    assert took[0] < 1, took


# --- Azure ------------------------------------------------------------------------------------------------


@pytest.fixture
def akv(azure_key_vault_harness: Any) -> Any:
    yield azure_key_vault_harness
    azure_key_vault_harness.fake.clear_slow()


def akv_backend(h: Any, **kwargs: Any) -> Any:
    """The harness's backend with azure-core's defaults (the harness itself switches retries off)."""
    base = h.backend_kwargs()
    base["client_kwargs"] = {k: v for k, v in base["client_kwargs"].items() if k != "retry_total"}
    from credpath.backends.azure_key_vault import KeyVaultBackend

    return _prepared(KeyVaultBackend(**{**base, **kwargs}))


def test_azure_tls_listener_that_never_answers_times_out(akv: Any, hanging_listener: Any) -> None:
    backend = akv_backend(akv, vault_url=f"https://127.0.0.1:{hanging_listener.port}", timeout=2)
    with elapsed() as took, pytest.raises(BackendTimeout) as info:
        backend.get_variable("v")
    assert took[0] < 4, took  # azure-core's defaults: 300 s socket timeouts, 10 retries
    message = str(info.value)
    assert message.startswith("backend 'azure-key-vault' (Azure Key Vault): ")
    assert "GetSecret of 'airflow-variables-v' timed out after 2 s" in message


def test_azure_trickle_ends_at_the_deadline(akv: Any) -> None:
    akv.seed("variable", "v", "ok")
    backend = akv_backend(akv, timeout=2)
    assert backend.get_variable("v") == "ok"  # token and connection in place
    akv.fake.slow_next("trickle", count=5, interval=0.1)
    with elapsed() as took, pytest.raises(BackendTimeout, match="timed out after 2 s"):
        backend.get_variable("v")
    assert took[0] < 4, took


def test_azure_5xx_storm_and_retry_after(akv: Any) -> None:
    akv.seed("variable", "v", "ok")
    backend = akv_backend(akv)
    assert backend.get_variable("v") == "ok"
    before = akv.fake.count()
    akv.fake.fail_next(503, 100)
    with elapsed() as took, pytest.raises(BackendError, match="HTTP 503 ServiceUnavailable after 3 attempt"):
        backend.get_variable("v")
    assert took[0] < 3, took
    assert akv.fake.count() - before == 3

    akv.fake.reset()
    akv.seed("variable", "v", "ok")
    before = akv.fake.count()
    akv.fake.fail_next(429, 1, retry_after="3600")
    with elapsed() as took, pytest.raises(BackendError) as info:
        backend.get_variable("v")
    assert took[0] < 2 and akv.fake.count() - before == 1
    assert "Retry-After 3600 s is beyond the 10 s deadline" in str(info.value)

    akv.fake.fail_next(429, 1, retry_after="1")
    with elapsed() as took:
        assert backend.get_variable("v") == "ok"
    assert 0.9 <= took[0] < 4


def test_azure_refused_fails_fast_and_forbidden_is_not_retried(akv: Any) -> None:
    refused = akv_backend(akv, vault_url=f"https://127.0.0.1:{free_port()}")
    with elapsed() as took, pytest.raises(BackendError) as info:
        refused.get_variable("v")
    assert not isinstance(info.value, BackendTimeout)
    assert took[0] < 1, took

    akv.seed("variable", "v", "ok")
    akv.fake.deny_all = True
    before = akv.fake.count()
    with pytest.raises(AccessDenied):
        akv_backend(akv).get_variable("v")
    assert akv.fake.count() - before == 1
