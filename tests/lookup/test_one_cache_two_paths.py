"""Two search paths over one process tier (``SearchPath(cache=<TTLCache>)``): an entry one path cached from a
backend the other does not have."""

from __future__ import annotations

from credpath._cache import CacheSettings, TTLCache
from credpath._search_path import SearchPath
from tests.lookup.helpers import URI_A
from tests.memory_backend import MemoryBackend


def test_a_connection_cached_by_another_paths_backend_is_served_by_both_doors() -> None:
    cache = TTLCache(CacheSettings(ttl=300.0, jitter=0.0))
    first = SearchPath([("aws", MemoryBackend(connections={"db": URI_A}))], cache=cache)
    second = SearchPath([("vault", MemoryBackend())], cache=cache)
    assert first.get_connection("db").password == "pw-s3cr3t-a"
    # the inlined hit of get_connection and lookup's process tier answer alike (the inlined hit raised
    # KeyError: it looked the entry's backend up among this path's own)
    assert second.get_connection("db").password == "pw-s3cr3t-a"
    resolution = second.lookup("connection", "db")
    assert resolution is not None and resolution.source == "aws"
