"""The rotation capabilities ("version_check", "change_events", "rotation_dates") are declared, checked when
a class is defined, and switched on per instance by their setting; the search path asks the declaration,
never whether a method or an attribute happens to exist."""

from __future__ import annotations

from typing import Any

import pytest

from credpath._search_path import SearchPath
from credpath.protocol import CAPABILITIES, CAPABILITY_SETTINGS, check_capabilities, enabled, supports
from tests.memory_backend import MemoryBackend


class Watching(MemoryBackend):
    """A complete "change_events" store: it records who subscribed."""

    capabilities = MemoryBackend.capabilities | {"change_events"}

    def __init__(self, watch: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.watch = watch
        self.subscribers: list[Any] = []

    def subscribe_changes(self, changed: Any) -> bool:
        self.subscribers.append(changed)
        return True


def test_every_rotation_capability_is_known_and_has_its_setting() -> None:
    for capability in ("version_check", "change_events", "rotation_dates"):
        assert capability in CAPABILITIES
        assert capability in CAPABILITY_SETTINGS


def test_declaring_version_check_without_its_method_is_refused_at_definition() -> None:
    with pytest.raises(
        TypeError, match=r"declares capabilities .*version_check.* does not implement check_version"
    ):

        class Half(MemoryBackend):
            capabilities = frozenset({"version_check"})

            def __init__(self, version_check: bool = False) -> None:
                super().__init__()


def test_declaring_change_events_without_its_method_is_refused_at_definition() -> None:
    with pytest.raises(TypeError, match="does not implement subscribe_changes"):

        class Half(MemoryBackend):
            capabilities = frozenset({"change_events"})

            def __init__(self, watch: bool = False) -> None:
                super().__init__()


@pytest.mark.parametrize(("capability", "setting"), sorted(CAPABILITY_SETTINGS.items()))
def test_declaring_a_rotation_capability_without_its_setting_is_refused(
    capability: str, setting: str
) -> None:
    body: dict[str, Any] = {"capabilities": frozenset({capability})}
    body.update({"check_version": lambda *a: None, "subscribe_changes": lambda self, changed: False})
    with pytest.raises(TypeError) as info:
        type("NoSwitch", (MemoryBackend,), body)
    message = str(info.value)
    assert f"capability {capability!r}" in message and f"takes no {setting!r}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("method", "capability"), [("check_version", "version_check"), ("subscribe_changes", "change_events")]
)
def test_a_hook_method_without_its_declaration_is_refused(method: str, capability: str) -> None:
    with pytest.raises(TypeError, match=f"defines {method} but does not declare capability '{capability}'"):
        type("Undeclared", (MemoryBackend,), {method: lambda self, *a: None})


def test_a_subclass_that_drops_a_capability_keeps_the_inherited_method() -> None:
    class Quiet(Watching):  # as vault-database drops "version_check": the method is inherited, not defined
        capabilities = MemoryBackend.capabilities

    check_capabilities(Quiet)
    assert not supports(Quiet(), "change_events")


def test_enabled_is_the_declaration_and_the_setting() -> None:
    assert not enabled(Watching(), "change_events")
    assert enabled(Watching(watch=True), "change_events")
    assert not enabled(MemoryBackend(), "change_events")


def test_the_search_path_subscribes_only_a_store_switched_on() -> None:
    off, on = Watching(), Watching(watch=True)
    SearchPath([("off", off), ("on", on)])
    assert off.subscribers == [] and len(on.subscribers) == 1


def test_an_undeclared_attribute_no_longer_switches_capping_on() -> None:
    class Attribute(MemoryBackend):
        cap_at_rotation = True  # no declaration: the search path does not read it

    path = SearchPath([("a", Attribute())])
    assert path._capping == set()


def test_a_foreign_object_is_asked_by_its_methods_and_never_caps_without_declaring() -> None:
    class Foreign:  # Airflow-style: no credpath base class, no declaration
        cap_at_rotation = True
        version_check = True

        def get_conn_value(self, conn_id: str) -> str | None:
            return None

        def get_variable(self, key: str) -> str | None:
            return None

        def get_config(self, key: str) -> str | None:
            return None

        def check_version(self, *args: Any) -> None:
            return None

    assert enabled(Foreign(), "version_check")
    assert not supports(Foreign(), "rotation_dates")


def test_the_stores_declare_the_rotation_capabilities_they_implement() -> None:
    from credpath.backends.aws_secrets_manager import SecretsManagerBackend
    from credpath.backends.kubernetes_labels import KubernetesLabelSecretsBackend
    from credpath.backends.kubernetes_secrets import KubernetesSecretsBackend
    from credpath.backends.vault import VaultBackend
    from credpath.backends.vault_database import VaultDatabaseBackend

    rotation = set(CAPABILITY_SETTINGS)
    assert SecretsManagerBackend.capabilities & rotation == {"version_check", "rotation_dates"}
    assert VaultBackend.capabilities & rotation == {"version_check"}
    assert VaultDatabaseBackend.capabilities & rotation == set()  # a leased value is never cached to check
    assert KubernetesSecretsBackend.capabilities & rotation == {"change_events"}
    assert KubernetesLabelSecretsBackend.capabilities & rotation == {"change_events"}
