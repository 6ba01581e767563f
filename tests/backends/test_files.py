"""The files backend (Airflow's LocalFilesystemBackend formats), incl. re-reading only on change."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from credpath.backends.files import LocalFilesystemBackend
from credpath.errors import ConfigError, MissingFile
from credpath.model import Connection
from credpath.registry import create_backend
from tests.conftest import assert_no_secret
from tests.servers.local import FilesHarness

PW = "pw-s3cr3t-1"


def _age(path: Path, seconds: float = 10.0) -> None:
    """Backdate a file, as if written a while ago (so its parse is trusted: see RACY_WINDOW_NS)."""
    past = time.time() - seconds
    os.utime(path, (past, past))


_CONTENT = {
    "env": (
        f"pg=postgres://etl:{PW}@db:5432/analytics\n"
        'api={"conn_type": "http", "host": "api.example.com", "description": "the API"}\n',
        "batch_size=500\ngreeting=hello world\n",
        "core__parallelism=32\n",
    ),
    "json": (
        json.dumps(
            {
                "pg": f"postgres://etl:{PW}@db:5432/analytics",
                "api": {"conn_type": "http", "host": "api.example.com", "description": "the API"},
            }
        ),
        json.dumps({"batch_size": "500", "greeting": "hello world"}),
        json.dumps({"core__parallelism": "32"}),
    ),
    "yaml": (
        f"pg: postgres://etl:{PW}@db:5432/analytics\napi:\n  conn_type: http\n  host: api.example.com\n"
        "  description: the API\n",
        "batch_size: 500\ngreeting: hello world\n",
        "core__parallelism: 32\n",
    ),
}


@pytest.mark.parametrize("fmt", ["env", "json", "yaml"])
def test_reads_every_kind_in_every_format(tmp_path: Path, fmt: str) -> None:
    conns, variables, config = _CONTENT[fmt]
    suffix = "yml" if fmt == "yaml" else fmt
    paths = {}
    for name, content in (("c", conns), ("v", variables), ("cfg", config)):
        paths[name] = tmp_path / f"{name}.{suffix}"
        paths[name].write_text(content)
    backend = LocalFilesystemBackend(
        connections_file_path=str(paths["c"]),
        variables_file_path=paths["v"],
        config_file_path=str(paths["cfg"]),
    )
    assert backend.get_conn_value("pg") == f"postgres://etl:{PW}@db:5432/analytics"  # the raw value
    pg = backend.get_connection("pg")
    assert (pg.conn_type, pg.host, pg.login, pg.password, pg.port, pg.schema) == (
        "postgres",
        "db",
        "etl",
        PW,
        5432,
        "analytics",
    )
    api = backend.get_connection("api")
    assert api == Connection(conn_id="api", conn_type="http", host="api.example.com", description="the API")
    assert Connection.from_value(backend.get_conn_value("api"), conn_id="api") == api
    assert backend.get_variable("batch_size") == "500"
    assert backend.get_variable("greeting") == "hello world"
    assert backend.get_config("core__parallelism") == "32"
    assert backend.get_conn_value("missing") is None
    assert backend.get_variable("missing") is None
    assert backend.get_config("missing") is None
    assert backend.list_connections() == ["api", "pg"]
    assert backend.list_variables() == ["batch_size", "greeting"]


def test_unset_files_mean_misses(tmp_path: Path) -> None:
    backend = LocalFilesystemBackend()
    assert backend.get_conn_value("x") is None
    assert backend.get_variable("x") is None
    assert backend.get_config("x") is None
    assert backend.list_connections() == [] and backend.list_variables() == []
    assert backend.check() == "no files configured"


def test_loaded_by_alias_and_airflow_class_path_with_airflow_kwargs(files_harness: FilesHarness) -> None:
    files_harness.seed("variable", "k", "v")
    files_harness.seed("config", "sect__opt", "1")
    kwargs = {
        "variables_file_path": str(files_harness.paths["variable"]),
        "connections_file_path": str(files_harness.paths["connection"]),
        "configs_file_path": str(files_harness.paths["config"]),
    }
    for type_name in ("files", "airflow.secrets.local_filesystem.LocalFilesystemBackend"):
        backend = create_backend(type_name, kwargs)
        assert isinstance(backend, LocalFilesystemBackend)
        assert backend.get_variable("k") == "v"
        assert backend.get_config("sect__opt") == "1"
    with pytest.raises(ConfigError, match="give configs_file_path or config_file_path, not both"):
        LocalFilesystemBackend(configs_file_path="a.json", config_file_path="b.json")


def test_reparses_only_when_the_file_changes(files_harness: FilesHarness) -> None:
    files_harness.seed("variable", "k", "v1")
    path = files_harness.paths["variable"]
    _age(path)
    backend = files_harness.make_backend()
    for _ in range(100):
        assert backend.get_variable("k") == "v1"
    assert backend.parse_counts()["variables"] == 1

    files_harness.seed("variable", "k", "v2")  # same size, new inode (atomic replace)
    assert backend.get_variable("k") == "v2"
    _age(path)
    assert backend.get_variable("k") == "v2"
    parses = backend.parse_counts()["variables"]
    for _ in range(50):
        backend.get_variable("k")
    assert backend.parse_counts()["variables"] == parses

    # In-place rewrite with the same size: only the mtime tells.
    path.write_text(path.read_text().replace("v2", "v3"))
    assert backend.get_variable("k") == "v3"


def test_a_file_written_within_the_same_clock_tick_is_not_served_stale(files_harness: FilesHarness) -> None:
    path = files_harness.paths["variable"]
    files_harness.seed("variable", "k", "v1")
    backend = files_harness.make_backend()
    stamp = os.stat(path)
    assert backend.get_variable("k") == "v1"
    # Rewrite keeping inode, size and mtime identical: a change no stat() can see.
    path.write_text(path.read_text().replace("v1", "v9"))
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert backend.get_variable("k") == "v9"  # fresh files are re-parsed until they are old


def test_a_broken_rewrite_is_an_error_not_the_old_value(files_harness: FilesHarness) -> None:
    path = files_harness.paths["variable"]
    files_harness.seed("variable", "k", "old-s3cr3t")
    backend = files_harness.make_backend()
    assert backend.get_variable("k") == "old-s3cr3t"
    path.write_text('{\n  "k": "new-s3cr3t",\n  "k2" "x"\n}')
    with pytest.raises(ConfigError, match=r"variables\.json, line 3: invalid JSON") as info:
        backend.get_variable("k")
    assert_no_secret(str(info.value))
    with pytest.raises(ConfigError):  # still broken: still an error
        backend.get_variable("k")
    path.write_text('{"k": "fixed"}')
    assert backend.get_variable("k") == "fixed"


def test_env_duplicate_keys_are_an_error_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "conns.env"
    path.write_text(f"a=http://h\n# note\nb=postgres://u:{PW}@h/db\nb=postgres://u:{PW}@h2/db\n")
    backend = LocalFilesystemBackend(connections_file_path=str(path))
    with pytest.raises(ConfigError) as info:
        backend.get_conn_value("a")
    assert str(info.value) == (
        f"backend 'files' (local files): {path}, line 4: duplicate key 'b' (first defined on line 3)"
    )


def test_bad_connection_entry_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "conns.yaml"
    path.write_text(f"ok: http://h\nbad:\n  conn_type: http\n  password: {PW}\n  port: 99999\n")
    backend = LocalFilesystemBackend(connections_file_path=str(path))
    with pytest.raises(ConfigError, match=r"conns\.yaml, line 2: .*'port'.*0-65535") as info:
        backend.get_connection("ok")
    assert_no_secret(str(info.value))


def test_missing_file_and_unsupported_extension(tmp_path: Path) -> None:
    absent = tmp_path / "absent.json"
    backend = LocalFilesystemBackend(variables_file_path=str(absent))
    # credpath's message (a ConfigError: the path is wrong), and what Airflow raises (FileNotFoundError).
    with pytest.raises(ConfigError, match=r"variables_file_path .*absent\.json does not exist"):
        backend.get_variable("k")
    with pytest.raises(FileNotFoundError) as info:
        backend.get_variable("k")
    assert isinstance(info.value, OSError) and isinstance(info.value, MissingFile)
    assert info.value.filename == str(absent)
    assert str(info.value) == f"backend 'files' (local files): variables_file_path {absent} does not exist"
    with pytest.raises(
        ConfigError, match=r"^backend 'files' \(local files\): .*unsupported file format \.ini"
    ):
        LocalFilesystemBackend(connections_file_path=str(tmp_path / "c.ini"))


def test_lookup_patterns_skip_the_file(tmp_path: Path) -> None:
    path = tmp_path / "v.json"
    path.write_text(json.dumps({"app_a": "1", "other": "2"}))
    backend = LocalFilesystemBackend(variables_file_path=str(path), variables_lookup_pattern="app_")
    assert backend.get_variable("other") is None
    assert backend.parse_counts()["variables"] == 0  # no match: the file was not even read
    assert backend.get_variable("APP_A".lower()) == "1"
    assert backend.list_variables() == ["app_a"]
    assert backend.get_variables(["app_a", "other"]) == {"app_a": "1"}


def test_batches_and_prefetch(files_harness: FilesHarness) -> None:
    files_harness.seed("connection", "a", "http://a")
    files_harness.seed("connection", "b", '{"conn_type": "http", "host": "b"}')
    files_harness.seed("variable", "x", "1")
    backend = files_harness.make_backend()
    assert backend.get_conn_values(["a", "b", "c"]) == {
        "a": "http://a",
        "b": '{"conn_type": "http", "host": "b"}',
    }
    assert backend.prefetch_connections().keys() == {"a", "b"}
    assert backend.prefetch_variables() == {"x": "1"}
    assert backend.check() == "3 file(s) readable and valid"
    assert "connections=connections.json" in backend.describe()


def test_variable_descriptions_from_export_form(tmp_path: Path) -> None:
    path = tmp_path / "vars.json"
    path.write_text(json.dumps({"d": {"value": "v", "description": "desc"}, "n": 3}))
    backend = LocalFilesystemBackend(variables_file_path=str(path))
    assert backend.get_variable("d") == "v"
    assert backend.get_variable_record("d").description == "desc"
    assert backend.get_variable("n") == "3"


def test_one_element_lists_are_read_and_longer_lists_refused(tmp_path: Path) -> None:
    # Airflow's load_connections_dict: {"id": ["uri"]} and [{"uri": ...}] forms; more than one value is
    # ConnectionNotUnique. credpath names the file and line.
    path = tmp_path / "conns.json"
    path.write_text(json.dumps({"a": ["mysql://host_1"], "b": [{"uri": "mysql://host_2"}], "gone": []}))
    _age(path)
    backend = LocalFilesystemBackend(connections_file_path=str(path))
    assert backend.get_conn_value("a") == "mysql://host_1"
    assert backend.get_connection("a").host == "host_1"
    assert backend.get_connection("b").host == "host_2"
    assert backend.get_connection("gone") is None
    assert backend.list_connections() == ["a", "b"]
    path.write_text('{"a": ["mysql://host_1"],\n "b": ["mysql://x", "mysql://y"]}')
    with pytest.raises(ConfigError, match=r"conns\.json, line 2: connection 'b' has 2 values in a list"):
        backend.get_conn_value("a")


def test_not_cacheable_and_rereads_only_on_change(tmp_path: Path) -> None:
    assert LocalFilesystemBackend.cache_results is False
    path = tmp_path / "vars.json"
    path.write_text(json.dumps({"k": "1"}))
    _age(path)
    backend = LocalFilesystemBackend(variables_file_path=str(path))
    assert backend.get_variable("k") == "1"
    assert backend.get_variable("k") == "1"
    assert backend.parse_counts()["variables"] == 1  # unchanged file: one stat, no re-parse
    path.write_text(json.dumps({"k": "2"}))
    assert backend.get_variable("k") == "2"
    assert backend.parse_counts()["variables"] == 2


def _search_path_honours_cache_results() -> bool:
    import inspect

    import credpath._search_path

    return "cache_results" in inspect.getsource(credpath._search_path)


@pytest.mark.skipif(
    not _search_path_honours_cache_results(), reason="the search path does not read cache_results yet"
)
def test_an_edited_file_is_seen_through_the_default_search_path(tmp_path: Path) -> None:
    from credpath._search_path import SearchPath

    path = tmp_path / "vars.json"
    path.write_text(json.dumps({"k": "1"}))
    _age(path)
    search_path = SearchPath([LocalFilesystemBackend(variables_file_path=str(path))])  # default cache on
    assert search_path.get_variable("k") == "1"
    path.write_text(json.dumps({"k": "2"}))
    assert search_path.get_variable("k") == "2"  # at once, not after the cache TTL


def test_team_name_is_accepted_and_ignored_as_airflow(tmp_path: Path) -> None:
    # Airflow's LocalFilesystemBackend.get_connection/get_variable take team_name and do not scope by it.
    conns, variables = tmp_path / "c.json", tmp_path / "v.json"
    conns.write_text(json.dumps({"db": "mysql://h"}))
    variables.write_text(json.dumps({"k": "v"}))
    backend = LocalFilesystemBackend(connections_file_path=str(conns), variables_file_path=str(variables))
    assert backend.get_conn_value("db", team_name="team_a") == "mysql://h"
    assert backend.get_connection("db", team_name="team_a").host == "h"
    assert backend.get_variable("k", team_name="team_a") == "v"
    assert backend.get_conn_values(["db"], team_name="team_a") == {"db": "mysql://h"}
    assert backend.get_variables(["k"], team_name="team_a") == {"k": "v"}


def test_messages_speak_in_the_backend_voice(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^backend 'files' \(local files\): give configs_file_path"):
        LocalFilesystemBackend(configs_file_path="a.json", config_file_path="b.json")
    with pytest.raises(ConfigError, match=r"^backend 'files' \(local files\): connections_file_path must be"):
        LocalFilesystemBackend(connections_file_path=5)  # type: ignore[arg-type]
