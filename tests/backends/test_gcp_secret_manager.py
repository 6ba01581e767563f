"""GCP Secret Manager backend through google-cloud-secret-manager (REST) against the loopback fake."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import pytest

from credpath.backends.gcp_secret_manager import SecretManagerBackend, crc32c
from credpath.errors import AccessDenied, BackendError, ConfigError
from credpath.registry import create_backend
from tests.servers._fake_http import URI, check_cli_get_and_add, check_search_path, write_config
from tests.servers.gcp_fake import DESTROYED, DISABLED, GcpSecretManagerHarness, project_number

AIRFLOW_CLASS = "airflow.providers.google.cloud.secrets.secret_manager.CloudSecretManagerBackend"


@pytest.fixture
def h(gcp_secret_manager_harness: GcpSecretManagerHarness) -> GcpSecretManagerHarness:
    return gcp_secret_manager_harness


def accesses(h: GcpSecretManagerHarness) -> int:
    return h.fake.count("access")


def test_crc32c_known_vector() -> None:
    # RFC 3720 test vector: 32 bytes of zeros.
    assert crc32c(b"\x00" * 32) == 0x8A9136AA
    assert crc32c(b"123456789") == 0xE3069283


def test_one_client_and_one_call_per_read(h: GcpSecretManagerHarness) -> None:
    h.seed("connection", "my_db", URI)
    backend = h.make_backend()
    first = backend.client
    for _ in range(5):
        assert backend.get_connection("my_db").password == "pw-s3cr3t-1"
    assert backend.client is first
    assert accesses(h) == 5
    assert h.fake.requests[-1] == (
        "GET",
        f"/v1/projects/{h.project}/secrets/airflow-connections-my_db/versions/latest:access",
    )


def test_disabled_latest_raises_and_never_falls_back(h: GcpSecretManagerHarness) -> None:
    h.seed("connection", "rotated", URI)
    h.seed("connection", "rotated", "postgres://app:pw-s3cr3t-2@db.example.com/analytics")
    h.fake.set_version_state(h.project, "airflow-connections-rotated", 2, DISABLED)
    with pytest.raises(BackendError) as info:
        h.make_backend().get_conn_value("rotated")
    message = str(info.value)
    assert "airflow-connections-rotated" in message and "DISABLED" in message
    assert "s3cr3t" not in message


def test_destroyed_latest_names_the_state(h: GcpSecretManagerHarness) -> None:
    h.seed("variable", "token", "v-s3cr3t-1")
    h.fake.set_version_state(h.project, "airflow-variables-token", "latest", DESTROYED)
    with pytest.raises(BackendError, match="DESTROYED"):
        h.make_backend().get_variable("token")


def test_pinned_version(h: GcpSecretManagerHarness) -> None:
    h.seed("variable", "v", "first")
    h.seed("variable", "v", "second")
    assert h.make_backend().get_variable("v") == "second"
    assert h.make_backend(version=1).get_variable("v") == "first"
    assert h.make_backend(version="3").get_variable("v") is None
    with pytest.raises(ConfigError, match="version"):
        h.make_backend(version="newest")


def test_permission_denied_is_an_error_not_a_miss(h: GcpSecretManagerHarness) -> None:
    h.seed("connection", "locked", URI)
    h.fake.deny(h.project, "airflow-connections-locked")
    with pytest.raises(AccessDenied) as info:
        h.make_backend().get_conn_value("locked")
    assert "airflow-connections-locked" in str(info.value) and "permission denied" in str(info.value)


def test_corrupted_payload_is_refused(h: GcpSecretManagerHarness) -> None:
    h.seed("connection", "damaged", URI)
    h.fake.corrupt(h.project, "airflow-connections-damaged")
    with pytest.raises(BackendError, match="CRC32C") as info:
        h.make_backend().get_conn_value("damaged")
    assert "s3cr3t" not in str(info.value)


def test_transient_unavailable_is_retried(h: GcpSecretManagerHarness) -> None:
    h.seed("variable", "v", "ok")
    h.fake.fail_next(503)
    assert h.make_backend().get_variable("v") == "ok"
    assert accesses(h) == 2


def test_persistent_unavailable_gives_up_within_timeout(h: GcpSecretManagerHarness) -> None:
    h.seed("variable", "v", "ok")
    h.fake.fail_next(503, 1000)
    backend = h.make_backend(timeout=1)
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.get_variable("v")
    assert time.monotonic() - started < 5
    assert "airflow-variables-v" in str(info.value)
    assert accesses(h) >= 2


def test_prefixes_sep_and_null_prefix(h: GcpSecretManagerHarness) -> None:
    h.seed_secret("team_a__conn__db", "postgres://u@custom.example/db")
    backend = h.make_backend(connections_prefix="team_a", sep="__conn__", variables_prefix=None)
    assert backend.get_connection("db").host == "custom.example"
    before = h.api_calls()
    assert backend.get_variable("anything") is None
    assert h.api_calls() == before
    # Airflow's google provider joins prefix, sep and id even under an empty prefix: "-bare_id".
    h.seed_secret("bare_id", "not-this")
    h.seed_secret("-bare_id", "v")
    assert h.make_backend(variables_prefix="").get_variable("bare_id") == "v"
    assert h.fake.requests[-1][1].endswith("/secrets/-bare_id/versions/latest:access")


@pytest.mark.parametrize(
    "kwargs", [{"connections_prefix": "bad/prefix"}, {"sep": "."}, {"config_prefix": "a b"}]
)
def test_prefix_validation_names_the_setting(h: GcpSecretManagerHarness, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="prefix and sep"):
        h.make_backend(**kwargs)


def test_impossible_id_is_a_miss_without_a_call(h: GcpSecretManagerHarness) -> None:
    backend = h.make_backend()
    before = h.api_calls()
    assert backend.get_conn_value("has.dots/and slashes") is None
    assert h.api_calls() == before
    with pytest.raises(ConfigError, match="rejects"):
        backend.set_variable("has.dots", "x")


def test_missing_project_is_a_config_error(h: GcpSecretManagerHarness) -> None:
    backend = h.make_backend(project_id=None)
    with pytest.raises(ConfigError, match="project_id"):
        backend.get_variable("v")


def test_write_call_counts_and_overwrite(h: GcpSecretManagerHarness) -> None:
    backend = h.make_backend()
    before = h.api_calls()
    backend.set_variable("new_var", "one")
    assert h.api_calls() - before == 2  # create + addVersion
    before = h.api_calls()
    backend.set_variable("new_var", "two")
    assert h.api_calls() - before == 2  # create (409) + addVersion
    before = h.api_calls()
    with pytest.raises(ConfigError, match="already exists"):
        backend.set_variable("new_var", "three", overwrite=False)
    assert h.api_calls() - before == 1
    assert backend.get_variable("new_var") == "two"
    secret = h.client.get_secret(name=f"projects/{h.project}/secrets/airflow-variables-new_var")
    assert dict(secret.labels) == {"managed-by": "credpath"}
    # Names come back with the project number, not the id we used.
    assert secret.name.startswith(f"projects/{project_number(h.project)}/")


def test_list_follows_pages_and_filters_by_prefix(h: GcpSecretManagerHarness) -> None:
    h.fake.max_page_size = 4
    ids = [f"c{i:02d}" for i in range(10)]
    for conn_id in ids:
        h.seed("connection", conn_id, "postgres://u@h/db")
    h.seed("variable", "c99", "v")
    h.seed_secret("not-airflow-connections-x", "v")  # contains the prefix, does not start with it
    backend = h.make_backend()
    before = h.api_calls()
    assert backend.list_connections() == ids
    assert h.api_calls() - before == 3  # 10 matches at 4 a page
    assert backend.list_variables() == ["c99"]


def test_delete(h: GcpSecretManagerHarness) -> None:
    h.seed("connection", "gone", URI)
    backend = h.make_backend()
    assert backend.delete_connection("gone") is True
    assert backend.get_conn_value("gone") is None
    assert backend.delete_connection("gone") is False


def test_check(h: GcpSecretManagerHarness) -> None:
    assert "reachable" in h.make_backend().check()
    h.fake.fail_next(403)
    with pytest.raises(AccessDenied):
        h.make_backend().check()


def test_registry_airflow_class_path_and_unknown_kwarg(h: GcpSecretManagerHarness) -> None:
    backend = create_backend(AIRFLOW_CLASS, h.backend_kwargs())
    assert isinstance(backend, SecretManagerBackend)
    h.seed("variable", "v", "through-registry")
    assert backend.get_variable("v") == "through-registry"
    with pytest.raises(ConfigError, match="gcp_key_file"):
        create_backend("gcp-secret-manager", {"gcp_key_file": "/x.json"})


def test_import_and_construction_load_no_google_module() -> None:
    code = (
        "import sys, credpath\n"
        "from credpath.backends.gcp_secret_manager import SecretManagerBackend\n"
        "SecretManagerBackend(project_id='p', transport='rest')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('google', 'grpc')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_keyfile_dict_json_names_the_setting(h: GcpSecretManagerHarness) -> None:
    backend = SecretManagerBackend(project_id="p", gcp_keyfile_dict='{"private_key": "k-s3cr3t"')
    with pytest.raises(ConfigError, match="gcp_keyfile_dict") as info:
        backend.get_variable("v")
    assert "s3cr3t" not in str(info.value)


# --- end to end: search path and CLI -------------------------------------------------------------------


def _config(h: GcpSecretManagerHarness, tmp_path: Any) -> str:
    kwargs = (
        f'project_id = "{h.project}", credentials = "anonymous", transport = "rest", '
        f'client_options = {{ api_endpoint = "{h.fake.endpoint}" }}'
    )
    return write_config(tmp_path, "gcp", AIRFLOW_CLASS, kwargs)


def test_search_path_from_config(h: GcpSecretManagerHarness, tmp_path: Any) -> None:
    check_search_path(h, _config(h, tmp_path))


def test_cli_get_and_add(h: GcpSecretManagerHarness, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    check_cli_get_and_add(h, _config(h, tmp_path), tmp_path, monkeypatch, source="gcp", conn_id="added")
    raw = h.client.access_secret_version(
        name=f"projects/{h.project}/secrets/airflow-connections-added/versions/1"
    )
    assert json.loads(raw.payload.data)["host"] == "mysql.example"


# --- Airflow parity: teams, empty prefix, one voice -------------------------------------------------------


def test_team_scoped_reads_as_the_google_provider(
    h: GcpSecretManagerHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    h.seed_secret("airflow-variables-shared", "global")
    h.seed_secret("airflow-variables-team_a--shared", "team-a's")
    h.seed_secret("airflow-config-x--y", "config")
    h.seed_secret("-team_a--bare", "team-a bare")
    backend = h.make_backend()
    assert backend.get_variable("shared", team_name="team_a") == "team-a's"
    assert backend.get_variable("shared", team_name="team_b") == "global"
    paths = [p for _, p in h.fake.requests if p.endswith(":access")][-3:]
    assert [p.split("/secrets/")[1].split("/")[0] for p in paths] == [
        "airflow-variables-team_a--shared",
        "airflow-variables-team_b--shared",
        "airflow-variables-shared",
    ]
    # prefix, sep and team always joined, as build_path does: "" + "-" + team.
    assert h.make_backend(variables_prefix="").get_variable("bare", team_name="team_a") == "team-a bare"
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "true")
    before = accesses(h)
    assert backend.get_variable("team_a--shared") is None and backend.get_conn_value("a--b") is None
    assert accesses(h) == before
    assert backend.get_config("x--y") == "config"  # the provider's get_config has no such guard


def test_messages_and_prepare(h: GcpSecretManagerHarness) -> None:
    with pytest.raises(ConfigError, match=r"^backend 'prod-gcp' \(GCP Secret Manager\): version must be"):
        create_backend("gcp-secret-manager", {"version": "x"}, name="prod-gcp")
    backend = create_backend("gcp-secret-manager", h.backend_kwargs(), name="prod-gcp")
    before = h.fake.count()
    backend.prepare()
    assert backend._clients.existing() is not None and h.fake.count() == before  # built, no request
    h.fake.deny(h.project, "airflow-variables-v")
    with pytest.raises(AccessDenied, match=r"^backend 'prod-gcp' \(GCP Secret Manager\): reading secret"):
        backend.get_variable("v")
