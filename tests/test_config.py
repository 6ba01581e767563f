from __future__ import annotations

import pytest

from credpath._settings import load_settings
from credpath.errors import ConfigError
from credpath.registry import create_backend, resolve_type


def settings(tmp_path, toml: str | None = None, **env):
    environ = {"CREDPATH_HOME": str(tmp_path), **env}
    if toml is not None:
        (tmp_path / "credpath.toml").write_text(toml)
    return load_settings(env=environ)


def test_default_is_airflow_order(tmp_path):
    specs = settings(tmp_path).backends
    assert [(s.name, s.type) for s in specs] == [("env", "env"), ("metastore", "metastore")]


def test_airflow_custom_backend_comes_first_with_kwargs_and_overrides(tmp_path):
    specs = settings(
        tmp_path,
        AIRFLOW__SECRETS__BACKEND="airflow.providers.hashicorp.secrets.vault.VaultBackend",
        AIRFLOW__SECRETS__BACKEND_KWARGS='{"url": "http://127.0.0.1:8200", "kv_engine_version": 2}',
        AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN="12345",
        AIRFLOW__SECRETS__BACKEND_KWARG__KV_ENGINE_VERSION="1",
        AIRFLOW__SECRETS__BACKEND_KWARG__CONNECTIONS_PATH="null",
    ).backends
    assert [s.type for s in specs] == ["vault", "env", "metastore"]
    assert specs[0].kwargs == {
        "url": "http://127.0.0.1:8200",
        "kv_engine_version": 1,
        "token": "12345",  # secrets stay strings
        "connections_path": None,
    }


def test_invalid_kwargs_json_names_setting_and_position_not_value(tmp_path):
    with pytest.raises(ConfigError) as info:
        settings(
            tmp_path,
            AIRFLOW__SECRETS__BACKEND="vault",
            AIRFLOW__SECRETS__BACKEND_KWARGS='{"token": "tok-s3cr3t", }',
        )
    message = str(info.value)
    assert "AIRFLOW__SECRETS__BACKEND_KWARGS" in message and "column" in message
    assert "s3cr3t" not in message
    assert "\n" not in message


def test_kwargs_without_backend_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="AIRFLOW__SECRETS__BACKEND is not"):
        settings(tmp_path, AIRFLOW__SECRETS__BACKEND_KWARGS="{}")


def test_unknown_class_path(tmp_path):
    with pytest.raises(ConfigError, match="AIRFLOW__SECRETS__BACKEND: unknown backend type 'nosuch'"):
        settings(tmp_path, AIRFLOW__SECRETS__BACKEND="nosuch")
    with pytest.raises(ConfigError, match=r"cannot import 'no\.such\.Backend'"):
        create_backend("no.such.Backend", {}, setting="AIRFLOW__SECRETS__BACKEND")


def test_unknown_kwarg_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown kwarg\(s\) bogus for backend credpath.backends.env"):
        create_backend("env", {"bogus": 1})


def test_roll_your_own_class_by_dotted_path(tmp_path):
    backend = create_backend("tests.memory_backend.MemoryBackend", {"variables": {"k": "v"}})
    assert backend.get_variable("k") == "v"


def test_config_file_any_order_patterns_and_cache(tmp_path):
    s = settings(
        tmp_path,
        """
        [cache]
        ttl = 10
        miss_ttl = 0
        max_size = 5

        [[backends]]
        name = "mem"
        type = "tests.memory_backend.MemoryBackend"
        kwargs = { variables = { k = "v" } }
        variables_lookup_pattern = "^k"
        on_error = "fail"

        [[backends]]
        type = "env"
        """,
    )
    assert [(b.name, b.type) for b in s.backends] == [
        ("mem", "tests.memory_backend.MemoryBackend"),
        ("env", "env"),
    ]
    assert s.backends[0].lookup_patterns == {"variable": "^k"}
    assert s.backends[0].on_error == "fail"
    assert (s.cache.ttl, s.cache.miss_ttl, s.cache.max_size) == (10.0, 0.0, 5)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[[backends]]\nname = 'x'\n", "missing 'type'"),
        ("[[backends]]\ntype = 'env'\nbogus = 1\n", "unknown key"),
        ("[[backends]]\ntype = 'env'\non_error = 'ignore'\n", "on_error must be one of skip, fail"),
        ("[[backends]]\ntype = 'env'\n[[backends]]\ntype = 'env'\n", "duplicate backend name 'env'"),
        ("[cache]\nttl = -1\n", "ttl must be a number"),
        ("backends = [\n", "invalid TOML"),
        ("[unknown]\n", "unknown top-level key"),
    ],
)
def test_bad_config_file_messages(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message) as info:
        settings(tmp_path, toml)
    assert "\n" not in str(info.value)


