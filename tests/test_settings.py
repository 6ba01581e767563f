"""One settings builder: the CLI, the Python API, the web app and the Airflow drop-in build the same search
path from one credpath.toml; numbers, ids, auth methods and Airflow's backends order are checked early."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from credpath.errors import ConfigError

FERNET_KEY = "x" * 43 + "="  # 32 url-safe base64 bytes: a valid Fernet key's shape

_AIRFLOW_ENV = (
    "AIRFLOW__SECRETS__BACKEND",
    "AIRFLOW__SECRETS__BACKEND_KWARGS",
    "AIRFLOW__SECRETS__BACKENDS_ORDER",
    "AIRFLOW__WORKERS__BACKENDS_ORDER",
    "CREDPATH_CACHE_SHARED",
    "CREDPATH_CACHE_KEY",
    "CREDPATH_CONFIG",
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in _AIRFLOW_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path))
    return tmp_path


def _write(home: Path, text: str) -> Path:
    file = home / "credpath.toml"
    file.write_text(textwrap.dedent(text))
    return file


BREAKER_AND_CACHE = """
    [[backends]]
    name = "mem"
    type = "tests.memory_backend.MemoryBackend"

    [circuit_breaker]
    failures = 1
    cool_down = 7

    [cache]
    ttl = 42
    miss_ttl = 3
    shared = "file"
    shared_key = "{key}"
    shared_lease = 2.5
"""


def _four_search_paths(file: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The search path each of the four entry points builds from ``file``."""
    from credpath import airflow, api
    from credpath.cli import State

    monkeypatch.setenv("CREDPATH_CONFIG", str(file))
    api.set_default_search_path(None)
    airflow.reset()
    cli_state = State(file)
    web_state = State(file)  # `credpath web` serves the search path of its own State
    from credpath.web.app import create_app

    app = create_app(web_state.search_path)
    return {
        "cli": cli_state.search_path,
        "api": api.default_search_path(),
        "web": app.state.search_path,
        "airflow": airflow._CredpathBackendMixin(config=str(file)).search_path,
    }


def _facts(path: Any) -> tuple[Any, ...]:
    shared = path.shared
    return (
        path.breaker_settings,
        path.cache.settings,
        None if shared is None else (shared.description, shared.lease),
        [e.name for e in path.entries],
    )


