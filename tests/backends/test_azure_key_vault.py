"""Azure Key Vault backend through azure-keyvault-secrets against the HTTPS loopback fake."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from credpath.backends.azure_key_vault import KeyVaultBackend
from credpath.errors import AccessDenied, BackendError, ConfigError
from credpath.model import Connection
from credpath.registry import create_backend
from tests.conftest import assert_no_secret
from tests.servers._fake_http import URI, check_cli_get_and_add, check_search_path, use_config, write_config
from tests.servers.azure_fake import AzureKeyVaultHarness, StaticTokenCredential

AIRFLOW_CLASS = "airflow.providers.microsoft.azure.secrets.key_vault.AzureKeyVaultBackend"


@pytest.fixture
def h(azure_key_vault_harness: AzureKeyVaultHarness) -> AzureKeyVaultHarness:
    return azure_key_vault_harness


def test_one_token_and_one_call_per_read(h: AzureKeyVaultHarness) -> None:
    h.seed("connection", "my_db", URI)
    credential = StaticTokenCredential(h.fake.token)
    backend = h.make_backend(credential=credential)
    before = h.api_calls()
    for _ in range(5):
        assert backend.get_connection("my_db").password == "pw-s3cr3t-1"
    assert h.api_calls() - before == 5
    assert h.fake.requests[-1] == ("GET", "/secrets/airflow-connections-my-db/")
    assert credential.calls == 1  # token fetched once and reused


def test_underscores_become_sep_and_names_are_case_insensitive(h: AzureKeyVaultHarness) -> None:
    h.client.set_secret("AIRFLOW-CONNECTIONS-MY-WAREHOUSE-DB", URI)
    backend = h.make_backend()
    assert backend.get_connection("my_warehouse_db").host == "db.example.com"
    assert backend.get_connection("My-Warehouse_DB").host == "db.example.com"


def test_custom_prefix_sep_and_null_prefix(h: AzureKeyVaultHarness) -> None:
    h.client.set_secret("teamAxxdb", "postgres://u@custom.example/db")
    backend = h.make_backend(connections_prefix="teamAxx", sep="xx", variables_prefix=None)
    assert backend.get_connection("db").host == "custom.example"
    before = h.api_calls()
    assert backend.get_variable("anything") is None
    assert h.api_calls() == before
    h.client.set_secret("bare-id", "v")
    assert h.make_backend(variables_prefix="").get_variable("bare_id") == "v"


def test_disabled_secret_is_a_clear_error(h: AzureKeyVaultHarness) -> None:
    h.seed("connection", "off", URI)
    h.fake.set_enabled("airflow-connections-off", False)
    with pytest.raises(BackendError) as info:
        h.make_backend().get_conn_value("off")
    assert not isinstance(info.value, AccessDenied)
    assert "airflow-connections-off" in str(info.value) and "disabled" in str(info.value)


def test_forbidden_and_bad_token_are_access_denied(h: AzureKeyVaultHarness) -> None:
    h.seed("variable", "v", "x")
    h.fake.deny_all = True
    with pytest.raises(AccessDenied, match="airflow-variables-v"):
        h.make_backend().get_variable("v")
    h.fake.deny_all = False
    with pytest.raises(AccessDenied, match="authentication failed"):
        h.make_backend(credential=StaticTokenCredential("wrong-token")).get_variable("v")


def test_server_error_is_backend_error_and_retries_are_configurable(h: AzureKeyVaultHarness) -> None:
    h.seed("variable", "v", "ok")
    h.fake.fail_next(503)
    with pytest.raises(BackendError, match="HTTP 503"):
        h.make_backend().get_variable("v")  # harness sets retry_total=0
    h.fake.fail_next(503)
    kwargs = h.backend_kwargs()
    kwargs["client_kwargs"].update(retry_total=1, retry_backoff_factor=0.01)
    assert KeyVaultBackend(**kwargs).get_variable("v") == "ok"


def test_impossible_name_is_a_miss_without_a_call(h: AzureKeyVaultHarness) -> None:
    backend = h.make_backend()
    before = h.api_calls()
    assert backend.get_conn_value("has.dots") is None
    assert h.api_calls() == before
    with pytest.raises(ConfigError, match="rejects"):
        backend.set_variable("has.dots", "x")


def test_vault_url_and_sep_validation() -> None:
    with pytest.raises(ConfigError, match="vault_url"):
        KeyVaultBackend(vault_url="http://127.0.0.1:1")
    with pytest.raises(ConfigError, match="sep"):
        KeyVaultBackend(vault_url="https://x.vault.azure.net", sep="_")
    with pytest.raises(ConfigError, match="on_deleted"):
        KeyVaultBackend(vault_url="https://x.vault.azure.net", on_deleted="ignore")


def test_write_list_keeps_original_ids_and_follows_pages(h: AzureKeyVaultHarness) -> None:
    h.fake.page_size = 3
    backend = h.make_backend()
    ids = [f"conn_{i:02d}" for i in range(8)]
    for conn_id in ids:
        backend.set_connection(
            Connection(conn_id=conn_id, conn_type="postgres", host="h", password="pw-s3cr3t-3")
        )
    h.client.set_secret("airflow-connections-seeded-natively", "postgres://u@h/db")
    h.client.set_secret("airflow-variables-a-var", "x")
    before = h.api_calls()
    assert backend.list_connections() == sorted([*ids, "seeded-natively"])
    assert h.api_calls() - before == 4  # 10 secrets at 3 a page
    assert backend.list_variables() == ["a-var"]


def test_overwrite_false_costs_one_read(h: AzureKeyVaultHarness) -> None:
    backend = h.make_backend()
    backend.set_variable("v", "one")
    before = h.api_calls()
    with pytest.raises(ConfigError, match="already exists"):
        backend.set_variable("v", "two", overwrite=False)
    assert h.api_calls() - before == 1
    assert backend.get_variable("v") == "one"


def test_soft_deleted_name_fail_recover_purge(h: AzureKeyVaultHarness) -> None:
    backend = h.make_backend()
    backend.set_variable("rotating", "old-s3cr3t")
    assert backend.delete_variable("rotating") is True
    assert backend.get_variable("rotating") is None
    assert backend.delete_variable("rotating") is False

    with pytest.raises(ConfigError) as info:
        backend.set_variable("rotating", "new-s3cr3t")
    message = str(info.value)
    assert (
        "deleted but recoverable" in message
        and "--on-deleted recover" in message
        and "--on-deleted purge" in message
    )
    assert "airflow-variables-rotating" in message and "s3cr3t" not in message

    recovering = h.make_backend(on_deleted="recover")  # store behaviour is a setting, not a write option
    recovering.set_variable("rotating", "new-s3cr3t")
    assert recovering.get_variable("rotating") == "new-s3cr3t"
    versions = list(h.client.list_properties_of_secret_versions("airflow-variables-rotating"))
    assert len(versions) == 2  # the recovered history plus the new version

    backend.delete_variable("rotating")
    purging = h.make_backend(on_deleted="purge")
    purging.set_variable("rotating", "fresh-s3cr3t")
    assert purging.get_variable("rotating") == "fresh-s3cr3t"
    versions = list(h.client.list_properties_of_secret_versions("airflow-variables-rotating"))
    assert len(versions) == 1  # purged: the old history is gone


def test_purge_protection_is_reported(h: AzureKeyVaultHarness) -> None:
    h.fake.purge_protection = True
    backend = h.make_backend()
    backend.set_variable("kept", "x")
    with pytest.raises(AccessDenied, match="airflow-variables-kept"):
        h.make_backend(purge_on_delete=True).delete_variable("kept")
    assert backend.recover_deleted("variable", "kept") is True
    assert backend.get_variable("kept") == "x"
    assert backend.recover_deleted("variable", "never-deleted") is False


def test_delete_with_purge(h: AzureKeyVaultHarness) -> None:
    backend = h.make_backend(purge_on_delete=True)
    backend.set_connection(Connection(conn_id="tmp", conn_type="http", host="h"))
    assert backend.delete_connection("tmp") is True
    backend.set_connection(Connection(conn_id="tmp", conn_type="http", host="h2"))  # name is free again
    assert backend.get_connection("tmp").host == "h2"


def test_check(h: AzureKeyVaultHarness) -> None:
    assert "reachable" in h.make_backend().check()
    h.fake.deny_all = True
    with pytest.raises(AccessDenied):
        h.make_backend().check()


def test_registry_class_path_and_client_kwargs_pass_through(h: AzureKeyVaultHarness) -> None:
    kwargs = h.backend_kwargs()
    client_kwargs = kwargs.pop("client_kwargs")
    backend = create_backend(AIRFLOW_CLASS, {**kwargs, **client_kwargs})  # Airflow style: flat kwargs
    assert isinstance(backend, KeyVaultBackend)
    h.seed("variable", "v", "through-registry")
    assert backend.get_variable("v") == "through-registry"


def test_client_secret_never_in_repr_or_describe() -> None:
    backend = KeyVaultBackend(
        vault_url="https://x.vault.azure.net", tenant_id="t", client_id="c", client_secret="cs-s3cr3t"
    )
    assert "s3cr3t" not in repr(backend) + backend.describe() + repr(vars(backend).get("client_kwargs"))


def test_import_and_construction_load_no_azure_module() -> None:
    code = (
        "import sys, credpath\n"
        "from credpath.backends.azure_key_vault import KeyVaultBackend\n"
        "KeyVaultBackend(vault_url='https://x.vault.azure.net')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'azure'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- end to end: search path and CLI -------------------------------------------------------------------


def _config(h: AzureKeyVaultHarness, tmp_path: Any) -> str:
    kwargs = (
        f'vault_url = "{h.fake.vault_url}", credential = "tests.servers.azure_fake.StaticTokenCredential", '
        f'connection_verify = "{h.fake.ca_path}", verify_challenge_resource = false, retry_total = 0'
    )
    return write_config(tmp_path, "akv", AIRFLOW_CLASS, kwargs)


def test_search_path_from_config(h: AzureKeyVaultHarness, tmp_path: Any) -> None:
    check_search_path(h, _config(h, tmp_path))


def test_cli_get_and_add(h: AzureKeyVaultHarness, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    check_cli_get_and_add(h, _config(h, tmp_path), tmp_path, monkeypatch, source="akv", conn_id="added_one")
    stored = h.client.get_secret("airflow-connections-added-one")
    assert json.loads(stored.value)["host"] == "mysql.example"
    assert stored.properties.tags == {"credpath-id": "added_one"}


def test_cli_on_deleted_recover_and_purge(
    h: AzureKeyVaultHarness, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credpath.cli import cli

    use_config(monkeypatch, _config(h, tmp_path), tmp_path)
    runner = CliRunner()
    backend = h.make_backend()
    backend.set_variable("rotating", "old-s3cr3t")
    backend.delete_variable("rotating")

    refused = runner.invoke(cli, ["variables", "set", "rotating", "new-s3cr3t", "--to", "akv"])
    assert refused.exit_code == 2
    assert "--on-deleted recover" in refused.stderr
    assert_no_secret(refused.output)

    result = runner.invoke(
        cli, ["variables", "set", "rotating", "new-s3cr3t", "--to", "akv", "--on-deleted", "recover"]
    )
    assert result.exit_code == 0, result.output
    assert len(list(h.client.list_properties_of_secret_versions("airflow-variables-rotating"))) == 2

    backend.set_connection(Connection.from_uri(URI, conn_id="gone"))
    backend.delete_connection("gone")
    result = runner.invoke(
        cli, ["connections", "add", "gone", "--uri", URI, "--to", "akv", "--on-deleted", "purge"]
    )
    assert result.exit_code == 0, result.output
    assert len(list(h.client.list_properties_of_secret_versions("airflow-connections-gone"))) == 1

    # A store without soft delete has no such option: a one-line error, exit 2.
    other = runner.invoke(cli, ["variables", "set", "k", "v", "--to", "nope", "--on-deleted", "purge"])
    assert other.exit_code == 2


# --- Airflow parity: vault_url default, teams, one voice ---------------------------------------------------


def test_vault_url_defaults_to_empty_and_fails_at_first_use() -> None:
    backend = create_backend(AIRFLOW_CLASS, {}, name="prod-kv")  # Airflow's default vault_url=""
    with pytest.raises(ConfigError) as info:
        backend.get_variable("v")
    assert str(info.value) == (
        "backend 'prod-kv' (Azure Key Vault): vault_url is not set; give the https:// URL of the vault"
    )
    with pytest.raises(ConfigError, match="vault_url is not set"):
        backend.prepare()


def test_team_scoped_reads_as_the_azure_provider(
    h: AzureKeyVaultHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h.client.set_secret("airflow-variables-shared-var", "global")
    h.client.set_secret("airflow-variables-team-a--shared-var", "team-a's")
    backend = h.make_backend()
    assert backend.get_variable("shared_var", team_name="team_a") == "team-a's"
    assert backend.get_variable("shared_var", team_name="team_b") == "global"
    gets = [p for m, p in h.fake.requests if m == "GET" and not p.startswith("!")][-3:]
    assert [p.split("/")[2] for p in gets] == [
        "airflow-variables-team-a--shared-var",
        "airflow-variables-team-b--shared-var",
        "airflow-variables-shared-var",
    ]
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "true")
    before = h.fake.count()
    # "a__b" maps to "a--b": refused like the provider, for config too.
    assert backend.get_variable("a__b") is None and backend.get_config("x--y") is None
    assert h.fake.count() == before


def test_timeout_and_messages_in_one_voice(h: AzureKeyVaultHarness) -> None:
    with pytest.raises(ConfigError, match=r"^backend 'prod-kv' \(Azure Key Vault\): timeout must be"):
        create_backend(AIRFLOW_CLASS, {"timeout": 0}, name="prod-kv")
    backend = create_backend(AIRFLOW_CLASS, h.backend_kwargs(), name="prod-kv")
    backend.prepare()
    h.fake.deny_all = True
    with pytest.raises(AccessDenied, match=r"^backend 'prod-kv' \(Azure Key Vault\): reading secret"):
        backend.get_variable("v")