def test_credpath_config_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="CREDPATH_CONFIG"):
        load_settings(env={"CREDPATH_CONFIG": str(tmp_path / "missing.toml")})


def test_provider_class_paths_map_to_credpath():
    assert resolve_type("airflow.providers.amazon.aws.secrets.secrets_manager.SecretsManagerBackend")[0] == (
        "aws-secrets-manager"
    )
    assert resolve_type("airflow.providers.google.cloud.secrets.secret_manager.CloudSecretManagerBackend")[
        0
    ] == ("gcp-secret-manager")


def test_typed_options_of_a_store_are_accepted_and_others_named():
    # aws-ssm declares **options: Unpack[AwsOptions]: its session settings pass, anything else is named.
    backend = create_backend("aws-ssm", {"region_name": "eu-west-1", "connections_lookup_pattern": "^db"})
    assert backend.aws.region_name == "eu-west-1"
    with pytest.raises(ConfigError, match=r"unknown kwarg\(s\) region for backend credpath.backends.aws_ssm"):
        create_backend("aws-ssm", {"region": "eu-west-1"})


def test_stale_if_error_and_circuit_breaker_settings(tmp_path):
    s = settings(
        tmp_path,
        """
        [cache]
        stale_if_error = 600

        [circuit_breaker]
        failures = 5
        cool_down = 2
        max_cool_down = 60
        """,
    )
    assert s.cache.stale_if_error == 600.0
    assert (s.breaker.enabled, s.breaker.failures, s.breaker.cool_down, s.breaker.max_cool_down) == (
        True,
        5,
        2.0,
        60.0,
    )
    defaults = settings(tmp_path, "")
    assert defaults.cache.stale_if_error == 3600.0  # the documented default
    assert (defaults.breaker.failures, defaults.breaker.cool_down, defaults.breaker.max_cool_down) == (
        3,
        1.0,
        30.0,
    )
    from credpath._search_path import SearchPath

    sp = SearchPath.from_settings(s)
    assert sp.breaker_settings.failures == 5


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[cache]\nstale_if_error = -1\n", r"\[cache\]: stale_if_error must be a number >= 0"),
        ("[cache]\nstale_if_error = 'long'\n", "stale_if_error must be a number"),
        ("[circuit_breaker]\nfailures = 0\n", r"\[circuit_breaker\]: failures must be an integer >= 1"),
        ("[circuit_breaker]\ncool_down = 0\n", "cool_down must be a number > 0"),
        ("[circuit_breaker]\ncool_down = 10\nmax_cool_down = 5\n", "max_cool_down must be >= cool_down"),
        ("[circuit_breaker]\nenabled = 'yes'\n", "enabled must be true or false"),
        ("[circuit_breaker]\nthreshold = 3\n", "unknown key"),
    ],
)
def test_bad_resilience_settings_name_the_setting(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message) as info:
        settings(tmp_path, toml)
    assert "\n" not in str(info.value)


# --- the config file's own paths and type errors -------------------------------------------


def test_credpath_config_pointing_at_a_real_file_loads_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "credpath.toml").write_text("[[backends]]\ntype = 'metastore'\n")  # must NOT be read
    other = tmp_path / "elsewhere.toml"
    other.write_text("[cache]\nttl = 7\n\n[[backends]]\nname = 'mine'\ntype = 'env'\n")
    s = load_settings(env={"CREDPATH_HOME": str(home), "CREDPATH_CONFIG": str(other)})
    assert s.config_file == other
    assert [(b.name, b.type, b.origin) for b in s.backends] == [("mine", "env", "elsewhere.toml backends[0]")]
    assert s.cache.ttl == 7.0


