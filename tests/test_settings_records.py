"""The settings and lookup values are records (credpath._record), not dataclasses: they keep the dataclass
behaviour their users rely on (equality, hashing, frozenness, ``replace``) and their reprs show no secret."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from credpath._cache import CacheSettings
from credpath._lookup.model import Entry, Explanation, PrefetchReport, Resolution
from credpath._lookup.trace import Attempt
from credpath._settings import BackendsOrder, BackendSpec, Number, Settings, SharedTierSettings
from tests.memory_backend import MemoryBackend

SECRET = "s3cr3t-record"


def test_reprs_show_no_secret() -> None:
    spec = BackendSpec("vault", "vault", {"url": "https://vault", "token": SECRET})
    shared = SharedTierSettings(f"redis://:{SECRET}@cache:6379/0", (SECRET.encode(),))
    cache = CacheSettings(shared=f"redis://:{SECRET}@cache:6379/0")
    settings = Settings((spec,), cache=cache, shared=shared)
    for value in (spec, shared, cache, settings):
        assert SECRET not in repr(value), type(value).__name__
    shown = "BackendSpec(type='vault', name='vault', lookup_patterns={}, on_error='skip', origin='')"
    assert repr(spec) == shown
    assert repr(shared) == "SharedTierSettings(lease=5.0)"


@pytest.mark.parametrize(
    "make",
    [
        lambda: CacheSettings(ttl=5.0),
        lambda: Number(0.0, 1.0, unit="s"),
        lambda: BackendsOrder(("env",), "default"),
        lambda: SharedTierSettings("file:/x", (b"k",)),
        lambda: Settings(()),
        lambda: Resolution("v", "b"),
    ],
)
def test_frozen_records_compare_hash_copy_and_refuse_assignment(make) -> None:
    one, two = make(), make()
    assert one == two and not one != two and hash(one) == hash(two)
    assert one != object() and pickle.loads(pickle.dumps(one)) == one
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.anything = 1
    field = type(one)._fields[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(one, field, getattr(two, field))
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(one, field)


def test_replace_is_dataclasses_replace() -> None:
    spec = BackendSpec("vault", "v", {"a": 1}, origin="credpath.toml backends[0]")
    changed = spec.replace(kwargs={"a": 2})
    assert changed == BackendSpec("vault", "v", {"a": 2}, origin="credpath.toml backends[0]")
    assert spec.kwargs == {"a": 1}
    settings = Settings((spec,))
    assert settings.replace(audit=True).audit and settings.replace(audit=True).backends == (spec,)
    with pytest.raises(TypeError):
        spec.replace(nope=1)


def test_uncompared_fields_are_left_out_of_equality_and_hash() -> None:
    assert Resolution("v", "b", version="1", valid_until=1.0) == Resolution("v", "b", version="2")
    assert hash(Resolution("v", "b", version="1")) == hash(Resolution("v", "b"))
    assert Resolution("v", "b") != Resolution("v", "c")
    assert SharedTierSettings("file:/x", (b"k1",)) == SharedTierSettings("file:/x", (b"k2",))
    assert SharedTierSettings("file:/x", (b"k",)) != SharedTierSettings("file:/y", (b"k",))


def test_mutable_records_are_unhashable_and_get_fresh_defaults() -> None:
    backend = MemoryBackend()
    explanation = Explanation("connection", "k", None)
    mutable = (explanation, Entry("n", backend, {}), PrefetchReport(), Attempt("b", "x"))
    for one in mutable:
        with pytest.raises(TypeError):
            hash(one)
        one.extra_attribute = 1  # mutable, as a dataclass
    first, second = Explanation("connection", "k", None), Explanation("connection", "k", None)
    first.attempts.append(Attempt("b", "hit"))
    first.held["process"] = "1"
    assert second.attempts == [] and second.held == {}
    assert Entry("n", backend, {}).breaker is not Entry("n", backend, {}).breaker
    assert Explanation("connection", "k", None) == Explanation("connection", "k", None)
    assert Explanation("connection", "k", None) != Explanation("connection", "k", "b")


def test_defaults_are_class_attributes_as_a_dataclass_has_them() -> None:
    assert CacheSettings.shared_lease == CacheSettings().shared_lease == 5.0
    assert CacheSettings.ttl == 300.0 and CacheSettings.shared is None
