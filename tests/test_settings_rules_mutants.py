"""The settings builder's rules, pinned where a full mutation run of credpath._settings found them loose:
each number rule's exact range and wording, the edges of the one number check, the records' defaults,
the line an error names in credpath.toml, and which source a setting is read from."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pytest

from credpath import _settings
from credpath._cache import CacheSettings
from credpath._resilience import BreakerSettings
from credpath.errors import ConfigError

SECRET = "pw-s3cr3t"
FERNET_KEY = "x" * 43 + "="  # 32 url-safe base64 bytes: a valid Fernet key's shape


# --- the number rules: their ranges, as every message states them ------------------------------------


@pytest.mark.parametrize(
    ("rule", "text"),
    [
        (_settings.SECONDS, "a number >= 0 and <= 31536000 (seconds)"),
        (_settings.PAUSE, "a number > 0 and <= 86400 (seconds)"),
        (_settings.TIMEOUT, "a number > 0 and <= 3600 (seconds)"),
        (_settings.FRACTION, "a number >= 0 and <= 1"),
        (_settings.COUNT, "an integer >= 1 and <= 1000000000"),
        (_settings.RETRIES, "an integer >= 0 and <= 100"),
        (_settings.PORT, "an integer >= 1 and <= 65535"),
        (_settings.Number(0.5, 2.25), "a number >= 0.5 and <= 2.25"),
    ],
)
def test_each_number_rule_states_its_range(rule: _settings.Number, text: str) -> None:
    assert rule.describe() == text


@pytest.mark.parametrize(
    ("rule", "inside", "outside"),
    [
        (_settings.SECONDS, [0, 0.0, 365 * 86400.0], [-0.001, 365 * 86400.0 + 1]),
        (_settings.PAUSE, [0.001, 86400], [0, 0.0, 86400.5]),
        (_settings.TIMEOUT, [1e-9, 3600], [0, 3600.001]),
        (_settings.FRACTION, [0, 0.5, 1], [-0.01, 1.01]),
        (_settings.COUNT, [1, 1_000_000_000], [0, 1_000_000_001, 2.0]),
        (_settings.RETRIES, [0, 100], [-1, 101, 1.0]),
        (_settings.PORT, [1, 65_535], [0, 65_536]),
    ],
)
def test_each_number_rule_holds_at_its_edges(
    rule: _settings.Number, inside: list[float], outside: list[float]
) -> None:
    for value in inside:
        got = _settings.check_number(value, rule, "s")
        assert got == value
        assert type(got) is (int if rule.integer else float)
    for value in outside:
        with pytest.raises(ConfigError) as info:
            _settings.check_number(value, rule, "s")
        assert str(info.value) == f"s must be {rule.describe()}"


NOT_NUMBERS = [True, False, SECRET, None, [1], math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NOT_NUMBERS, ids=[f"value{i}" for i in range(len(NOT_NUMBERS))])
def test_the_number_check_refuses_what_is_not_a_finite_number(value: Any) -> None:
    for rule in (_settings.SECONDS, _settings.COUNT, _settings.FRACTION):
        with pytest.raises(ConfigError) as info:
            _settings.check_number(value, rule, "[cache]: ttl")
        assert str(info.value) == f"[cache]: ttl must be {rule.describe()}"
        assert "s3cr3t" not in str(info.value)


def test_the_number_check_raises_the_callers_error() -> None:
    class StoreError(ConfigError):
        pass

    def fail(message: str) -> ConfigError:
        return StoreError(f"backend 'x': {message}")

    with pytest.raises(StoreError, match=r"^backend 'x': timeout must be a number > 0"):
        _settings.check_number(0, _settings.TIMEOUT, "timeout", fail)
    assert _settings.check_number(2, _settings.TIMEOUT, "timeout", fail) == 2.0


def test_the_bool_check_takes_only_booleans() -> None:
    assert _settings.check_bool(True, "s") is True
    assert _settings.check_bool(False, "s") is False
    for value in (0, 1, "true", None, SECRET):
        with pytest.raises(ConfigError, match=r"^s must be true or false$") as info:
            _settings.check_bool(value, "s")
        assert "s3cr3t" not in str(info.value)


# --- the records' defaults --------------------------------------------------------------------------


def test_the_records_defaults() -> None:
    spec = _settings.BackendSpec(type="env")
    assert (spec.name, spec.kwargs, spec.lookup_patterns, spec.on_error, spec.origin) == (
        "",
        {},
        {},
        "skip",
        "",
    )
    given = _settings.BackendSpec(type="env", kwargs={"a": 1}, lookup_patterns={"variable": "^v"})
    assert (given.kwargs, given.lookup_patterns) == ({"a": 1}, {"variable": "^v"})
    assert _settings.SharedTierSettings(url="file:/x", keys=()).lease == 5.0
    order = _settings.BackendsOrder(("env",), "here")
    assert (order.names, order.source, order.airflow, order.workers) == (("env",), "here", (), ())
    settings = _settings.Settings(backends=())
    assert settings.cache == CacheSettings() and settings.breaker == BreakerSettings()
    assert (settings.config_file, settings.shared, settings.order, settings.audit) == (
        None,
        None,
        None,
        False,
    )
    cache, breaker = CacheSettings(ttl=7), BreakerSettings(failures=9)
    coded = _settings.Settings(backends=(), cache=cache, breaker=breaker)
    assert (coded.cache, coded.breaker) == (cache, breaker)


# --- where the config comes from ---------------------------------------------------------------------


def test_the_process_environment_is_read_when_no_env_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("CREDPATH_CONFIG", "AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__SECRETS__BACKENDS_ORDER", "metastore,environment_variable")
    (tmp_path / "credpath.toml").write_text("[cache]\nttl = 9\n")
    assert _settings.credpath_home() == tmp_path
    assert _settings.config_path() == tmp_path / "credpath.toml"
    settings = _settings.load_settings()
    assert settings.cache.ttl == 9.0 and settings.config_file == tmp_path / "credpath.toml"
    assert [s.name for s in _settings.airflow_default_backends()] == ["metastore", "env"]


def test_an_explicit_path_wins_over_the_environments_file(tmp_path: Path) -> None:
    (tmp_path / "credpath.toml").write_text("[cache]\nttl = 1\n")
    other = tmp_path / "other.toml"
    other.write_text("[cache]\nttl = 2\n")
    env = {"CREDPATH_HOME": str(tmp_path), "CREDPATH_CONFIG": str(tmp_path / "credpath.toml")}
    settings = _settings.load_settings(other, env)
    assert (settings.config_file, settings.cache.ttl) == (other, 2.0)
    assert _settings.load_settings(None, env).cache.ttl == 1.0


def test_the_audit_table_is_noted(tmp_path: Path) -> None:
    file = tmp_path / "credpath.toml"
    file.write_text("[audit]\nenabled = false\n")
    assert _settings.load_settings(file, {}).audit is True
    file.write_text("[cache]\nttl = 1\n")
    assert _settings.load_settings(file, {}).audit is False


def test_the_workers_order_is_kept_with_a_files_backends(tmp_path: Path) -> None:
    file = tmp_path / "credpath.toml"
    file.write_text('[[backends]]\ntype = "env"\n')
    env = {"AIRFLOW__WORKERS__BACKENDS_ORDER": "execution_api,environment_variable"}
    order = _settings.load_settings(file, env).order
    assert order is not None
    assert (order.names, order.source, order.airflow) == (("env",), "credpath.toml [[backends]]", ())
    assert order.workers == ("execution_api", "environment_variable")


def test_a_files_backends_warn_of_the_ignored_order_only_when_it_is_set(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "credpath.toml"
    file.write_text('[[backends]]\ntype = "env"\n')
    with caplog.at_level(logging.WARNING, logger="credpath.config"):
        _settings.load_settings(file, {"AIRFLOW__SECRETS__BACKENDS_ORDER": "  "})
    assert "is ignored" not in caplog.text


# --- the line an error names ---------------------------------------------------------------------------


def _error(tmp_path: Path, text: str) -> str:
    file = tmp_path / "credpath.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        _settings.load_settings(file, {})
    return str(info.value)


def test_of_two_unknown_keys_the_first_by_name_is_located(tmp_path: Path) -> None:
    message = _error(tmp_path, "[cache]\nzeta = 1\nalpha = 2\n")
    assert message == (
        "credpath.toml:3 [cache]: unknown key(s) alpha, zeta; expected enabled, invalidate_failed_tasks, "
        "jitter, max_size, miss_ttl, shared, shared_key, shared_lease, stale_if_error, ttl"
    )


def test_keys_of_a_backends_entry_are_not_taken_for_the_table_above(tmp_path: Path) -> None:
    # "sub" is set on line 3 in backends[0]; [cache]'s own "sub" is a sub-table: the header's line.
    message = _error(tmp_path, '[cache]\n[[backends]]\nsub = 1\ntype = "env"\n[cache.sub]\n')
    assert message.startswith("credpath.toml:1 [cache]: unknown key(s) sub;"), message


def test_a_key_without_its_own_line_is_located_at_its_tables_header(tmp_path: Path) -> None:
    message = _error(tmp_path, "# top\n\n[circuit_breaker]\ncool_down = 10\nmax_cool_down = 5\n")
    assert message == "credpath.toml:5 [circuit_breaker]: max_cool_down must be >= cool_down"
    message = _error(tmp_path, "circuit_breaker = { cool_down = 10, max_cool_down = 5 }\n")
    assert message == "credpath.toml [circuit_breaker]: max_cool_down must be >= cool_down"
    message = _error(tmp_path, "[circuit_breaker]  # resilience\ncool_down = 10\n[circuit_breaker.x]\n")
    assert message.startswith("credpath.toml:1 [circuit_breaker]: unknown key(s) x;"), message


def test_the_table_check_is_one_line(tmp_path: Path) -> None:
    assert _error(tmp_path, "circuit_breaker = 3\n") == "credpath.toml [circuit_breaker] must be a table"
    assert _error(tmp_path, "[circuit_breaker]\ncool_down = true\n") == (
        "credpath.toml:2 [circuit_breaker]: cool_down must be a number > 0 and <= 86400 (seconds)"
    )


# --- the breaker and the shared tier ---------------------------------------------------------------


def test_parse_breaker_names_its_origin() -> None:
    breaker = _settings.parse_breaker({"failures": 2, "max_cool_down": 4}, "here")
    assert (breaker.failures, breaker.cool_down, breaker.max_cool_down) == (2, 1.0, 4.0)
    assert _settings.parse_breaker({"cool_down": 3, "max_cool_down": 3}, "here").max_cool_down == 3.0
    with pytest.raises(ConfigError, match=r"^here: max_cool_down must be >= cool_down$"):
        _settings.parse_breaker({"cool_down": 3, "max_cool_down": 2.5}, "here")
    with pytest.raises(ConfigError, match=r"^here: failures must be an integer >= 1"):
        _settings.parse_breaker({"failures": 0}, "here")


def test_the_shared_tiers_lease_defaults_to_the_caches(tmp_path: Path) -> None:
    env = {"CREDPATH_HOME": str(tmp_path)}
    shared = _settings.parse_shared({"shared": "file", "shared_key": FERNET_KEY}, "o", env)
    assert shared is not None and shared.lease == CacheSettings().shared_lease
    cache = _settings.parse_cache({"shared": "file", "shared_key": FERNET_KEY, "ttl": 3}, "o", env)
    assert (cache.ttl, cache.shared_lease) == (3.0, CacheSettings().shared_lease)


def test_an_empty_shared_variable_turns_the_files_tier_off(tmp_path: Path) -> None:
    env = {"CREDPATH_HOME": str(tmp_path), "CREDPATH_CACHE_SHARED": ""}
    raw = {"shared": "file", "shared_key": FERNET_KEY}
    assert _settings.parse_shared(raw, "o", env) is None
    assert _settings.parse_shared(raw, "o", {"CREDPATH_HOME": str(tmp_path)}) is not None


def test_the_shared_tier_is_read_from_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDPATH_HOME", str(tmp_path))
    monkeypatch.delenv("CREDPATH_CACHE_SHARED", raising=False)
    monkeypatch.delenv("CREDPATH_CACHE_KEY", raising=False)
    shared = _settings.parse_shared({"shared": "file", "shared_key": FERNET_KEY}, "o")
    assert shared is not None and shared.url == f"file:{tmp_path / 'cache' / 'shared-cache.db'}"
    assert shared.keys == (FERNET_KEY.encode(),)


def test_a_bad_cache_key_names_the_file_setting_and_never_the_key(tmp_path: Path) -> None:
    env = {"CREDPATH_HOME": str(tmp_path), "CREDPATH_CACHE_KEY": "   "}
    with pytest.raises(ConfigError) as info:
        _settings.parse_shared({"shared": "file", "shared_key": SECRET}, "o", env)
    assert str(info.value).startswith("o: shared_key: ") and "s3cr3t" not in str(info.value)
