"""The settings builder's entry points, pinned where a full mutation run of credpath._settings found no
unit test: the Airflow drop-in's settings (``config`` or inline ``backends``), Airflow's default path and
its custom backend, the one builder's per-backend kwargs and shared tier, the audit hook, and the views of
a built search path (its settings, its order). No servers: a dict store and file paths only."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from credpath import _settings
from credpath._cache import CacheSettings
from credpath._search_path import SearchPath
from credpath.errors import ConfigError

ORIGIN = "credpath.airflow.CredpathBackend kwargs"
MEM = "tests.memory_backend.MemoryBackend"
FERNET_KEY = "x" * 43 + "="


def _file(tmp_path: Path, text: str, name: str = "credpath.toml") -> Path:
    file = tmp_path / name
    file.write_text(text)
    return file


# --- the Airflow drop-in's settings -------------------------------------------------------------------


def test_the_drop_in_takes_config_or_backends_not_both(tmp_path: Path) -> None:
    file = _file(tmp_path, f'[[backends]]\ntype = "{MEM}"\n')
    with pytest.raises(ConfigError) as info:
        _settings.load_drop_in_settings(ORIGIN, str(file), [{"type": "env"}], None, {})
    assert str(info.value) == f"{ORIGIN}: give either 'config' or 'backends', not both"


def test_the_drop_ins_inline_backends_and_cache(tmp_path: Path) -> None:
    env = {"CREDPATH_HOME": str(tmp_path)}
    settings = _settings.load_drop_in_settings(ORIGIN, None, [{"type": "env"}, {"type": MEM}], None, env)
    assert [(s.name, s.origin) for s in settings.backends] == [
        ("env", f"{ORIGIN} backends backends[0]"),
        ("MemoryBackend", f"{ORIGIN} backends backends[1]"),
    ]
    assert settings.order is not None
    assert (settings.order.names, settings.order.source) == (("env", "MemoryBackend"), f"{ORIGIN} backends")
    assert (settings.cache, settings.shared, settings.config_file) == (CacheSettings(), None, None)
    cached = _settings.load_drop_in_settings(
        ORIGIN, None, [{"type": "env"}], {"ttl": 5, "shared": "file", "shared_key": FERNET_KEY}, env
    )
    assert cached.cache.ttl == 5.0
    assert cached.shared is not None and cached.shared.url == f"file:{tmp_path / 'cache' / 'shared-cache.db'}"
    with pytest.raises(ConfigError, match=rf"^{ORIGIN} cache: ttl must be a number >= 0"):
        _settings.load_drop_in_settings(ORIGIN, None, [{"type": "env"}], {"ttl": -1}, env)


@pytest.mark.parametrize("config", [5, "", "  ", None])
def test_the_drop_ins_config_must_be_a_path(tmp_path: Path, config: Any) -> None:
    with pytest.raises(ConfigError) as info:
        _settings.load_drop_in_settings(ORIGIN, config, None, None, {"CREDPATH_HOME": str(tmp_path)})
    if config is None:  # nothing given and no default file
        assert str(info.value) == (
            f"{ORIGIN}: needs 'config' (a credpath.toml path) or 'backends' "
            "(and no default credpath.toml was found via CREDPATH_CONFIG or CREDPATH_HOME)"
        )
    else:
        assert str(info.value) == f"{ORIGIN}: 'config' must be the path of a credpath.toml file"


def test_the_drop_ins_config_must_be_a_file(tmp_path: Path) -> None:
    for missing in (tmp_path / "absent.toml", tmp_path):
        with pytest.raises(ConfigError) as info:
            _settings.load_drop_in_settings(ORIGIN, missing, None, None, {})
        assert str(info.value) == f"{ORIGIN}: 'config' points to {str(missing)!r}, which is not a file"


def test_the_drop_ins_config_file_needs_a_backends_list(tmp_path: Path) -> None:
    file = _file(tmp_path, "[cache]\nttl = 3\n")
    with pytest.raises(ConfigError) as info:
        _settings.load_drop_in_settings(ORIGIN, str(file), None, None, {})
    assert str(info.value) == (
        f"{file}: no [[backends]] list; credpath.airflow.CredpathBackend needs the stores to search"
    )


def test_the_drop_in_reads_its_config_file_and_the_kwargs_cache_replaces_the_files(tmp_path: Path) -> None:
    file = _file(
        tmp_path,
        f'[[backends]]\ntype = "{MEM}"\nname = "mem"\n[cache]\nttl = 3\nshared = "file"\n'
        f'shared_key = "{FERNET_KEY}"\n[circuit_breaker]\nfailures = 4\n',
        "drop-in.toml",
    )
    env = {"CREDPATH_HOME": str(tmp_path)}
    settings = _settings.load_drop_in_settings(ORIGIN, file, None, None, env)
    assert (settings.config_file, settings.cache.ttl, settings.breaker.failures) == (file, 3.0, 4)
    assert settings.shared is not None and [s.name for s in settings.backends] == ["mem"]
    replaced = _settings.load_drop_in_settings(ORIGIN, str(file), None, {"ttl": 8}, env)
    assert (replaced.cache.ttl, replaced.shared, replaced.breaker.failures) == (8.0, None, 4)
    with pytest.raises(ConfigError, match=rf"^{ORIGIN} cache: unknown key\(s\) bogus;"):
        _settings.load_drop_in_settings(ORIGIN, str(file), None, {"bogus": 1}, env)


def test_the_drop_in_finds_the_default_file(tmp_path: Path) -> None:
    _file(tmp_path, '[[backends]]\ntype = "env"\n')
    settings = _settings.load_drop_in_settings(ORIGIN, None, None, None, {"CREDPATH_HOME": str(tmp_path)})
    assert settings.config_file == tmp_path / "credpath.toml"
    assert [s.origin for s in settings.backends] == ["credpath.toml backends[0]"]


# --- Airflow's default path ----------------------------------------------------------------------------


def test_leaving_custom_out_of_the_order_warns_when_a_custom_backend_is_set(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "AIRFLOW__SECRETS__BACKEND": "vault",
        "AIRFLOW__SECRETS__BACKEND_KWARGS": '{"url": "http://127.0.0.1:9"}',
        "AIRFLOW__SECRETS__BACKENDS_ORDER": "metastore,environment_variable",
    }
    with caplog.at_level(logging.WARNING, logger="credpath.config"):
        specs = _settings.airflow_default_backends(env)
    assert [s.name for s in specs] == ["metastore", "env"]
    assert (
        "AIRFLOW__SECRETS__BACKENDS_ORDER leaves out 'custom': AIRFLOW__SECRETS__BACKEND is not searched"
        in caplog.text
    )


def test_the_custom_backend_is_first_in_airflows_default_order() -> None:
    env = {
        "AIRFLOW__SECRETS__BACKEND": f" {MEM} ",
        "AIRFLOW__SECRETS__BACKEND_KWARG__VARIABLES": '{"k": "v"}',
    }
    specs = _settings.airflow_default_backends(env)
    assert [(s.type, s.name, s.origin) for s in specs] == [
        (MEM, "MemoryBackend", "AIRFLOW__SECRETS__BACKEND"),
        ("env", "env", "default"),
        ("metastore", "metastore", "default"),
    ]
    assert specs[0].kwargs == {"variables": {"k": "v"}}
    assert _settings.airflow_custom_backend({"AIRFLOW__SECRETS__BACKEND": "  "}) is None


def test_backends_order_is_parsed_as_airflow_does() -> None:
    setting = "AIRFLOW__SECRETS__BACKENDS_ORDER"
    assert _settings.parse_backends_order(" METASTORE,,environment_variable ", setting) == (
        "metastore",
        "environment_variable",
    )
    with pytest.raises(ConfigError) as info:
        _settings.parse_backends_order("metastore,environment_variable,metastore", setting)
    assert str(info.value) == f"{setting}: 'metastore' is listed more than once"


# --- the one builder --------------------------------------------------------------------------------------


def _mem_settings(**kwargs: Any) -> _settings.Settings:
    specs = (
        _settings.BackendSpec(type=MEM, name="mem", kwargs={"variables": {"k": "configured"}}),
        _settings.BackendSpec(type=MEM, name="other", kwargs={"variables": {"o": "other"}}),
    )
    return _settings.Settings(backends=specs, **kwargs)


def test_backend_kwargs_are_laid_over_the_named_backends_configured_kwargs() -> None:
    settings = _mem_settings()
    path = _settings.build_search_path(
        settings, backend_kwargs={"mem": {"connections": {"c": "postgres://h/d"}}}
    )
    mem = path.backend("mem")
    assert (mem.variables, mem.connections) == ({"k": "configured"}, {"c": "postgres://h/d"})  # type: ignore[attr-defined]
    assert path.backend("other").variables == {"o": "other"}  # type: ignore[attr-defined]
    path = _settings.build_search_path(settings, backend_kwargs={"mem": {"variables": {"k": "flag"}}})
    assert path.get_variable("k") == "flag"
    assert settings.backends[0].kwargs == {"variables": {"k": "configured"}}  # the settings are untouched


def test_backend_kwargs_for_an_unknown_backend_are_refused() -> None:
    with pytest.raises(ConfigError) as info:
        _settings.build_search_path(_mem_settings(), backend_kwargs={"zz": {}, "aa": {}, "mem": {}})
    assert str(info.value) == "no backend named 'aa' in the search path (have: mem, other)"


def test_a_shared_tier_given_to_the_builder_wins_over_the_settings(tmp_path: Path) -> None:
    shared = _settings.parse_shared(
        {"shared": "file", "shared_key": FERNET_KEY}, "o", {"CREDPATH_HOME": str(tmp_path)}
    )
    settings = _mem_settings(shared=shared)
    assert _settings.build_search_path(settings).shared is not None
    assert _settings.build_search_path(settings, shared=None).shared is None


def test_the_audit_trail_is_set_up_only_when_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credpath import _audit

    calls: list[tuple[Any, Any]] = []
    monkeypatch.setattr(_audit, "setup", lambda path, env: calls.append((path, env)))
    for name in [k for k in __import__("os").environ if k.startswith("CREDPATH_AUDIT_")]:
        monkeypatch.delenv(name)
    plain = _file(tmp_path, '[[backends]]\ntype = "env"\n', "plain.toml")
    _settings.search_path_from_config(plain, {})
    assert calls == []
    env = {"CREDPATH_AUDIT_ENABLED": "false"}
    _settings.search_path_from_config(plain, env)
    assert calls == [(plain, env)]
    audited = _file(tmp_path, '[audit]\nenabled = false\n[[backends]]\ntype = "env"\n', "audited.toml")
    _settings.search_path_from_config(audited, {})
    assert calls[1:] == [(audited, {})]
    monkeypatch.setenv("CREDPATH_AUDIT_ENABLED", "false")  # no env given: the process's is read
    _settings.search_path_from_config(plain)
    assert calls[2:] == [(plain, None)]


def test_the_views_of_a_built_search_path() -> None:
    settings = _mem_settings()  # built in code: no order
    path = _settings.build_search_path(settings)
    assert _settings.settings_of(path) is settings
    order = _settings.backends_order(path)
    assert (order.names, order.source) == (("mem", "other"), "built in code")
    assert _settings.settings_of(5) is None  # not weak-referenceable: not one of ours
    assert _settings.settings_of(SearchPath()) is None
    ordered = settings.replace(order=_settings.BackendsOrder(("other", "mem"), "somewhere"))
    assert _settings.backends_order(_settings.build_search_path(ordered)).source == "somewhere"


@pytest.mark.parametrize("name", ["false", "0", "[]", "{}", "0.0"])
def test_a_backends_name_that_is_not_a_string_is_refused_even_when_falsy(tmp_path: Path, name: str) -> None:
    file = _file(tmp_path, f'[[backends]]\ntype = "env"\nname = {name}\n')
    with pytest.raises(ConfigError) as info:
        _settings.load_settings(file, {})
    assert str(info.value) == "credpath.toml backends[0]: 'name' must be a string"
    _file(tmp_path, '[[backends]]\ntype = "env"\nname = ""\n')
    assert [s.name for s in _settings.load_settings(file, {}).backends] == ["env"]  # empty: the default
