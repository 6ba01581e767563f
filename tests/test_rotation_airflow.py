"""In real Airflow 3.3.2: a task whose credential was rotated out of band fails on its first try (served the
old value from the shared tier), and its retry reads the store (the plugin's listener dropped what the failed
try read): it succeeds with one extra store read, counted at the proxy in front of OpenBao."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from credpath._search_path import SearchPath
from tests._shared_tier_fixtures import KEY, digest
from tests.conftest import assert_no_secret
from tests.servers.airflow_env import AirflowEnv, ApiServer, run_dags_test
from tests.servers.openbao import OpenBao

READS = r"/v1/[^/]+/data/"
DAG_ID = "credpath_rotation_retry"
DAG = """
from __future__ import annotations

import hashlib
import os
from datetime import timedelta

import pendulum

from airflow.sdk import BaseHook, dag, task


@dag(dag_id="credpath_rotation_retry", start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), schedule=None,
     catchup=False)
def credpath_rotation_retry():
    @task(retries=1, retry_delay=timedelta(seconds=0))
    def use_db(ti=None):
        password = BaseHook.get_connection("rot_airflow_db").password
        seen = hashlib.sha256(password.encode()).hexdigest()[:16]
        print(f"try {ti.try_number} password digest {seen}")
        if seen != os.environ["CREDPATH_TEST_CURRENT_DIGEST"]:
            raise RuntimeError("authentication failed: the credential was rotated")

    use_db()


credpath_rotation_retry()
"""


@pytest.mark.airflow
def test_a_task_failing_after_a_rotation_succeeds_on_its_retry_with_one_extra_store_read(
    airflow: AirflowEnv, airflow_api_server: ApiServer, openbao: OpenBao, fault_proxy: Any, tmp_path: Path
) -> None:
    mount = openbao.enable_kv(2)
    uri = "postgres://u:{}@rot-db.internal:5432/d"
    openbao.put(mount, 2, "connections/rot_airflow_db", {"conn_uri": uri.format("pw-s3cr3t-old")})
    parts = urlsplit(openbao.addr)
    proxy = fault_proxy(parts.hostname, parts.port)
    config = tmp_path / "credpath.toml"
    config.write_text(
        f'[[backends]]\nname = "vault"\ntype = "vault"\n[backends.kwargs]\nurl = "{proxy.url}"\n'
        f'token = "{openbao.root_token}"\nmount_point = "{mount}"\n'
        f'[cache]\nshared = "file:{tmp_path / "shared.db"}"\nshared_key = "{KEY}"\n'
    )
    earlier = SearchPath.from_config(config)  # an earlier task: the shared tier holds the old password
    assert earlier.get_connection("rot_airflow_db").password == "pw-s3cr3t-old"
    earlier.close()
    openbao.put(mount, 2, "connections/rot_airflow_db", {"conn_uri": uri.format("pw-s3cr3t-new")})
    before = proxy.count(READS, "GET")
    (airflow.dags / f"{DAG_ID}.py").write_text(DAG)
    env = {
        "AIRFLOW__WORKERS__SECRETS_BACKEND": "credpath.airflow.CredpathBackend",
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps({"config": str(config)}),
        "CREDPATH_HOME": str(tmp_path / "home"),
        "CREDPATH_TEST_CURRENT_DIGEST": digest("pw-s3cr3t-new"),
    }

    def logs() -> str:
        files = sorted((airflow.home / "logs").glob(f"dag_id={DAG_ID}/**/attempt=*.log"))
        return "\n".join(f.read_text() for f in files)

    code = run_dags_test(airflow, DAG_ID, env, lambda: "try 2 password digest" in logs(), timeout=300)
    text = logs()
    assert_no_secret(text)
    assert f"try 1 password digest {digest('pw-s3cr3t-old')}" in text, text[-3000:]
    assert f"try 2 password digest {digest('pw-s3cr3t-new')}" in text, text[-3000:]
    assert code in (0, None), f"airflow dags test failed (rc={code})"
    assert proxy.count(READS, "GET") - before == 1  # the retry's read; the first try was served the cache
    openbao.disable(mount)