def test_default_file_in_credpath_home_and_none_without_it(tmp_path):
    from pathlib import Path

    from credpath._settings import config_path, credpath_home

    assert config_path({"CREDPATH_HOME": str(tmp_path)}) is None
    assert load_settings(env={"CREDPATH_HOME": str(tmp_path)}).config_file is None
    (tmp_path / "credpath.toml").write_text("")
    assert config_path({"CREDPATH_HOME": str(tmp_path)}) == tmp_path / "credpath.toml"
    assert credpath_home({}) == Path.home() / ".credpath"
    assert credpath_home({"CREDPATH_HOME": ""}) == Path.home() / ".credpath"


def test_credpath_config_pointing_at_a_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"CREDPATH_CONFIG points to .* which is not a file"):
        load_settings(env={"CREDPATH_CONFIG": str(tmp_path)})


def test_an_unreadable_config_path_is_a_one_line_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_settings(path=tmp_path)  # a directory: read_text fails with an OSError
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(path=tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[cache]\nbogus = 1\nttl = 3\n",
            r"^credpath.toml:2 \[cache\]: unknown key\(s\) bogus; expected enabled, ",
        ),
        ("[cache]\nenabled = 'no'\n", r"\[cache\]: enabled must be true or false"),
        ("[cache]\nenabled = 0\n", "enabled must be true or false"),
        ("[cache]\nttl = true\n", "ttl must be a number >= 0"),
        ("[cache]\nmiss_ttl = 'x'\n", "miss_ttl must be a number >= 0"),
        ("[cache]\njitter = -0.1\n", "jitter must be a number >= 0"),
        ("[cache]\nstale_if_error = -1\n", "stale_if_error must be a number >= 0"),
        ("[cache]\nmax_size = 0\n", "max_size must be an integer >= 1"),
        ("[cache]\nmax_size = 1.5\n", "max_size must be an integer >= 1"),
        ("[cache]\nmax_size = true\n", "max_size must be an integer >= 1"),
        ("cache = 3\n", r"\[cache\] must be a table"),
        ("backends = 3\n", "'backends' must be a list of tables"),
        ("backends = [1]\n", r"backends\[0\] must be a table"),
        ("[[backends]]\ntype = 'env'\nkwargs = 'x'\n", r"backends\[0\]: 'kwargs' must be a table"),
        ("[[backends]]\ntype = 'env'\nname = 5\n", r"backends\[0\]: 'name' must be a string"),
        (
            "[[backends]]\ntype = 'env'\nconnections_lookup_pattern = 5\n",
            "connections_lookup_pattern must be a string",
        ),
        (
            "[[backends]]\ntype = 'env'\nvariables_lookup_pattern = ['a']\n",
            "variables_lookup_pattern must be",
        ),
        ("[[backends]]\ntype = 'env'\nconfig_lookup_pattern = true\n", "config_lookup_pattern must be"),
        ("[circuit_breaker]\nbogus = 1\n", r"\[circuit_breaker\]: unknown key"),
    ],
)
def test_bad_types_in_the_config_file_name_the_setting(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message) as info:
        settings(tmp_path, toml)
    assert "\n" not in str(info.value)


def test_cache_enabled_false_and_valid_edges(tmp_path):
    s = settings(
        tmp_path, "[cache]\nenabled = false\nttl = 0\nmax_size = 1\njitter = 0\nstale_if_error = 0\n"
    )
    assert (s.cache.enabled, s.cache.ttl, s.cache.max_size, s.cache.jitter, s.cache.stale_if_error) == (
        False,
        0.0,
        1,
        0.0,
        0.0,
    )
    assert isinstance(s.cache.ttl, float)
    assert settings(tmp_path, "[cache]\nenabled = true\n").cache.enabled is True
    from credpath._cache import CacheSettings

    assert settings(tmp_path, "[cache]\n").cache == CacheSettings()


