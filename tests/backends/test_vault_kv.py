"""The KV engine's paths and versions (``backends/vault/kv.py``) without a server: where an id lives with and
without Airflow's ``mount_point``, the v1/v2 URL paths, each mount's configured version and what KV's
answers mean. tests/backends/test_vault.py runs the same rules against OpenBao."""

from __future__ import annotations

import json
from typing import Any

import pytest

from credpath._lookup.trace import VersionCheck
from credpath.backends.vault import kv
from credpath.backends.vault.settings import VaultSettings
from credpath.errors import BackendError, ConfigError


def error(message: str, cls: type[BackendError] = BackendError) -> BackendError:
    return cls(f"backend 'vault' (HashiCorp Vault): {message}", backend="vault")


def engine(**kwargs: Any) -> kv.KvEngine:
    settings = VaultSettings.from_kwargs(ConfigError, url="http://127.0.0.1:9", token="t", **kwargs)
    return kv.KvEngine(settings, error)


@pytest.fixture(autouse=True)
def single_team(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW__CORE__MULTI_TEAM", raising=False)


# --- URL paths ------------------------------------------------------------------------------------------


def test_v2_reads_under_data_and_v1_at_the_path() -> None:
    assert kv.data_path("secret", "variables/k", 2) == "secret/data/variables/k"
    assert kv.data_path("secret", "variables/k", 1) == "secret/variables/k"
    assert kv.metadata_path("secret", "connections/db") == "secret/metadata/connections/db"


def test_list_folders_of_v1_and_v2() -> None:
    assert kv.list_folder("secret", "variables", 2, "") == "secret/metadata/variables/"
    assert kv.list_folder("secret", "variables", 2, "team/") == "secret/metadata/variables/team/"
    assert kv.list_folder("kv1", "variables", 1, "") == "kv1/variables/"
    assert kv.list_folder("kv1", "variables", 1, "a/b/") == "kv1/variables/a/b/"
    # An empty configured path lists the mount's root (no doubled slash).
    assert kv.list_folder("secret", "", 2, "") == "secret/metadata/"
    assert kv.list_folder("kv1", "", 1, "sub/") == "kv1/sub/"


def test_quoted_keeps_the_slashes_and_encodes_the_rest() -> None:
    assert kv.quoted("secret/data/a b/c?d#e") == "secret/data/a%20b/c%3Fd%23e"


@pytest.mark.parametrize(
    ("path", "valid"),
    [
        ("a", True),
        ("a/b", True),
        ("", False),
        ("a//b", False),
        ("a/../sys", False),
        ("./a", False),
        ("a/", False),
    ],
)
def test_valid_path_refuses_empty_and_dot_segments(path: str, valid: bool) -> None:
    assert kv.valid_path(path) is valid


# --- where an id lives ----------------------------------------------------------------------------------


def test_with_a_mount_point_the_id_is_the_path_under_each_configured_path() -> None:
    kv_engine = engine(variables_path=["variables", "shared"])
    assert kv_engine.locations("variable", "team/k") == [
        ("secret", "variables/team/k"),
        ("secret", "shared/team/k"),
    ]
    assert kv_engine.locate("variable", "team/k") == ("secret", "variables/team/k")  # the first path only
    assert kv_engine.locations("connection", "db") == [("secret", "connections/db")]
    assert kv_engine.locations("config", "sql_alchemy_conn") == [("secret", "config/sql_alchemy_conn")]


def test_the_mount_point_is_stripped_of_slashes() -> None:
    assert engine(mount_point="/airflow/").locations("variable", "k") == [("airflow", "variables/k")]


def test_without_a_mount_point_the_first_segment_names_the_mount() -> None:
    kv_engine = engine(mount_point=None)
    assert kv_engine.locations("variable", "kv1/k") == [("kv1", "variables/k")]
    assert kv_engine.locate("connection", "airflow/team/db") == ("airflow", "connections/team/db")
    # No segment left for the mount: nothing to read, nowhere to write.
    assert kv_engine.locations("variable", "k") == []
    assert kv_engine.locate("variable", "k") is None


def test_an_empty_configured_path_puts_the_id_at_the_mount_root() -> None:
    kv_engine = engine(variables_path="")
    assert kv_engine.locations("variable", "k") == [("secret", "k")]
    assert kv_engine.locate("variable", "k") == ("secret", "k")


def test_a_null_path_switches_the_kind_off() -> None:
    kv_engine = engine(connections_path=None)
    assert kv_engine.paths["connection"] is None
    assert kv_engine.locations("connection", "db") == []
    assert kv_engine.locate("connection", "db") is None


def test_ids_that_would_leave_their_path_are_not_located() -> None:
    kv_engine = engine()
    assert kv_engine.locations("variable", "../../sys/k") == []
    assert kv_engine.locate("variable", "a//b") is None
    assert engine(mount_point=None).locate("variable", "../k") is None


def test_team_scoping_in_multi_team_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    kv_engine = engine()
    assert kv_engine.locations("variable", "k", "team1") == [("secret", "variables/k")]  # off: no scoping
    monkeypatch.setenv("AIRFLOW__CORE__MULTI_TEAM", "true")
    assert kv_engine.locations("variable", "k", "team1") == [("secret", "variables/team1/k")]
    assert kv_engine.locations("config", "k", "team1") == [("secret", "config/k")]  # config has no teams
    # With no team, an id with '/' could reach a team's secret: not looked up.
    assert kv_engine.locations("variable", "team1/k") == []
    assert engine(mount_point=None).locations("variable", "kv1/team1/k") == []
    assert engine(mount_point=None).locations("variable", "kv1/k") == [("kv1", "variables/k")]
    unscoped = engine(use_team_secrets_path=False)
    assert unscoped.locations("variable", "k", "team1") == [("secret", "variables/k")]
    assert unscoped.locations("variable", "team1/k") == [("secret", "variables/team1/k")]


def test_listed_keys_name_their_mount_only_without_a_mount_point() -> None:
    assert engine().ids("secret", ["a", "b/c"]) == ["a", "b/c"]
    assert engine(mount_point=None).ids("kv1", ["a", "b/c"]) == ["kv1/a", "kv1/b/c"]


# --- versions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("configured", "version"), [(None, 2), (2, 2), (1, 1)])
def test_a_configured_version_needs_no_request(configured: int | None, version: int) -> None:
    session: Any = None  # never touched: the version is the setting
    deadline: Any = None
    assert engine(kv_engine_version=configured).version(session, "secret", deadline) == version


@pytest.mark.parametrize(
    ("answer", "version"),
    [
        ({"data": {"type": "kv", "options": {"version": "2"}}}, 2),
        ({"data": {"type": "kv", "options": {"version": 2}}}, 2),
        ({"data": {"type": "kv", "options": {"version": "1"}}}, 1),
        ({"data": {"type": "kv", "options": None}}, 1),  # KV v1 mounts may answer no options
        ({"data": {"type": "generic"}}, 1),  # Vault's old name of KV v1
    ],
)
def test_a_mounts_kv_version_from_its_answer(answer: dict[str, Any], version: int) -> None:
    assert kv.mount_version(answer, ValueError) == version


def test_a_mount_that_is_not_kv_is_an_error_naming_its_engine() -> None:
    with pytest.raises(ValueError, match=r"^a 'database' engine, not kv$"):
        kv.mount_version({"data": {"type": "database"}}, ValueError)
    with pytest.raises(ValueError, match=r"^a None engine, not kv$"):
        kv.mount_version({}, ValueError)


def test_kv_mounts_of_the_mount_listing() -> None:
    answer = {
        "data": {
            "secret": {
                "secret/": {"type": "kv"},
                "kv1/": {"type": "kv"},
                "db/": {"type": "database"},
            }
        }
    }
    assert kv.kv_mounts(answer) == ["kv1", "secret"]
    assert kv.kv_mounts({}) == []


def _meta(current: Any, **state: Any) -> dict[str, Any]:
    return {"data": {"current_version": current, "versions": {str(current): state}}}


def test_version_check_answers() -> None:
    assert kv.version_check(_meta(3), "3") == VersionCheck(True)
    assert kv.version_check(_meta(4), "3") == VersionCheck(False)  # rotated
    assert kv.version_check(_meta(3, deletion_time="2026-01-01T00:00:00Z"), "3") == VersionCheck(False)
    assert kv.version_check(_meta(3, destroyed=True), "3") == VersionCheck(False)
    assert kv.version_check({}, "3") == VersionCheck(False)


def test_current_and_created_versions() -> None:
    assert kv.current_version(_meta(7)) == 7
    assert kv.current_version({}) == 0  # never written: check-and-set 0 creates it
    assert kv.created_version({"data": {"version": 5}}) == "5"
    for answer in ({"data": {"version": 0}}, {"data": {"version": True}}, {"data": "x"}, {}):
        assert kv.created_version(answer) is None


# --- a read's answer ------------------------------------------------------------------------------------


def _body(data: Any, **top: Any) -> bytes:
    return json.dumps({"data": data, **top}).encode()


def test_a_v2_answer_unwraps_the_secret_and_a_v1_answer_is_the_secret() -> None:
    secret = {"value": "s3cr3t"}
    v2 = _body({"data": secret, "metadata": {"version": 4}})
    assert kv.secret_map(v2, 2, "secret/variables/k", error) == secret
    assert kv.secret_map(_body(secret), 1, "kv1/variables/k", error) == secret


@pytest.mark.parametrize(
    "metadata", [{"deletion_time": "2026-01-01T00:00:00Z"}, {"destroyed": True}, {"version": 2}]
)
def test_a_deleted_destroyed_or_empty_v2_secret_is_a_miss(metadata: dict[str, Any]) -> None:
    data = None if metadata.get("version") else {"value": "s3cr3t"}
    assert kv.secret_map(_body({"data": data, "metadata": metadata}), 2, "secret/variables/k", error) is None


@pytest.mark.parametrize("body", [b"<html>proxy</html>", b"[]", _body("text"), b"{}"])
def test_an_answer_that_is_not_vaults_is_an_error_never_a_miss(body: bytes) -> None:
    with pytest.raises(BackendError, match="reading secret/variables/k: the response is not a Vault JSON"):
        kv.secret_map(body, 2, "secret/variables/k", error)


def test_a_secret_that_is_not_a_key_map_is_an_error() -> None:
    with pytest.raises(BackendError, match="secret secret/variables/k is not a key/value map"):
        kv.secret_map(_body({"data": ["s3cr3t"], "metadata": {}}), 2, "secret/variables/k", error)
