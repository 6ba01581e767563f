"""Airflow 3.3.2's own async connection read (the triggerer's ``_async_get_connection``) on CredpathBackend.

Airflow awaits ``aget_connection(conn_id)`` where a backend has it; here 200 concurrent reads of one cold
connection, served by the cncf.kubernetes provider's class path (mapped by credpath) through a fault proxy
that delays every answer: one request reaches the server, Airflow never falls back to the sync method, and
the loop keeps ticking. Then ``aget_variable`` as the Execution API's async resolver calls it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.airflow._side import run_side
from tests.servers.airflow_env import clean_environment
from tests.servers.kubernetes_fake import KubernetesLabelsHarness

pytestmark = pytest.mark.airflow

SIDE_SCRIPT = Path(__file__).with_name("_async_side.py")
PROVIDER = "airflow.providers.cncf.kubernetes.secrets.kubernetes_secrets_backend.KubernetesSecretsBackend"
PW = "pw-s3cr3t-trigger"


def test_the_triggerer_path_awaits_credpath_without_blocking_and_shares_one_request(
    airflow_venv: Path, kubernetes_labels_harness: KubernetesLabelsHarness, fault_proxy: Any, tmp_path: Path
) -> None:
    h = kubernetes_labels_harness
    h.seed_labelled("connection", "trig_db", {"value": f"postgres://app:{PW}@db.example.com:5432/x"})
    h.seed_labelled("variable", "trig_var", {"value": "var-value"})
    proxy = fault_proxy("127.0.0.1", h.fake.port)
    proxy.add("delay", seconds=0.5)
    where = {"namespace": h.namespace, "host": proxy.url, "token": h.fake.token}
    # The name-based backend second: a miss there is a 404, which the provider's kubernetes client (< 37)
    # raises rather than returns.
    backends = [{"type": PROVIDER, "kwargs": where}, {"type": "kubernetes-secrets", "kwargs": where}]
    home = tmp_path / "home"
    home.mkdir()
    env = clean_environment(home, airflow_venv)
    env["AIRFLOW__SECRETS__BACKEND"] = "credpath.airflow.CredpathBackend"
    env["AIRFLOW__SECRETS__BACKEND_KWARGS"] = json.dumps({"backends": backends})
    spec = {"conn_id": "trig_db", "var_key": "trig_var", "password": PW, "value": "var-value", "n": 200}
    facts = run_side(airflow_venv, SIDE_SCRIPT, spec, env, home, hide=PW)
    assert facts["password_ok"] and facts["hosts"] == ["db.example.com"]
    assert facts["calls"] == {"aget_connection": 200, "get_connection": 0}
    assert facts["variable_ok"] and facts["missing"] is None
    assert proxy.count("airflow-variables-no-such-key") == 1  # the 404 of the name-based backend
    assert proxy.count("connection-id") == 1  # 200 awaits, one request at the server
    assert facts["max_lag"] < 0.2, facts["max_lag"]
    assert facts["ticks"] > 20
