"""One naming rule for the prefix stores (``backends/_naming.py``), one method name for "the store name of a
key". The Airflow-side proof of the names is tests/airflow/test_differential.py ("names" cases); these pin
each store's rule as data, without a server."""

from __future__ import annotations

from typing import Any

import pytest

from credpath.backends._naming import KeyNaming, PrefixNamedBackend
from credpath.errors import ConfigError
from credpath.protocol import PREFIX_SETTINGS


def _backends() -> dict[str, Any]:
    pytest.importorskip("botocore")
    from credpath.backends.aws_secrets_manager import SecretsManagerBackend
    from credpath.backends.aws_ssm import ParameterStoreBackend
    from credpath.backends.azure_key_vault import KeyVaultBackend
    from credpath.backends.gcp_secret_manager import SecretManagerBackend
    from credpath.backends.kubernetes_secrets import KubernetesSecretsBackend

    return {
        "sm": SecretsManagerBackend,
        "ssm": ParameterStoreBackend,
        "gcp": SecretManagerBackend,
        "akv": KeyVaultBackend,
        "k8s": KubernetesSecretsBackend,
    }


EXTRA = {"sm": {"region_name": "us-east-1"}, "ssm": {"region_name": "us-east-1"}}
EXTRA["akv"] = {"vault_url": "https://example.vault.azure.net"}
EXTRA["gcp"] = {"project_id": "p"}
EXTRA["k8s"] = {"namespace": "ns"}

# (store, kwargs, key, team) -> (name, team-scoped name), as each store's Airflow provider builds them.
CASES = [
    ("sm", {}, "my_db", "t", "airflow/connections/my_db", "airflow/connections/t--my_db"),
    ("sm", {"connections_prefix": "p//"}, "x", "t", "p/x", "p/t--x"),
    ("sm", {"connections_prefix": ""}, "x", "t", "x", None),  # no team lookup under an empty prefix
    ("ssm", {}, "x", "t", "/airflow/connections/x", "/airflow/connections/t--x"),
    ("ssm", {"connections_prefix": "conns/"}, "x", "t", "/conns/x", "/conns/t--x"),
    ("ssm", {"connections_prefix": ""}, "x", "t", "/x", "/t--x"),
    ("gcp", {}, "my_db", "t", "airflow-connections-my_db", "airflow-connections-t--my_db"),
    ("gcp", {"connections_prefix": ""}, "x", "t", "-x", "-t--x"),  # the provider glues "" too
    ("gcp", {"connections_prefix": "pre-"}, "x", None, "pre--x", None),  # and keeps a trailing sep
    ("akv", {}, "my_db", "team_a", "airflow-connections-my-db", "airflow-connections-team-a--my-db"),
    ("akv", {"connections_prefix": "pre-"}, "x", None, "pre-x", None),
    ("akv", {"connections_prefix": ""}, "a_b", "t", "a-b", "t--a-b"),
    ("k8s", {}, "My_DB", "t", "airflow-connections-my-db", None),  # no team scoping in Kubernetes
    ("k8s", {"connections_prefix": ""}, "x", None, "x", None),
]


@pytest.mark.parametrize(("store", "kwargs", "key", "team", "name", "scoped"), CASES)
def test_each_store_names_keys_as_its_provider(
    store: str, kwargs: dict[str, Any], key: str, team: str | None, name: str, scoped: str | None
) -> None:
    backend = _backends()[store](**{**EXTRA[store], **kwargs})
    assert backend.secret_name("connection", key) == name
    if team:
        assert backend.team_secret_name("connection", key, team) == scoped


@pytest.mark.parametrize("store", ["sm", "ssm", "gcp", "akv", "k8s"])
def test_a_null_prefix_switches_the_kind_off_in_every_store(store: str) -> None:
    backend = _backends()[store](**EXTRA[store], variables_prefix=None)
    assert backend.secret_name("variable", "x") is None
    assert backend.get_variable("x") is None  # no call: nothing to reach
    with pytest.raises(ConfigError, match="variables_prefix is null"):
        backend.delete_variable("x")


@pytest.mark.parametrize("store", ["sm", "ssm", "gcp", "akv", "k8s"])
def test_one_method_name_for_the_store_name_of_a_key(store: str) -> None:
    cls = _backends()[store]
    assert issubclass(cls, PrefixNamedBackend)
    old = ("name_of", "team_name_of", "parameter_name", "secret_id", "_readable_name", "_writable_name")
    assert [n for n in old if hasattr(cls, n)] == []


@pytest.mark.parametrize("store", ["sm", "ssm", "gcp", "akv", "k8s"])
def test_a_prefix_that_is_not_a_string_names_the_setting(store: str) -> None:
    with pytest.raises(ConfigError, match=r"config_prefix must be a string or null, got int"):
        _backends()[store](**EXTRA[store], config_prefix=5)


def test_key_naming_is_a_frozen_value() -> None:
    naming = KeyNaming.from_settings("a/", "", None, sep="/", strip_sep=True, fail=ConfigError)
    assert dict(naming.prefixes) == {"connection": "a", "variable": "", "config": None}
    assert naming.head("connection") == "a/" and naming.head("config") is None
    with pytest.raises(AttributeError):
        naming.sep = "-"  # type: ignore[misc]
    with pytest.raises(TypeError):
        naming.prefixes["connection"] = "b"  # type: ignore[index]
    assert set(PREFIX_SETTINGS) == {"connection", "variable", "config"}
