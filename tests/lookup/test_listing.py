"""Listing ids across the backends that can list."""

from __future__ import annotations

import logging

import pytest

from credpath._search_path import SearchPath
from credpath.errors import ReadOnlyBackend
from tests.lookup.helpers import (
    URI_A,
    URI_B,
    no_breaker,
    path,
    quiet_path,
)
from tests.memory_backend import (
    MemoryBackend,
    Unreachable,
)


def test_collisions_listing():
    sp = path(MemoryBackend({"db": URI_A, "a": URI_A}), MemoryBackend({"db": URI_B, "b": URI_B}))
    found, unlistable = sp.list_ids("connection")
    assert found == {"a": ["b0"], "b": ["b1"], "db": ["b0", "b1"]}
    assert unlistable == []


def test_listing_tells_cannot_list_from_failed_to_list(caplog):
    from credpath.protocol import BaseBackend

    class NoListing(BaseBackend):
        def get_conn_value(self, conn_id):
            return None

        def get_variable(self, key):
            return None

    broken = MemoryBackend({"x": URI_A})
    broken.fail_with = Unreachable("backend 'b1' (Memory): cannot reach 127.0.0.1:1")
    sp = SearchPath([("plain", NoListing()), ("b1", broken), ("ok", MemoryBackend({"db": URI_B}))])
    with caplog.at_level(logging.WARNING):
        listing = sp.list_ids("connection")
    found, cannot_list = listing
    assert found == {"db": ["ok"]}
    assert cannot_list == ["plain"]  # main also put the failed 'b1' here ("cannot list")
    assert list(listing.failed) == ["b1"] and "cannot reach" in listing.failed["b1"]
    assert "listing connections" in caplog.text and "cannot reach" in caplog.text


def test_a_failing_backend_in_list_ids_is_reported_and_the_others_listed(caplog):
    broken = MemoryBackend({"x": URI_A})
    broken.fail_with = Unreachable("down")
    sp = path(broken, MemoryBackend({"a": URI_A}), breaker=no_breaker())
    listing = sp.list_ids("connection")
    assert listing.found == {"a": ["b1"]} and listing.cannot_list == []
    assert list(listing.failed) == ["b0"] and "down" in listing.failed["b0"]
    assert "listing the other backends" in caplog.text
    sp.entries[0].on_error = "fail"
    with pytest.raises(Unreachable):
        sp.list_ids("connection")


def test_listing_goes_on_past_a_failing_first_backend(caplog):
    broken = MemoryBackend({"x": URI_A})
    broken.fail_with = Unreachable("down")
    sp = quiet_path(broken, MemoryBackend({"a": URI_A}), MemoryBackend({"b": URI_B}))
    with caplog.at_level(logging.WARNING):
        found, cannot = sp.list_ids("connection")
    assert found == {"a": ["b1"], "b": ["b2"]}
    assert cannot == []
    assert list(sp.list_ids("connection").failed) == ["b0"]


def test_listing_goes_on_past_a_backend_that_says_it_cannot_list():

    class NoListing(MemoryBackend):
        def list_connections(self):
            raise ReadOnlyBackend(f"{self.label} cannot list connections")

    sp = quiet_path(NoListing({"x": URI_A}), MemoryBackend({"a": URI_A}))
    found, cannot = sp.list_ids("connection")
    assert (found, cannot) == ({"a": ["b1"]}, ["b0"])
