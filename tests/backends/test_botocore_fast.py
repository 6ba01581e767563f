"""The assumptions ``credpath.backends._botocore_fast`` makes about botocore's insides.

Each test fails with a message naming the assumption a botocore upgrade broke, and what to do about it.
No network: clients are built, never called.
"""

from __future__ import annotations

from typing import Any

import pytest

botocore = pytest.importorskip("botocore")

from credpath.backends import _botocore_fast as fast  # noqa: E402

BROKEN = "botocore {version} broke an assumption of credpath.backends._botocore_fast: {what}. {fix}"


def _broken(what: str, fix: str = "Update that module, or drop the shortcut.") -> str:
    return BROKEN.format(version=botocore.__version__, what=what, fix=fix)


def _session() -> Any:
    from botocore.session import Session

    session = Session()
    session.set_credentials("AKIDEXAMPLE", "not-a-real-key")
    session.set_config_variable("region", "us-east-1")
    return session


@pytest.mark.parametrize("service", sorted(fast.SERVICES))
def test_narrow_loader_serves_credpath_services_without_listing_botocore_data(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from botocore.loaders import Loader

    session = _session()
    fast.use_narrow_loader(session)
    assert type(session.get_component("data_loader")).__name__ == "NarrowLoader", _broken(
        "Session.register_component('data_loader', ...) no longer sets the loader create_client uses"
    )
    listings: list[str] = []
    original = Loader.list_available_services

    def counting(self: Any, type_name: str) -> Any:
        listings.append(type_name)
        return original(self, type_name)

    asked: list[object] = []
    contains = fast.KnownServices.__contains__

    def spying(self: Any, name: object) -> bool:
        asked.append(name)
        return contains(self, name)

    monkeypatch.setattr(Loader, "list_available_services", counting)
    monkeypatch.setattr(fast.KnownServices, "__contains__", spying)
    client = fast.ClientFactory(session).client(service, endpoint_url="http://127.0.0.1:9")
    assert client.meta.service_model.service_name in (service, "secretsmanager", "ssm", "sts")
    assert service in asked, _broken(
        f"creating a {service} client no longer asks the data loader whether {service!r} is a known service",
        "The narrow loader is dead code now: drop it, or hook where botocore checks the name instead.",
    )
    assert listings == [], _broken(
        f"creating a {service} client still made botocore list every service ({listings})",
        "The shortcut no longer saves anything: find the new listing call, or drop the shortcut.",
    )


def test_an_unknown_service_still_fails_as_botocore_says() -> None:
    from botocore.exceptions import UnknownServiceError

    session = _session()
    fast.use_narrow_loader(session)
    with pytest.raises(UnknownServiceError):
        fast.ClientFactory(session).client("no-such-service")


def test_deferred_credentials_are_what_the_session_signs_with() -> None:
    from botocore.credentials import DeferredRefreshableCredentials
    from botocore.session import get_session

    session = get_session()
    credentials = DeferredRefreshableCredentials(refresh_using=lambda: {}, method="sts-assume-role")
    fast.set_deferred_credentials(session, credentials)
    assert session.get_credentials() is credentials, _broken(
        "Session.get_credentials() no longer returns the session's _credentials once set",
        "Assumed-role sessions would sign with the default chain: find botocore's new way to set them.",
    )
