"""Kubernetes Secrets found by label (the cncf.kubernetes provider's backend), against the loopback fake.

The contract suite runs it too (alias ``kubernetes-labels``); tests/airflow/test_kubernetes_differential.py
runs the provider's own class and credpath on the same Secrets. Here: the fake's selector and
resourceVersion handling, the provider's read semantics (labels, data keys, several matches, a missing
data key, team scoping, namespace detection), the class-path mapping, errors and listing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import requests

from credpath.backends.kubernetes_labels import KubernetesLabelSecretsBackend
from credpath.errors import AccessDenied, BackendError, ConfigError
from credpath.registry import create_backend, resolve_type
from tests.servers.kubernetes_fake import KubernetesLabelsHarness, KubernetesSecretsFake

PW = "pw-s3cr3t-label"
URI = f"postgres://app:{PW}@db.example.com:5432/analytics"
CONN = "airflow.apache.org/connection-id"
VAR = "airflow.apache.org/variable-key"
TEAM = "airflow.apache.org/team"
PROVIDER = "airflow.providers.cncf.kubernetes.secrets.kubernetes_secrets_backend.KubernetesSecretsBackend"


@pytest.fixture
def harness(kubernetes_labels_harness: KubernetesLabelsHarness) -> KubernetesLabelsHarness:
    return kubernetes_labels_harness


def _lists(fake: KubernetesSecretsFake) -> list[dict[str, str]]:
    return list(fake.list_queries)


# --- the fake -----------------------------------------------------------------------------------------------


def test_fake_refuses_a_selector_value_that_is_no_label_value(kubernetes_fake: KubernetesSecretsFake) -> None:
    kubernetes_fake.reset()
    base = f"{kubernetes_fake.endpoint}/api/v1/namespaces/ns/secrets"
    headers = {"Authorization": f"Bearer {kubernetes_fake.token}"}
    for bad in ("a/b", "x" * 64, "_x", "a b"):
        answer = requests.get(base, params={"labelSelector": f"k={bad}"}, headers=headers, timeout=5)
        assert answer.status_code == 400 and answer.json()["reason"] == "BadRequest", bad
    ok = requests.get(
        base, params={"labelSelector": "k=a.b_c-1", "resourceVersion": "0"}, headers=headers, timeout=5
    )
    assert ok.status_code == 200 and ok.json()["kind"] == "SecretList"
    assert kubernetes_fake.list_queries[-1] == {"labelSelector": "k=a.b_c-1", "resourceVersion": "0"}
    bad_version = requests.get(base, params={"resourceVersion": "latest"}, headers=headers, timeout=5)
    assert bad_version.status_code == 400


# --- reads --------------------------------------------------------------------------------------------------


def test_connection_found_by_label_in_one_cached_list(harness: KubernetesLabelsHarness) -> None:
    harness.seed_labelled("connection", "my_db", {"value": URI}, name="anything-at-all")
    backend = harness.make_backend()
    before = harness.fake.count()
    assert backend.get_conn_value("my_db") == URI
    assert harness.fake.count() - before == 1
    assert _lists(harness.fake)[-1] == {"labelSelector": f"{CONN}=my_db,!{TEAM}", "resourceVersion": "0"}
    conn = backend.get_connection("my_db")
    assert conn is not None and conn.password == PW and conn.host == "db.example.com"
    assert backend.get_conn_value("other") is None


def test_variable_and_config_and_custom_labels_and_data_keys(harness: KubernetesLabelsHarness) -> None:
    harness.seed_labelled("variable", "flag", {"value": "on"})
    harness.seed_labelled("config", "fernet_key", {"value": "cfg-s3cr3t"})
    harness.seed_secret("custom", {"payload": "custom-value"}, labels={"example.com/var": "flag"})
    backend = harness.make_backend()
    assert backend.get_variable("flag") == "on"
    assert backend.get_config("fernet_key") == "cfg-s3cr3t"
    custom = harness.make_backend(variables_label="example.com/var", variables_data_key="payload")
    assert custom.get_variable("flag") == "custom-value"


def test_a_label_set_to_none_switches_the_kind_off_without_a_call(harness: KubernetesLabelsHarness) -> None:
    harness.seed_labelled("connection", "my_db", {"value": URI})
    backend = harness.make_backend(connections_label=None, variables_label=None, config_label=None)
    before = harness.fake.count()
    assert backend.get_conn_value("my_db") is None
    assert backend.get_variable("my_db") is None and backend.get_config("my_db") is None
    assert backend.list_connections() == []
    assert harness.fake.count() == before


def test_several_matches_take_the_first_by_name_with_a_warning(
    harness: KubernetesLabelsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.seed_labelled("variable", "dup", {"value": "from-b"}, name="b-secret")
    harness.seed_labelled("variable", "dup", {"value": "from-a"}, name="a-secret")
    with caplog.at_level(logging.WARNING):
        assert harness.make_backend().get_variable("dup") == "from-a"
    assert "2 secrets with labels" in caplog.text and "'a-secret'" in caplog.text


def test_a_first_match_without_the_data_key_is_a_miss_with_a_warning(
    harness: KubernetesLabelsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.seed_labelled("variable", "nokey", {"other": "x"}, name="a-first")
    harness.seed_labelled("variable", "nokey", {"value": "later"}, name="b-second")
    harness.seed_labelled("variable", "nodata", None)
    backend = harness.make_backend()
    with caplog.at_level(logging.WARNING):
        assert backend.get_variable("nokey") is None  # as the provider: the first Secret decides
        assert backend.get_variable("nodata") is None
    assert "has no data key 'value'" in caplog.text


def test_a_value_that_is_not_utf8_is_an_error_naming_the_secret(harness: KubernetesLabelsHarness) -> None:
    from kubernetes import client

    body = client.V1Secret(
        metadata=client.V1ObjectMeta(name="binary", labels={VAR: "bin"}), data={"value": "/w=="}
    )
    harness.client.create_namespaced_secret(harness.namespace, body)
    with pytest.raises(BackendError) as info:
        harness.make_backend().get_variable("bin")
    assert "'binary'" in str(info.value) and "'value'" in str(info.value)


def test_ids_that_cannot_be_label_values_are_misses_without_a_call(harness: KubernetesLabelsHarness) -> None:
    backend = harness.make_backend()
    before = harness.fake.count()
    for key in ("a/b", "x" * 64, "-x", "has space", ""):
        assert backend.get_conn_value(key) is None
    assert harness.fake.count() == before


# --- teams --------------------------------------------------------------------------------------------------


def test_team_reads_prefer_the_team_secret_then_the_global_one(harness: KubernetesLabelsHarness) -> None:
    harness.seed_labelled("variable", "v", {"value": "global"}, name="g")
    harness.seed_labelled("variable", "v", {"value": "team-a"}, extra_labels={TEAM: "team_a"}, name="t")
    harness.seed_labelled("variable", "only_team", {"value": "a-only"}, extra_labels={TEAM: "team_a"})
    harness.seed_labelled("variable", "broken", {"value": "global-broken"}, name="gb")
    harness.seed_labelled("variable", "broken", {"nokey": "x"}, extra_labels={TEAM: "team_a"}, name="tb")
    backend = harness.make_backend()
    assert backend.get_variable("v", team_name="team_a") == "team-a"
    assert _lists(harness.fake)[-1]["labelSelector"] == f"{VAR}=v,{TEAM}=team_a"
    assert backend.get_variable("v", team_name="team_b") == "global"
    assert backend.get_variable("v") == "global"  # a global read never sees a team's Secret
    assert backend.get_variable("only_team") is None
    assert backend.get_variable("only_team", team_name="team_a") == "a-only"
    # A team Secret without the data key gives nothing: the global one answers (as the provider).
    assert backend.get_variable("broken", team_name="team_a") == "global-broken"


def test_a_team_scoped_id_asked_without_a_team_is_a_miss_without_a_call(
    harness: KubernetesLabelsHarness,
) -> None:
    backend = harness.make_backend()
    before = harness.fake.count()
    assert backend.get_conn_value("_team_a___db") is None
    assert backend.get_variable("_team_a___v") is None
    assert harness.fake.count() == before


def test_team_label_none_reads_every_secret_with_the_id(harness: KubernetesLabelsHarness) -> None:
    harness.seed_labelled("variable", "v", {"value": "team-a"}, extra_labels={TEAM: "team_a"})
    backend = harness.make_backend(team_label=None)
    assert backend.get_variable("v") == "team-a"
    assert backend.get_variable("v", team_name="team_a") == "team-a"
    assert _lists(harness.fake)[-1]["labelSelector"] == f"{VAR}=v"


def test_config_reads_are_global(harness: KubernetesLabelsHarness) -> None:
    harness.seed_labelled("config", "k", {"value": "team-cfg"}, extra_labels={TEAM: "team_a"})
    assert harness.make_backend().get_config("k", team_name="team_a") is None


# --- namespace, configuration, mapping ----------------------------------------------------------------------


def test_namespace_from_the_service_account_file(
    harness: KubernetesLabelsHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.seed_labelled("variable", "v", {"value": "found"})
    path = tmp_path / "namespace"
    path.write_text(harness.namespace + "\n")
    monkeypatch.setattr(KubernetesLabelSecretsBackend, "SERVICE_ACCOUNT_NAMESPACE_PATH", str(path))
    backend = KubernetesLabelSecretsBackend(host=harness.fake.endpoint, token=harness.fake.token)
    assert backend.get_variable("v") == "found"
    assert backend.namespace == harness.namespace


def test_no_namespace_anywhere_is_a_config_error_naming_the_setting(
    harness: KubernetesLabelsHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        KubernetesLabelSecretsBackend, "SERVICE_ACCOUNT_NAMESPACE_PATH", str(tmp_path / "none")
    )
    backend = KubernetesLabelSecretsBackend(host=harness.fake.endpoint, token=harness.fake.token)
    with pytest.raises(ConfigError) as info:
        backend.get_variable("v")
    assert "'namespace'" in str(info.value) and "\n" not in str(info.value)


def test_the_provider_class_path_maps_here_with_its_kwargs(harness: KubernetesLabelsHarness) -> None:
    assert resolve_type(PROVIDER) == (
        "kubernetes-labels",
        f"{KubernetesLabelSecretsBackend.__module__}.KubernetesLabelSecretsBackend",
    )
    harness.seed_labelled("connection", "c", {"uri": URI}, extra_labels={"team": "x"})
    kwargs = {
        "namespace": harness.namespace,
        "connections_label": CONN,
        "variables_label": None,
        "config_label": None,
        "team_label": None,
        "connections_data_key": "uri",
        "variables_data_key": "value",
        "config_data_key": "value",
        "host": harness.fake.endpoint,
        "token": harness.fake.token,
    }
    backend = create_backend(PROVIDER, kwargs, name="k8s")
    assert isinstance(backend, KubernetesLabelSecretsBackend)
    assert backend.get_conn_value("c") == URI
    with pytest.raises(ConfigError) as info:
        create_backend(PROVIDER, {"connection_label": CONN})
    assert "connection_label" in str(info.value)
    with pytest.raises(ConfigError):
        create_backend(PROVIDER, {"connections_label": "not a label!"})


def test_watch_is_off_by_default_and_must_be_a_boolean(harness: KubernetesLabelsHarness) -> None:
    # credpath's own kwarg (the provider's backend has none): off, no stream is opened
    assert harness.make_backend().subscribe_changes(lambda *_: None) is False
    assert harness.fake.watch_requests == 0
    with pytest.raises(ConfigError) as info:
        create_backend(PROVIDER, {"namespace": harness.namespace, "watch": "yes"}, name="k8s")
    assert "watch must be true or false" in str(info.value) and "\n" not in str(info.value)


# --- errors, listing ----------------------------------------------------------------------------------------


def test_forbidden_is_access_denied_and_5xx_is_retried(harness: KubernetesLabelsHarness) -> None:
    harness.seed_labelled("variable", "v", {"value": "x"})
    backend = harness.make_backend()
    harness.fake.fail_next(503, 2)
    assert backend.get_variable("v") == "x"
    harness.fake.deny(harness.namespace, verb="list")
    with pytest.raises(AccessDenied) as info:
        backend.get_variable("v")
    assert "403" in str(info.value)
    # One voice: this backend's label, not the name-based transport's.
    assert str(info.value).startswith("backend 'kubernetes-labels' (Kubernetes Secrets by label): ")


def test_listing_gives_the_global_ids_sorted_across_pages(harness: KubernetesLabelsHarness) -> None:
    for key in ("c3", "c1", "c2"):
        harness.seed_labelled("connection", key, {"value": URI})
    harness.seed_labelled("connection", "team_only", {"value": URI}, extra_labels={TEAM: "t"})
    harness.seed_labelled("variable", "v1", {"value": "x"})
    harness.fake.max_page = 2
    backend = harness.make_backend(connections_lookup_pattern="^c")
    assert backend.list_connections() == ["c1", "c2", "c3"]
    assert backend.list_variables() == ["v1"]
    assert backend.check().startswith(f"namespace {harness.namespace!r}")


def test_messages_and_repr_carry_no_value(
    harness: KubernetesLabelsHarness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.seed_labelled("connection", "dup", {"value": URI})
    harness.seed_labelled("connection", "dup", {"value": URI})
    with caplog.at_level(logging.DEBUG):
        backend = harness.make_backend()
        backend.get_conn_value("dup")
    assert PW not in caplog.text
    assert PW not in repr(backend) + backend.describe()
