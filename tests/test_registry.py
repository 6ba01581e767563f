"""The registry: configured names from construction on, kwarg errors named by the kwargs setting."""

from __future__ import annotations

import pytest

from credpath.errors import ConfigError, MissingDependency
from credpath.protocol import BaseBackend
from credpath.registry import create_backend


class _NamedAtInit(BaseBackend):
    alias = "named-at-init"
    store_name = "Test Store"

    def __init__(self, broken: bool = False, **options):
        if broken:
            raise self.config_error("broken must be false")
        super().__init__(**options)

    def get_conn_value(self, conn_id, team_name=None):
        raise self.error("store unreachable")

    def get_variable(self, key, team_name=None):
        return None


class _NeedsMissingClient(_NamedAtInit):
    requires = ("credpath_no_such_client_module",)
    extra = "nosuch"


PATH = f"{__name__}._NamedAtInit"


def test_the_configured_name_is_there_during_construction_and_in_every_message():
    with pytest.raises(ConfigError) as construction:
        create_backend(PATH, {"broken": True}, name="prod-store")
    assert str(construction.value) == "backend 'prod-store' (Test Store): broken must be false"
    backend = create_backend(PATH, {}, name="prod-store")
    assert backend.name == "prod-store" and backend.label == "backend 'prod-store' (Test Store)"
    with pytest.raises(Exception, match=r"^backend 'prod-store' \(Test Store\): store unreachable$") as read:
        backend.get_conn_value("x")
    assert read.value.backend == "prod-store"


def test_without_a_name_the_alias_names_the_backend():
    assert create_backend(PATH, {}).name == "named-at-init"


def test_a_missing_client_is_reported_before_construction_with_its_extra():
    with pytest.raises(MissingDependency) as missing:
        create_backend(f"{__name__}._NeedsMissingClient", {}, name="prod")
    assert (
        str(missing.value)
        == "backend 'prod' needs credpath_no_such_client_module: pip install 'credpath[nosuch]'"
    )
    assert isinstance(missing.value, ConfigError)


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("credpath.toml backends[0] type", "credpath.toml backends[0] kwargs"),
        ("AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS"),
        ("--from", "--from kwargs"),
    ],
)
def test_kwarg_errors_name_the_kwargs_setting_not_the_type(setting, named):
    with pytest.raises(ConfigError) as bad:
        create_backend("env", {"bogus": 1}, setting=setting)
    assert str(bad.value).startswith(f"{named}: unknown kwarg(s) bogus for backend ")