def test_cli_api_web_and_airflow_build_the_same_breaker_cache_and_shared_tier(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fastapi")
    file = _write(home, BREAKER_AND_CACHE.format(key=FERNET_KEY))
    paths = _four_search_paths(file, monkeypatch)
    try:
        facts = {name: _facts(path) for name, path in paths.items()}
        breaker = facts["cli"][0]
        assert (breaker.failures, breaker.cool_down) == (1, 7.0)
        assert facts["cli"][1].ttl == 42.0 and facts["cli"][2][1] == 2.5
        assert facts["api"] == facts["cli"]
        assert facts["web"] == facts["cli"]
        assert facts["airflow"] == facts["cli"]  # was 3 failures / 1 s: the drop-in's own builder
    finally:
        from credpath import airflow, api

        api.set_default_search_path(None)
        airflow.reset()


# --- numbers: non-finite and out-of-range values are refused, naming the setting and its line -----------

NUMBER_SETTINGS = [
    ("circuit_breaker", "cool_down"),
    ("circuit_breaker", "max_cool_down"),
    ("circuit_breaker", "failures"),
    ("cache", "ttl"),
    ("cache", "miss_ttl"),
    ("cache", "stale_if_error"),
    ("cache", "shared_lease"),
    ("cache", "jitter"),
    ("cache", "max_size"),
]


@pytest.mark.parametrize(("table", "key"), NUMBER_SETTINGS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300"])
def test_number_settings_refuse_non_finite_and_out_of_range_values(
    home: Path, table: str, key: str, value: str
) -> None:
    from credpath._settings import load_settings

    _write(home, f"# a comment\n[{table}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(env={"CREDPATH_HOME": str(home)})
    message = str(info.value)
    assert message.startswith(f"credpath.toml:3 [{table}]: {key} must be "), message
    assert "\n" not in message


@pytest.mark.parametrize(("table", "key"), NUMBER_SETTINGS)
def test_a_bad_number_exits_2_from_the_cli_in_one_line(home: Path, table: str, key: str) -> None:
    from credpath.cli import cli

    _write(home, f"[{table}]\n{key} = nan\n")
    result = CliRunner().invoke(cli, ["connections", "get", "x"], env={"CREDPATH_HOME": str(home)})
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1
    assert f"{key} must be" in result.stderr and "credpath.toml:2" in result.stderr


def test_numbers_keep_their_valid_range(home: Path) -> None:
    from credpath._settings import load_settings

    _write(
        home,
        "[cache]\nttl = 0\njitter = 1\nstale_if_error = 31536000\n[circuit_breaker]\ncool_down = 0.001\n",
    )
    s = load_settings(env={"CREDPATH_HOME": str(home)})
    assert (s.cache.ttl, s.cache.jitter, s.cache.stale_if_error, s.breaker.cool_down) == (
        0.0,
        1.0,
        YEAR,
        0.001,
    )


def test_check_number_names_the_rule_never_the_value() -> None:
    from credpath._settings import PAUSE, check_number

    with pytest.raises(ConfigError, match=r"^x: cool_down must be a number > 0 and <= 86400 \(seconds\)$"):
        check_number(math.nan, PAUSE, "x: cool_down")
    with pytest.raises(ConfigError) as info:
        check_number("pw-s3cr3t", PAUSE, "cool_down")
    assert "s3cr3t" not in str(info.value)


YEAR = 365 * 86400.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout": math.nan}, "timeout must be a number > 0 and <= 3600 (seconds)"),
        ({"timeout": math.inf}, "timeout must be a number > 0"),
        ({"timeout": 0}, "timeout must be a number > 0"),
        ({"radius_port": 70000}, "radius_port must be an integer >= 1 and <= 65535"),
        ({"radius_port": True}, "radius_port must be an integer"),
    ],
)
def test_vault_number_kwargs_are_refused_at_construction(kwargs: dict[str, Any], message: str) -> None:
    from credpath.backends.vault import VaultBackend

    with pytest.raises(ConfigError) as info:
        VaultBackend(url="http://127.0.0.1:9", token="t", **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


# --- CREDPATH_CACHE_KEY's errors name the variable, not the file -----------------------------------------


def test_a_bad_cache_key_in_the_environment_blames_the_variable(home: Path) -> None:
    from credpath._settings import load_settings

    _write(home, '[cache]\nshared = "file"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(env={"CREDPATH_HOME": str(home), "CREDPATH_CACHE_KEY": "not-a-key-s3cr3t"})
    message = str(info.value)
    assert message.startswith("CREDPATH_CACHE_KEY: "), message
    assert "credpath.toml" not in message and "s3cr3t" not in message
    # The file's own key setting is still blamed on the file, at its line.
    _write(home, '[cache]\nshared = "file"\nshared_key = "nope"\n')
    with pytest.raises(
        ConfigError, match=r"^credpath.toml:3 \[cache\]: shared_key: key 1 is not a Fernet key"
    ):
        load_settings(env={"CREDPATH_HOME": str(home)})


# --- ids: bad input is a ConfigError (exit 2), never "not found" ------------------------------------------

BAD_IDS = ["", "my conn", " lead", "tab\there", "new\nline", "x" * 251]


@pytest.mark.parametrize("conn_id", BAD_IDS, ids=["empty", "space", "leading", "tab", "newline", "long"])
def test_invalid_connection_ids_exit_2_from_the_cli(home: Path, conn_id: str) -> None:
    from credpath.cli import cli

    _write(home, '[[backends]]\nname = "mem"\ntype = "tests.memory_backend.MemoryBackend"\n')
    result = CliRunner().invoke(cli, ["connections", "get", conn_id], env={"CREDPATH_HOME": str(home)})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("credpath: error: connection id ")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("key", ["", "two words"])
def test_invalid_variable_keys_exit_2_from_the_cli(home: Path, key: str) -> None:
    from credpath.cli import cli

    _write(home, '[[backends]]\nname = "mem"\ntype = "tests.memory_backend.MemoryBackend"\n')
    result = CliRunner().invoke(cli, ["variables", "get", key], env={"CREDPATH_HOME": str(home)})
    assert result.exit_code == 2, result.output
    assert "variable key" in result.stderr
    result = CliRunner().invoke(cli, ["explain", "variable", key], env={"CREDPATH_HOME": str(home)})
    assert result.exit_code == 2, result.output


def test_the_api_refuses_invalid_ids_before_asking_a_store(home: Path) -> None:
    from credpath import api
    from credpath._search_path import SearchPath
    from tests.memory_backend import MemoryBackend

    store = MemoryBackend(connections={"ok": "postgres://h/d"}, variables={"v": "1"})
    api.set_default_search_path(SearchPath([("mem", store)]))
    try:
        for bad in ("", "my conn"):
            with pytest.raises(ConfigError, match="connection id"):
                api.get_connection(bad)
            with pytest.raises(ConfigError, match="variable key"):
                api.get_variable(bad, default=None)
            with pytest.raises(ConfigError, match="config key"):
                api.get_config(bad, default=None)
        # Airflow's own characters stay valid.
        assert api.get_variable("v") == "1"
        for good in ("ok", "aws_default", "a.b-c", "team#1", "path/to:x", "(x)!"):
            from credpath.model import validate_lookup_key

            assert validate_lookup_key("connection", good) == good
    finally:
        api.set_default_search_path(None)


# --- every auth method's required settings are checked at construction -------------------------------------

REQUIRED = {
    "approle": ("role_id",),
    "azure": ("role_id", "azure_tenant_id"),
    "cert": ("cert",),
    "gcp": ("role_id", "gcp_key_path or gcp_keyfile_dict"),
    "github": ("token",),
    "jwt": ("jwt_role", "jwt_token or jwt_token_path"),
    "kubernetes": ("kubernetes_role",),
    "ldap": ("username", "password"),
    "radius": ("username", "password"),
    "userpass": ("username", "password"),
}


@pytest.mark.parametrize("auth_type", sorted(REQUIRED))
def test_each_auth_method_refuses_missing_settings_at_construction(auth_type: str) -> None:
    from credpath.backends.vault import VaultBackend
    from credpath.backends.vault.auth import AUTH_METHODS

    assert set(AUTH_METHODS) == {*REQUIRED, "token", "aws_iam"}
    url = "http://127.0.0.1:9"  # nothing listens: a construction that tried to log in would fail otherwise
    for missing in REQUIRED[auth_type]:
        given = {name: "x" for name in REQUIRED[auth_type] if name != missing and " or " not in name}
        if missing != REQUIRED[auth_type][0] and " or " in REQUIRED[auth_type][0]:
            given[REQUIRED[auth_type][0].split(" or ")[0]] = "x"
        with pytest.raises(ConfigError, match=f"auth_type '{auth_type}' needs {missing}$"):
            VaultBackend(url=url, auth_type=auth_type, **given)


def test_approle_needs_role_id_at_construction_and_secret_id_is_optional_as_in_airflow() -> None:
    # Airflow's provider refuses an approle config without role_id when it is built, and accepts one
    # without secret_id (a role with bind_secret_id=false): neither tries a login at construction.
    from credpath.backends.vault import VaultBackend

    with pytest.raises(ConfigError, match=r"^backend 'vault' .*auth_type 'approle' needs role_id$"):
        VaultBackend(url="http://127.0.0.1:9", auth_type="approle", secret_id="pw-s3cr3t")
    VaultBackend(url="http://127.0.0.1:9", auth_type="approle", role_id="r")


# --- Airflow's backends_order ---------------------------------------------------------------------------


SECRETS, WORKERS = "AIRFLOW__SECRETS__BACKENDS_ORDER", "AIRFLOW__WORKERS__BACKENDS_ORDER"


def _order(home: Path, **env: str) -> Any:
    from credpath._settings import load_settings

    return load_settings(env={"CREDPATH_HOME": str(home), **env})


def test_default_order_is_airflows_and_says_so(home: Path) -> None:
    settings = _order(home)
    assert [s.name for s in settings.backends] == ["env", "metastore"]
    assert settings.order.names == ("env", "metastore")
    assert settings.order.airflow == ("environment_variable", "metastore")
    assert settings.order.source == "Airflow's default order"


def test_secrets_backends_order_reorders_airflows_default_path(home: Path) -> None:
    settings = _order(
        home,
        AIRFLOW__SECRETS__BACKEND="vault",
        AIRFLOW__SECRETS__BACKEND_KWARGS='{"url": "http://127.0.0.1:9"}',
        AIRFLOW__SECRETS__BACKENDS_ORDER=" Environment_Variable, metastore ,custom",
    )
    assert [s.name for s in settings.backends] == ["env", "metastore", "vault"]
    assert settings.order.airflow == ("environment_variable", "metastore", "custom")
    assert settings.order.source == "AIRFLOW__SECRETS__BACKENDS_ORDER"


def test_custom_listed_without_a_custom_backend_is_skipped(home: Path) -> None:
    settings = _order(home, AIRFLOW__SECRETS__BACKENDS_ORDER="metastore,custom,environment_variable")
    assert [s.name for s in settings.backends] == ["metastore", "env"]
    assert settings.order.airflow == ("metastore", "environment_variable")


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        (
            "AIRFLOW__SECRETS__BACKENDS_ORDER",
            "metastore,environment_variable,vault",
            "unknown backend 'vault'",
        ),
        (
            "AIRFLOW__SECRETS__BACKENDS_ORDER",
            "custom,metastore",
            "must list environment_variable and metastore",
        ),
        ("AIRFLOW__SECRETS__BACKENDS_ORDER", "environment_variable", "(missing metastore)"),
        (
            "AIRFLOW__SECRETS__BACKENDS_ORDER",
            "metastore,metastore,environment_variable",
            "listed more than once",
        ),
        ("AIRFLOW__SECRETS__BACKENDS_ORDER", "execution_api,environment_variable", "unknown backend"),
        ("AIRFLOW__WORKERS__BACKENDS_ORDER", "metastore,environment_variable", "unknown backend 'metastore'"),
        ("AIRFLOW__WORKERS__BACKENDS_ORDER", "custom,environment_variable", "(missing execution_api)"),
    ],
)
def test_bad_backends_order_is_one_line_naming_the_setting(
    home: Path, setting: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _order(home, **{setting: value})
    text = str(info.value)
    assert text.startswith(f"{setting}: ") and message in text and "\n" not in text


def test_workers_order_is_read_and_shown(home: Path) -> None:
    settings = _order(home, AIRFLOW__WORKERS__BACKENDS_ORDER="execution_api,environment_variable,custom")
    assert settings.order.workers == ("execution_api", "environment_variable", "custom")


def test_credpath_toml_order_wins_over_airflows_with_a_warning(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(home, '[[backends]]\ntype = "metastore"\n[[backends]]\ntype = "env"\n')
    settings = _order(home, AIRFLOW__SECRETS__BACKENDS_ORDER="environment_variable,metastore")
    assert [s.name for s in settings.backends] == ["metastore", "env"]
    assert settings.order.source == "credpath.toml [[backends]]"
    assert "AIRFLOW__SECRETS__BACKENDS_ORDER is ignored" in caplog.text


def test_the_effective_order_is_available_from_a_built_search_path(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credpath._search_path import SearchPath
    from credpath._settings import backends_order, search_path_from_config
    from credpath.cli import cli

    monkeypatch.setenv("AIRFLOW__SECRETS__BACKENDS_ORDER", "metastore,environment_variable")
    path = search_path_from_config()
    order = backends_order(path)
    assert (order.names, order.source) == (("metastore", "env"), "AIRFLOW__SECRETS__BACKENDS_ORDER")
    assert backends_order(SearchPath()).source == "built in code"
    result = CliRunner().invoke(cli, ["backends", "list"])
    assert result.exit_code == 0, result.output
    assert "order: metastore, env (from AIRFLOW__SECRETS__BACKENDS_ORDER)" in result.stdout
    result = CliRunner().invoke(cli, ["backends", "list", "--json"])
    assert [row["name"] for row in __import__("json").loads(result.stdout)] == ["metastore", "env"]


@pytest.mark.parametrize(
    ("type_name", "kwargs"),
    [
        ("kubernetes-secrets", {"namespace": "ns"}),
        ("aws-secrets-manager", {}),
        ("azure-key-vault", {"vault_url": "https://kv.vault.azure.net"}),
        ("gcp-secret-manager", {"project_id": "p"}),
    ],
)
@pytest.mark.parametrize("timeout", [math.nan, math.inf, 0, 1e9])
def test_store_timeouts_refuse_non_finite_and_out_of_range(
    type_name: str, kwargs: dict[str, Any], timeout: float
) -> None:
    from credpath.registry import create_backend

    with pytest.raises(ConfigError, match=r"timeout must be a number > 0 and <= 3600 \(seconds\)"):
        create_backend(type_name, {**kwargs, "timeout": timeout})


def test_shared_tier_is_resolved_once_and_handed_to_the_search_path(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import credpath._shared_cache as shared_cache
    from credpath._cache import CacheSettings
    from credpath._search_path import SearchPath
    from credpath._settings import Settings, load_settings, search_path_from_config

    _write(home, BREAKER_AND_CACHE.format(key=FERNET_KEY))
    settings = load_settings()
    assert settings.shared is not None and settings.shared.keys == (FERNET_KEY.encode(),)
    assert not hasattr(settings.cache, "shared_keys")
    calls: list[str] = []
    real = shared_cache.resolve_keys
    monkeypatch.setattr(shared_cache, "resolve_keys", lambda *a, **k: calls.append("keys") or real(*a, **k))
    path = search_path_from_config()
    assert path.shared is not None and path.shared.lease == 2.5
    assert calls == ["keys"]  # once, at load: building the path resolves nothing again
    # Settings built in code with only CacheSettings.shared still get their tier (resolved as config does).
    coded = SearchPath.from_settings(
        Settings(backends=(), cache=CacheSettings(shared=f"file:{home / 'coded.db'}"))
    )
    assert coded.shared is not None
    off = SearchPath.from_settings(
        Settings(backends=(), cache=CacheSettings(enabled=False), shared=settings.shared)
    )
    assert off.shared is None  # a disabled cache has no shared tier either


_PRINT_DROP_IN = """
import json
from airflow.configuration import ensure_secrets_loaded
(backend,) = [b for b in ensure_secrets_loaded() if type(b).__name__ == "CredpathBackend"]
path = backend.search_path
b, c = path.breaker_settings, path.cache.settings
print(json.dumps([b.failures, b.cool_down, c.ttl, path.shared.lease, [e.name for e in path.entries]]))
"""


@pytest.mark.airflow
def test_inside_airflow_the_drop_in_keeps_the_files_breaker_and_cache(
    home: Path, airflow_venv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import subprocess

    from tests.servers.airflow_env import clean_environment

    file = _write(home, BREAKER_AND_CACHE.format(key=FERNET_KEY))
    airflow_home = home / "airflow"
    airflow_home.mkdir()
    env = {
        **clean_environment(airflow_home, airflow_venv),
        "CREDPATH_HOME": str(home),
        "AIRFLOW__SECRETS__BACKEND": "credpath.airflow.CredpathBackend",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps({"config": str(file)}),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),  # tests.memory_backend
    }
    result = subprocess.run(
        [str(airflow_venv / "bin" / "python"), "-c", _PRINT_DROP_IN],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got == [1, 7.0, 42.0, 2.5, ["mem"]]  # Airflow's process: the file's settings, as the CLI's
    from credpath.cli import State

    cli = State(file).search_path
    assert [cli.breaker_settings.failures, cli.breaker_settings.cool_down] == got[:2]
