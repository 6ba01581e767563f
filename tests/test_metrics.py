"""Metrics: /metrics after a known sequence of lookups equals the store requests counted at the server
(OpenBao and moto behind counting fault proxies), lookups by tier, Vault logins, Airflow-style Stats."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from credpath import metrics
from credpath._lookup import trace
from credpath._search_path import SearchPath

pytest.importorskip("prometheus_client")
pytest.importorskip("fastapi")


@pytest.fixture(autouse=True)
def _fresh_metrics():
    metrics.reset()
    yield
    metrics.disable()
    metrics.reset()


def scrape(search_path: SearchPath) -> dict[tuple[str, ...], float]:
    from fastapi.testclient import TestClient
    from prometheus_client.parser import text_string_to_metric_families

    from credpath.web.app import create_app

    response = TestClient(create_app(search_path)).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, *(f"{k}={v}" for k, v in sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, ...], float], name: str, *labels: str) -> float:
    return sum(v for k, v in samples.items() if k[0] == name and all(label in k for label in labels))


def test_import_credpath_does_not_import_prometheus() -> None:
    import subprocess

    code = (
        "import sys, credpath, credpath._search_path, credpath.metrics, credpath.backends.vault;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('prometheus_client', 'fastapi', 'starlette', 'jinja2', 'uvicorn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_counters_equal_requests_at_the_servers(openbao: Any, moto_env: Any, fault_proxy: Any) -> None:
    from credpath.backends.aws_secrets_manager import SecretsManagerBackend
    from credpath.backends.vault import VaultBackend

    mount = openbao.enable_kv(2)
    try:
        openbao.put(mount, 2, "connections/in_vault", {"conn_uri": "postgres://u:vm-s3cr3t@h:5432/d"})
        openbao.put(mount, 2, "variables/color", {"value": "green"})
        moto_env.client("secretsmanager").create_secret(
            Name="airflow/connections/in_aws", SecretString="mysql://a:aws-s3cr3t@h:3306/d"
        )
        openbao.policy("metrics-reader", f'path "{mount}/*" {{ capabilities = ["read", "list"] }}')
        role_id, secret_id = openbao.approle("metrics-reader", ["metrics-reader"])
        vault_proxy = fault_proxy("127.0.0.1", int(openbao.addr.rsplit(":", 1)[1]))
        aws_proxy = fault_proxy("127.0.0.1", moto_env.port)
        vault = VaultBackend(
            url=vault_proxy.url, auth_type="approle", role_id=role_id, secret_id=secret_id, mount_point=mount,
            kv_engine_version=2,
        )  # fmt: skip
        aws = SecretsManagerBackend(endpoint_url=aws_proxy.url, region_name="us-east-1")
        sp = SearchPath([("vault", vault), ("aws", aws)])
        metrics.enable()
        metrics.instrument(sp)

        # The known sequence.
        sp.get_connection("in_vault")  # vault: login + read (hit)
        sp.get_connection("in_vault")  # process cache: no request
        sp.get_connection("in_aws")  # vault miss, aws hit
        sp.get_variable("color")  # vault hit
        assert sp.get_variable("absent", default=None) is None  # vault miss, aws miss
        assert sp.get_variable("absent", default=None) is None  # cached miss: no request
        sp.list_ids("connection")  # one list each
        throttled = b'{"__type": "ThrottlingException", "message": "Rate exceeded"}'
        aws_proxy.add(
            "status",
            status=400,
            headers={"Content-Type": "application/x-amz-json-1.1"},
            body=throttled,
            times=20,
        )
        aws_before_throttle = aws_proxy.count()
        with pytest.raises(Exception):  # noqa: B017 - vault misses, aws throttled: BackendUnavailable
            sp.get_connection("only_after_throttle")
        throttled_requests = aws_proxy.count() - aws_before_throttle
        aws_proxy.clear()

        samples = scrape(sp)
        login_requests = vault_proxy.count(r"/v1/auth/approle/login")
        assert login_requests == 1
        assert total(samples, "credpath_logins_total", "backend=vault") == login_requests
        vault_reads = vault_proxy.count() - login_requests
        assert total(samples, "credpath_store_requests_total", "backend=vault") == vault_reads
        assert vault_reads == 6  # in_vault, in_aws, color, absent, list, only_after_throttle
        assert total(samples, "credpath_store_requests_total", "backend=vault", "outcome=hit") == 3
        assert total(samples, "credpath_store_requests_total", "backend=vault", "operation=list") == 1
        # aws: in_aws, absent, list; the throttled call is one request here, but the client retried it.
        assert total(samples, "credpath_store_requests_total", "backend=aws", "outcome=hit") == 2
        assert total(samples, "credpath_store_requests_total", "backend=aws", "outcome=miss") == 1
        assert total(samples, "credpath_store_requests_total", "backend=aws", "outcome=throttled") == 1
        # ... and each retry the store billed is counted: a request at the server is a store call or a retry.
        assert aws_before_throttle == 3 and throttled_requests > 1
        assert total(samples, "credpath_store_retries_total", "backend=aws") == throttled_requests - 1
        assert total(samples, "credpath_store_retries_total", "backend=vault") == 0
        # Lookups by tier: 5 from the stores (one failed), 2 from the process cache.
        assert total(samples, "credpath_lookups_total", "tier=process") == 2
        assert total(samples, "credpath_lookups_total", "tier=store", "result=found") == 3
        assert total(samples, "credpath_lookups_total", "tier=store", "result=missing") == 1
        assert total(samples, "credpath_lookups_total", "result=error") == 1
        assert total(samples, "credpath_lookup_seconds_count") == 7
        sp.close()
    finally:
        openbao.disable(mount)


def test_stale_tier_and_breaker_rejections() -> None:
    from credpath._cache import CacheSettings
    from credpath.errors import BackendUnavailable
    from tests.memory_backend import MemoryBackend, Unreachable

    store = MemoryBackend(connections={"db": "postgres://u:st-s3cr3t@h/d"})
    sp = SearchPath([("mem", store)], cache=CacheSettings(ttl=0.0, jitter=0.0, stale_if_error=600))
    metrics.enable()
    metrics.instrument(sp)
    sp.get_connection("db")
    store.fail_with = Unreachable("backend 'mem' (Memory): down")
    sp.get_connection("db")  # expired, refresh fails: its last good value (stale)
    snap = metrics.snapshot()
    assert snap["lookups"][("connection", "store", "found")] == 1
    assert snap["lookups"][("connection", "stale", "found")] == 1
    assert snap["store"][("mem", "connection", "get", "error")] == 1
    for _ in range(4):  # the refresh backs off: the last good value, no store call
        sp.get_connection("db")
    assert metrics.snapshot()["store"][("mem", "connection", "get", "error")] == 1
    for _ in range(4):  # no value to fall back on: opens the breaker (3 failures), then rejects
        with pytest.raises(BackendUnavailable):
            sp.get_connection("other")
    assert metrics.snapshot()["rejected"][("mem",)] >= 1


def test_airflow_stats_receive_the_same_counts() -> None:
    from tests.memory_backend import MemoryBackend

    class Recorder:  # the interface of Airflow's Stats (incr/timing with tags), recording calls
        def __init__(self) -> None:
            self.calls: list[tuple[str, str, dict[str, str]]] = []

        def incr(
            self, stat: str, count: int = 1, rate: int = 1, *, tags: dict[str, str] | None = None
        ) -> None:
            self.calls.append(("incr", stat, dict(tags or {})))

        def timing(self, stat: str, dt: Any, *, tags: dict[str, str] | None = None) -> None:
            self.calls.append(("timing", stat, dict(tags or {})))

    stats = Recorder()
    sp = SearchPath([("mem", MemoryBackend(variables={"a": "1"}))])
    metrics.enable(stats=stats)
    metrics.instrument(sp)
    sp.get_variable("a")
    sp.get_variable("a")
    tags = {"backend": "mem", "kind": "variable", "operation": "get", "outcome": "hit"}
    assert ("incr", "credpath.store_requests", tags) in stats.calls
    lookups = [c for c in stats.calls if c[1] == "credpath.lookups"]
    assert [c[2]["tier"] for c in lookups] == ["store", "process"]
    assert sum(1 for c in stats.calls if c[0] == "timing") == 2


def test_metrics_off_counts_nothing() -> None:
    from tests.memory_backend import MemoryBackend

    sp = SearchPath([("mem", MemoryBackend(variables={"a": "1"}))])
    metrics.instrument(sp)
    sp.get_variable("a")
    assert metrics.snapshot() == {"store": {}, "lookups": {}, "auth": {}, "rejected": {}, "retries": {}}


def test_a_lookup_served_by_the_shared_tier_is_counted_under_tier_shared(tmp_path) -> None:
    from cryptography.fernet import Fernet

    from credpath._cache import CacheSettings
    from credpath._settings import SharedTierSettings, open_shared_tier
    from tests.memory_backend import MemoryBackend

    tier = SharedTierSettings(url=f"file:{tmp_path / 'shared.db'}", keys=(Fernet.generate_key(),))
    uri = "postgres://u:sh-s3cr3t@h/d"
    one = [("mem", MemoryBackend(connections={"db": uri}))]
    two = [("mem", MemoryBackend(connections={"db": uri}))]
    first = SearchPath(one, cache=CacheSettings(), shared=open_shared_tier(tier, one))
    other_process = SearchPath(two, cache=CacheSettings(), shared=open_shared_tier(tier, two))
    metrics.enable()
    metrics.instrument(first)
    metrics.instrument(other_process)
    first.get_connection("db")  # a store read, published to the shared tier
    assert other_process.get_connection("db").host == "h"  # served by the shared tier, no store read
    lookups = metrics.snapshot()["lookups"]
    assert lookups[("connection", "store", "found")] == 1
    assert lookups[("connection", "shared", "found")] == 1
    first.close()
    other_process.close()


def test_retries_inside_a_store_call_are_counted_for_the_backend_being_called() -> None:
    from credpath._deadlines import Deadline, Retryable, RetryPolicy, call_with_retries, retry_call
    from tests.memory_backend import MemoryBackend

    class Flaky(MemoryBackend):
        """Each read retries 3 times inside one call: twice in retry_call, once in call_with_retries."""

        def get_variable(self, key: str) -> str | None:
            tries: list[int] = []

            def attempt(_deadline: Deadline) -> str | None:
                tries.append(1)
                if len(tries) < 3:
                    raise Retryable(ConnectionError("reset"))
                return super(Flaky, self).get_variable(key)

            def classify(exc: BaseException) -> tuple[bool, float | None]:
                return isinstance(exc, ConnectionError), None

            failed_once: list[int] = []

            def flaky_once(_deadline: Deadline) -> None:
                if not failed_once:
                    failed_once.append(1)
                    raise ConnectionError("reset")

            policy = RetryPolicy(attempts=4, base=0.0)
            value = retry_call(attempt, Deadline(5), policy, on_timeout=TimeoutError, sleep=lambda _: None)
            call_with_retries(
                flaky_once,
                Deadline(5),
                policy,
                classify=classify,
                on_timeout=TimeoutError,
                sleep=lambda _: None,
            )
            return value

    sp = SearchPath([("flaky", Flaky(variables={"a": "1"})), ("mem", MemoryBackend(variables={"b": "2"}))])
    metrics.enable()
    assert sp.get_variable("a") == "1"  # 3 retries
    assert sp.get_variable("b") == "2"  # flaky misses after 3 more retries; mem answers at once
    Flaky(variables={"a": "1"}).get_variable("a")  # not a call the search path makes: no backend to count
    assert metrics.snapshot()["retries"] == {("flaky",): 6}
    assert metrics.store_counts("flaky")["retries"] == 6 and "retries" not in metrics.store_counts("mem")
    assert trace._CALLING.get() is None  # every call put the mark back


def test_retries_are_not_counted_while_metrics_are_off() -> None:
    from tests.memory_backend import MemoryBackend

    sp = SearchPath([("mem", MemoryBackend(variables={"a": "1"}))])
    trace.note_retry()  # no call in progress
    sp.get_variable("a")
    assert metrics.snapshot()["retries"] == {}


def test_lease_events_are_prometheus_families() -> None:
    from credpath import metrics

    metrics.enable()
    try:
        metrics.auth_event("lease_mint", "pg")
        metrics.auth_event("lease_revocation", "pg")
        text = metrics.prometheus_text()[0].decode()
    finally:
        metrics.disable()
        metrics.reset()
    assert 'credpath_lease_mints_total{backend="pg"} 1.0' in text
    assert 'credpath_lease_revocations_total{backend="pg"} 1.0' in text
