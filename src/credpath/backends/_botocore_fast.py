"""Every use of botocore beyond its public API, fenced here (tested by tests/backends/test_botocore_fast.py).

credpath's AWS backends build clients on botocore alone (no boto3) and shorten its start-up; two of the
shortcuts lean on how botocore works inside, not on what it documents:

- :func:`use_narrow_loader` replaces the session's data loader with one whose ``list_available_services``
  answers ``name in services`` for credpath's services without listing every service folder botocore ships.
  Assumption: ``Loader.load_service_model`` asks ``list_available_services(type_name)`` with ``in`` before
  loading a model, and ``Session.register_component("data_loader", ...)`` is what ``create_client`` uses.
- :func:`set_deferred_credentials` gives a session credentials that refresh themselves (STS AssumeRole).
  Assumption: ``Session.get_credentials`` returns the private ``_credentials`` once it is set (boto3's and
  the AWS samples' way; botocore has no public setter for a credentials object).

If a botocore upgrade breaks an assumption, the test module above fails naming it: then update this module
or drop the shortcut (start-up gets slower; nothing else changes). Figures: bench/RESULTS.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["SERVICES", "ClientFactory", "KnownServices", "set_deferred_credentials", "use_narrow_loader"]

#: The botocore services credpath's AWS backends create clients for.
SERVICES = frozenset({"secretsmanager", "ssm", "sts"})


class KnownServices:
    """What the narrow loader reports as available: credpath's services without listing any folder.

    botocore only asks ``name in services`` before loading a model; any other name (a credential
    provider's ``sso``, say) and iteration fall back to botocore's full listing.
    """

    def __init__(self, full_listing: Callable[[], Any]) -> None:
        self._full_listing = full_listing

    def __contains__(self, name: object) -> bool:
        return name in SERVICES or name in self._full_listing()

    def __iter__(self) -> Iterator[str]:
        return iter(self._full_listing())


def use_narrow_loader(session: Any) -> None:
    """Give ``session`` a data loader that finds credpath's services without listing them all.

    botocore's own loader checks a service name against every service it ships (one ``listdir`` per service
    folder) on each process's first client; the CLI pays that on every run. Search paths (``AWS_DATA_PATH``,
    ``~/.aws/models``) stay botocore's.
    """
    from botocore.loaders import Loader

    class NarrowLoader(Loader):  # type: ignore[misc]
        def list_available_services(self, type_name: str) -> Any:
            return KnownServices(lambda: Loader.list_available_services(self, type_name))

    data_path = session.get_config_variable("data_path")
    paths = (
        [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
        if data_path
        else None
    )
    session.register_component("data_loader", NarrowLoader(extra_search_paths=paths))


def set_deferred_credentials(session: Any, credentials: Any) -> None:
    """Make ``credentials`` (e.g. ``DeferredRefreshableCredentials``) the session's credentials."""
    session._credentials = credentials


class ClientFactory:
    """boto3's Session surface that credpath uses, on botocore alone (public botocore API only).

    boto3 adds nothing the Secrets Manager, SSM and STS clients need, but importing it also imports
    s3transfer, a large share of every CLI start.
    """

    def __init__(self, session: Any) -> None:
        self._session = session

    @property
    def region_name(self) -> str | None:
        region: str | None = self._session.get_config_variable("region")
        return region

    def client(self, service: str, **kwargs: Any) -> Any:
        return self._session.create_client(service, **kwargs)
