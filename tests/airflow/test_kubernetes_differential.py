"""Differential: the cncf.kubernetes provider's KubernetesSecretsBackend (10.25.0, in the Airflow 3.3.2
venv) and credpath's mapping of its class path read the same Secrets from the same Kubernetes fake.

Both sides get the provider's kwargs; credpath goes through ``registry.create_backend`` with the provider's
class path (plus ``host``/``token`` to reach the fake), the provider through its own code with its cached
client pointed at the fake. Each case's outcome is the value, ``None``, or "error"; they must be equal
except where ``INTENDED`` names the difference (the README's Kubernetes section lists the same).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from credpath.backends.kubernetes_labels import LABEL_VALUE_RE, KubernetesLabelSecretsBackend
from credpath.errors import CredpathError
from credpath.registry import create_backend
from tests.airflow._side import run_side
from tests.servers.airflow_env import clean_environment
from tests.servers.kubernetes_fake import KubernetesLabelsHarness

pytestmark = pytest.mark.airflow

SIDE_SCRIPT = Path(__file__).with_name("_kubernetes_side.py")
PROVIDER = "airflow.providers.cncf.kubernetes.secrets.kubernetes_secrets_backend.KubernetesSecretsBackend"
TEAM = "airflow.apache.org/team"
URI = "postgres://app:plain-pw@db.example.com:5432/analytics"

#: Where credpath answers differently on purpose: name -> (predicate on (case, airflow, credpath), why).
INTENDED: dict[str, tuple[Any, str]] = {
    "not_a_label_value": (
        lambda case, airflow, ours: (
            not LABEL_VALUE_RE.match(case["key"]) and airflow == "error" and ours is None
        ),
        "an id that cannot be a label value: the provider sends it and the API server answers 400 (which "
        "Airflow's chain logs and skips); credpath answers the miss without a call",
    ),
}


def _seed(h: KubernetesLabelsHarness, tmp_path: Path) -> None:
    h.seed_labelled("connection", "my_db", {"value": URI}, name="whatever-eso-named-it")
    h.seed_labelled("connection", "json_conn", {"value": json.dumps({"conn_type": "http", "host": "h"})})
    h.seed_labelled("variable", "plain", {"value": "hello"})
    h.seed_labelled("variable", "empty", {"value": ""})
    h.seed_labelled("config", "fernet_key", {"value": "cfg-value"})
    h.seed_labelled("variable", "dup", {"value": "from-b"}, name="b-dup")
    h.seed_labelled("variable", "dup", {"value": "from-a"}, name="a-dup")
    h.seed_labelled("variable", "nokey", {"other": "x"}, name="a-nokey")
    h.seed_labelled("variable", "nokey", {"value": "second"}, name="b-nokey")
    h.seed_labelled("variable", "nodata", None)
    h.seed_secret("custom-one", {"payload": "custom"}, labels={"example.com/var": "cv"})
    h.seed_labelled("variable", "tv", {"value": "global"}, name="tv-global")
    h.seed_labelled("variable", "tv", {"value": "team-a"}, extra_labels={TEAM: "team_a"}, name="tv-team")
    h.seed_labelled("variable", "only_team", {"value": "a-only"}, extra_labels={TEAM: "team_a"})
    h.seed_labelled("variable", "tb", {"value": "global-b"}, name="tb-global")
    h.seed_labelled("variable", "tb", {"nokey": "x"}, extra_labels={TEAM: "team_a"}, name="tb-team")
    h.seed_labelled("connection", "tc", {"value": URI}, extra_labels={TEAM: "team_a"})
    h.seed_labelled("config", "tcfg", {"value": "team-cfg"}, extra_labels={TEAM: "team_a"})
    from kubernetes import client

    binary = client.V1Secret(
        metadata=client.V1ObjectMeta(name="binary", labels={"airflow.apache.org/variable-key": "bin"}),
        data={"value": "/w=="},
    )
    h.client.create_namespaced_secret(h.namespace, binary)


def _cases(ns: str, sa_file: str, no_sa_file: str) -> list[dict[str, Any]]:
    base = {"namespace": ns}
    cases: list[dict[str, Any]] = []

    def add(kind: str, key: str, team: str | None = None, sa_path: str | None = None, **kwargs: Any) -> None:
        cases.append(
            {"kind": kind, "key": key, "team": team, "kwargs": {**base, **kwargs}, "sa_path": sa_path}
        )

    for key in ("my_db", "json_conn", "missing", "tc", "a/b", "_team_a___my_db", "_teama___my_db"):
        add("connection", key)
    for key in (
        "plain",
        "empty",
        "dup",
        "nokey",
        "nodata",
        "missing",
        "tv",
        "only_team",
        "tb",
        "bin",
        "x" * 64,
    ):
        add("variable", key)
    for key in ("fernet_key", "tcfg", "missing"):
        add("config", key)
    for team in ("team_a", "team_b"):
        for key in ("tv", "only_team", "tb", "plain"):
            add("variable", key, team)
        add("connection", "tc", team)
        add("connection", "_teama___my_db", team)
    add("variable", "cv", variables_label="example.com/var", variables_data_key="payload")
    add("variable", "plain", variables_label=None)
    add("connection", "my_db", connections_label=None)
    add("config", "fernet_key", config_label=None)
    add("variable", "tv", team_label=None)
    add("variable", "only_team", team_label=None)
    add("variable", "tv", "team_a", team_label=None)
    add("connection", "my_db", connections_data_key="other")
    # The namespace from the service account file, and no namespace anywhere.
    cases.append({"kind": "variable", "key": "plain", "team": None, "kwargs": {}, "sa_path": sa_file})
    cases.append({"kind": "variable", "key": "plain", "team": None, "kwargs": {}, "sa_path": no_sa_file})
    return cases


def _credpath(case: dict[str, Any], h: KubernetesLabelsHarness, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(
        KubernetesLabelSecretsBackend,
        "SERVICE_ACCOUNT_NAMESPACE_PATH",
        case["sa_path"] or KubernetesLabelSecretsBackend.SERVICE_ACCOUNT_NAMESPACE_PATH,
    )
    kwargs = {**case["kwargs"], "host": h.fake.endpoint, "token": h.fake.token}
    try:
        backend = create_backend(PROVIDER, kwargs, name="k8s")
        team = {"team_name": case["team"]} if case["team"] else {}
        if case["kind"] == "connection":
            return {"value": backend.get_conn_value(case["key"], **team)}
        if case["kind"] == "variable":
            return {"value": backend.get_variable(case["key"], **team)}
        return {"value": backend.get_config(case["key"])}
    except CredpathError:
        return "error"


def _normal(outcome: Any) -> Any:
    if isinstance(outcome, dict) and "error" in outcome:
        return "error"
    return outcome["value"] if isinstance(outcome, dict) else outcome


def test_provider_and_credpath_read_the_same_secrets_alike(
    airflow_venv: Path,
    kubernetes_labels_harness: KubernetesLabelsHarness,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = kubernetes_labels_harness
    _seed(h, tmp_path)
    sa_file = tmp_path / "namespace"
    sa_file.write_text(h.namespace + "\n")
    cases = _cases(h.namespace, str(sa_file), str(tmp_path / "absent"))
    home = tmp_path / "airflow-home"
    home.mkdir()
    spec = {"endpoint": h.fake.endpoint, "token": h.fake.token, "cases": cases}
    outcomes = run_side(airflow_venv, SIDE_SCRIPT, spec, clean_environment(home, airflow_venv), home)
    airflow_side = [_normal(o) for o in outcomes]
    assert len(airflow_side) == len(cases)
    queries_before = len(h.fake.list_queries)
    unexpected, intended = [], 0
    for case, airflow in zip(cases, airflow_side, strict=True):
        ours = _normal(_credpath(case, h, monkeypatch))
        if airflow == ours:
            continue
        if any(applies(case, airflow, ours) for applies, _ in INTENDED.values()):
            intended += 1
            continue
        unexpected.append(
            f"{case['kind']} {case['key'][:20]!r} team={case['team']} kwargs={sorted(case['kwargs'])}: "
            f"airflow={airflow!r} credpath={ours!r}"
        )
    assert not unexpected, "\n".join(unexpected)
    # a/b, 64 characters, '_team_a___my_db' (the provider's team test wants no '_' in the team name),
    # '_teama___my_db' asked with each of two teams (asked without one, both answer None without a call).
    assert intended == 5
    # credpath asks as the provider does: label selectors read from the watch cache.
    assert all(q.get("resourceVersion") == "0" for q in h.fake.list_queries[queries_before:])
    # Sanity: the cases are not all misses.
    assert sum(1 for a in airflow_side if isinstance(a, str) and a != "error") >= 10