def test_backend_entry_defaults_and_all_three_patterns(tmp_path):
    s = settings(
        tmp_path,
        """
        [[backends]]
        type = "env"
        connections_lookup_pattern = "^c"
        variables_lookup_pattern = "^v"
        config_lookup_pattern = "^x"
        kwargs = { a = 1 }
        """,
    )
    (spec,) = s.backends
    assert (spec.name, spec.on_error) == ("env", "skip")
    assert spec.lookup_patterns == {"connection": "^c", "variable": "^v", "config": "^x"}
    assert spec.kwargs == {"a": 1}
    named = settings(tmp_path, "[[backends]]\ntype = 'tests.memory_backend.MemoryBackend'\n").backends[0]
    assert named.name == "MemoryBackend"  # the class name of a dotted path


def test_backend_kwarg_variables_decode_literals_but_keep_secrets_strings(tmp_path):
    from credpath._settings import airflow_backend_kwargs

    got = airflow_backend_kwargs(
        {
            "AIRFLOW__SECRETS__BACKEND_KWARG__KV_ENGINE_VERSION": "1",
            "AIRFLOW__SECRETS__BACKEND_KWARG__CONNECTIONS_PATH": "null",
            "AIRFLOW__SECRETS__BACKEND_KWARG__TOKEN": "12345",
            "AIRFLOW__SECRETS__BACKEND_KWARG__URL": "http://x",
            "AIRFLOW__SECRETS__BACKEND_KWARG__QUOTED": '"7"',
            "AIRFLOW__SECRETS__BACKEND_KWARG__": "ignored",
            "AIRFLOW__SECRETS__BACKEND_KWARGS": '{"kv_engine_version": 2, "mount_point": "m"}',
        }
    )
    assert got == {
        "kv_engine_version": 1,
        "mount_point": "m",
        "connections_path": None,
        "token": "12345",
        "url": "http://x",
        "quoted": '"7"',
    }
    with pytest.raises(ConfigError, match="must be a JSON object, got list"):
        airflow_backend_kwargs({"AIRFLOW__SECRETS__BACKEND_KWARGS": "[1]"})
    assert airflow_backend_kwargs({"AIRFLOW__SECRETS__BACKEND_KWARGS": "  "}) == {}


def test_kinds_from_patterns_and_default_name():
    from credpath._settings import default_name, kinds_from_patterns

    assert kinds_from_patterns({"connection": "^a"}) == {"connection": "^a", "variable": None, "config": None}
    assert default_name("a.b.Cls") == "Cls" and default_name("vault") == "vault"
    assert default_name("a.b.c.Cls") == "Cls"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[circuit_breaker]\nfailures = 1.5\n", "failures must be an integer >= 1"),
        ("[circuit_breaker]\nfailures = true\n", "failures must be an integer >= 1"),
        ("[circuit_breaker]\nfailures = 0\n", "failures must be an integer >= 1"),
        ("[circuit_breaker]\ncool_down = 0\n", "cool_down must be a number > 0"),
        ("[circuit_breaker]\nmax_cool_down = false\n", "max_cool_down must be a number > 0"),
        ("[circuit_breaker]\ncool_down = true\n", "cool_down must be a number > 0"),
        ("[circuit_breaker]\nenabled = 'yes'\n", "enabled must be true or false"),
    ],
)
def test_breaker_type_errors(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=message):
        settings(tmp_path, toml)


def test_breaker_smallest_valid_values(tmp_path):
    b = settings(tmp_path, "[circuit_breaker]\nfailures = 1\ncool_down = 0.5\nmax_cool_down = 0.5\n").breaker
    assert (b.failures, b.cool_down, b.max_cool_down) == (1, 0.5, 0.5)


# --- [cache] shared tier settings, at the unit level (parse_cache; no store is opened) ---

FERNET_KEY = "x" * 43 + "="  # 32 url-safe base64 bytes: a valid Fernet key's shape


