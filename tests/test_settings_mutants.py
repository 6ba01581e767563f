"""Settings details no other test pinned: the settings values are frozen, and the warning about a
backends order that leaves out 'custom' is given only when a custom backend is configured."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from credpath import _settings


def test_settings_values_are_frozen() -> None:
    spec = _settings.BackendSpec(type="env", name="env")
    order = _settings.BackendsOrder(("env",), "default")
    for value, field in ((spec, "name"), (order, "source")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(value, field, "other")


def test_a_list_of_backends_given_in_code_is_kept_as_a_tuple() -> None:
    settings = _settings.Settings(backends=[_settings.BackendSpec(type="env", name="env")])  # type: ignore[arg-type]
    assert isinstance(settings.backends, tuple)


ORDER = "AIRFLOW__SECRETS__BACKENDS_ORDER"


@pytest.mark.parametrize(
    ("env", "warned"),
    [
        ({ORDER: "environment_variable,metastore"}, False),  # no custom backend: nothing left out
        ({}, False),  # Airflow's default order has 'custom'
    ],
)
def test_leaving_custom_out_warns_only_with_a_custom_backend(
    env: dict[str, str], warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        _settings.airflow_default_backends(env)
    assert any("leaves out 'custom'" in r.getMessage() for r in caplog.records) is warned