def test_shared_lease_is_a_positive_number(tmp_path):
    from credpath._settings import parse_cache

    env = {"CREDPATH_HOME": str(tmp_path)}
    assert parse_cache({"shared_lease": 1}, "o", env).shared_lease == 1.0
    assert isinstance(parse_cache({"shared_lease": 1}, "o", env).shared_lease, float)
    assert parse_cache({"shared_lease": 0.25}, "o", env).shared_lease == 0.25
    for bad in (0, -1, True, "5"):
        with pytest.raises(
            ConfigError, match=r"^o: shared_lease must be a number > 0 and <= 86400 \(seconds\)"
        ):
            parse_cache({"shared_lease": bad}, "o", env)


def test_shared_off_values_and_bad_types(tmp_path):
    from credpath._settings import parse_cache

    env = {"CREDPATH_HOME": str(tmp_path)}
    for off in (None, False, "", "off", " None ", "FALSE"):
        raw = {} if off is None else {"shared": off}
        assert parse_cache(raw, "o", env).shared is None
    for bad in (True, 5, ["file"]):
        with pytest.raises(ConfigError, match=r"^o: shared must be 'file', 'file:PATH', or a redis://"):
            parse_cache({"shared": bad}, "o", env)
    with pytest.raises(
        ConfigError, match=r"^o: shared_key must be a string \(Fernet keys, comma-separated\)$"
    ):
        parse_cache({"shared": "file", "shared_key": 5}, "o", env)


def test_shared_file_tier_and_keys(tmp_path):
    from credpath._settings import parse_cache, parse_shared

    env = {"CREDPATH_HOME": str(tmp_path)}
    cache = parse_cache({"shared": "file", "shared_key": FERNET_KEY}, "o", env)
    assert cache.shared == f"file:{tmp_path / 'cache' / 'shared-cache.db'}"
    shared = parse_shared({"shared": "file", "shared_key": FERNET_KEY, "shared_lease": 2}, "o", env)
    assert shared is not None and shared.url == cache.shared
    assert (shared.keys, shared.lease) == ((FERNET_KEY.encode(),), 2.0)
    node = parse_shared({"shared": "file"}, "o", env)  # no key configured: the node key file
    assert node is not None and len(node.keys) == 1 and (tmp_path / "cache.key").is_file()
    with pytest.raises(ConfigError, match=r"^o: shared 'file:' needs a path"):
        parse_cache({"shared": "file:"}, "o", env)
    with pytest.raises(ConfigError, match=r"^o: shared_key: key 1 is not a Fernet key"):
        parse_cache({"shared": "file", "shared_key": "nope"}, "o", env)


def test_shared_tier_from_the_environment_wins(tmp_path, monkeypatch):
    from credpath._settings import parse_cache

    env = {"CREDPATH_HOME": str(tmp_path), "CREDPATH_CACHE_SHARED": f"file:{tmp_path}/env.db"}
    assert parse_cache({"shared": "file"}, "o", env).shared == f"file:{tmp_path}/env.db"
    assert parse_cache({"shared": "file"}, "o", {**env, "CREDPATH_CACHE_SHARED": "off"}).shared is None
    with pytest.raises(ConfigError, match=r"^CREDPATH_CACHE_SHARED 'file:' needs a path"):
        parse_cache({}, "o", {**env, "CREDPATH_CACHE_SHARED": "file:"})
    # env=None reads the process environment; an env given is the only one read.
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path))
    monkeypatch.setenv("CREDPATH_CACHE_SHARED", f"file:{tmp_path}/process.db")
    monkeypatch.delenv("CREDPATH_CACHE_KEY", raising=False)
    monkeypatch.delenv("CREDPATH_FERNET_KEY", raising=False)
    assert parse_cache({}, "o").shared == f"file:{tmp_path}/process.db"
    assert parse_cache({}, "o", {"CREDPATH_HOME": str(tmp_path)}).shared is None


def test_shared_redis_without_redis_py_stays_a_missing_dependency(tmp_path, monkeypatch):
    import importlib.util

    from credpath._settings import _dependency, parse_cache
    from credpath.errors import MissingDependency

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependency, match=r"^o: shared needs redis-py") as info:
        parse_cache({"shared": "redis://h:6379/0", "shared_key": FERNET_KEY}, "o", {})
    assert info.value.module == "redis"
    assert _dependency(ConfigError("x")) == {}
    assert _dependency(info.value) == {"module": "redis"}
