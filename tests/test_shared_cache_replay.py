"""Replay: whoever can write the shared tier (the Redis password, or the file) but has not the cache key
cannot put back an entry recorded before a credential changed: it is refused, never served."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from credpath._search_path import SearchPath
from credpath._settings import load_settings
from credpath._shared_cache import PREFIX
from tests import _shared_tier_fixtures as _fixtures
from tests._shared_tier_fixtures import KEY
from tests.servers.redis import RedisServer

# The shared-tier fixtures (tests/_shared_tier_fixtures.py), taken into this module.
clean_env, shared = _fixtures.clean_env, _fixtures.shared

Raw = dict[bytes | str, bytes]


class Tier:
    """Raw access to the tier's store, as someone with only its password (or file) has it."""

    def __init__(self, shared: str, redis_server: RedisServer | None) -> None:
        self.shared = shared
        self.redis = None if shared.startswith("file:") else redis_server.client()  # type: ignore[union-attr]

    def entries(self) -> Raw:
        if self.redis is None:
            with sqlite3.connect(self.shared[5:]) as db:
                return {k: bytes(v) for k, v in db.execute("SELECT k, v FROM entries WHERE k NOT LIKE 'g:%'")}
        keys = [k for k in self.redis.keys(PREFIX + "e:*") if not k.startswith((PREFIX + "e:g:").encode())]
        return {k: self.redis.get(k) for k in keys}

    def put_back(self, raw: Raw) -> None:
        if self.redis is None:
            with sqlite3.connect(self.shared[5:]) as db:
                db.executemany(
                    "INSERT OR REPLACE INTO entries (k, v, keep_until) VALUES (?, ?, 9e12)", list(raw.items())
                )
            return
        for k, v in raw.items():
            self.redis.set(k, v, px=600_000)

    def drop_generations(self) -> None:
        if self.redis is None:
            with sqlite3.connect(self.shared[5:]) as db:
                db.execute("DELETE FROM entries WHERE k LIKE 'g:%'")
            return
        for k in self.redis.keys(PREFIX + "e:g:*"):
            self.redis.delete(k)


@pytest.fixture
def tier(shared: str, request: pytest.FixtureRequest) -> Tier:
    server = None if shared.startswith("file:") else request.getfixturevalue("redis_server")
    return Tier(shared, server)


def _paths(tmp_path: Path, shared: str) -> Callable[[], SearchPath]:
    db = tmp_path / "meta.db"
    config = tmp_path / "credpath.toml"
    config.write_text(
        f'[[backends]]\ntype = "metastore"\nkwargs = {{url = "sqlite:///{db}", fernet_key = "{KEY}"}}\n'
        f"[cache]\nshared = {json.dumps(shared)}\nshared_key = {json.dumps(KEY)}\n"
    )
    return lambda: SearchPath.from_settings(load_settings(config, dict(os.environ)))


@pytest.mark.parametrize("also_drop_the_generation", [False, True], ids=["entry", "entry-and-generation"])
def test_an_entry_put_back_after_a_credential_change_is_not_served(
    tmp_path: Path, shared: str, tier: Tier, also_drop_the_generation: bool
) -> None:
    new_path = _paths(tmp_path, shared)
    writer = new_path()
    writer.set_variable("rp_var", "old-s3cr3t")
    reader = new_path()
    assert reader.get_variable("rp_var") == "old-s3cr3t"  # recorded in the shared tier
    recorded = tier.entries()
    assert recorded
    writer.set_variable("rp_var", "new-s3cr3t")  # the credential changes, written through credpath
    tier.put_back(recorded)  # the attacker restores the entry recorded before the change
    if also_drop_the_generation:
        tier.drop_generations()
    assert new_path().get_variable("rp_var") == "new-s3cr3t"
    # Once the store has been read again, the tier serves the new value to the next process.
    assert new_path().explain("variable", "rp_var", use_cache=True).tier == "shared"
    assert new_path().get_variable("rp_var") == "new-s3cr3t"
    for path in (writer, reader):
        path.close()


def test_a_value_read_before_a_concurrent_write_is_not_served_after_it(tmp_path: Path, shared: str) -> None:
    """A process that read the old value before another process's write, and writes it to the tier
    after that write's invalidation, leaves an entry no one is served."""
    import time

    from credpath._shared_cache import SharedEntry

    new_path = _paths(tmp_path, shared)
    writer, slow = new_path(), new_path()
    assert writer.shared is not None and slow.shared is not None
    ckey = ("variable", "race_var", None)
    assert slow.shared.get(ckey) is None  # its miss (it notes the generation it saw)
    writer.shared.invalidate(ckey)  # another process writes the id meanwhile
    now = time.time()
    slow.shared.put(ckey, SharedEntry("variable", "old-s3cr3t", "metastore", False, now, now + 60, now + 60))
    assert new_path().shared.get(ckey) is None  # type: ignore[union-attr]
    slow.shared.put(ckey, SharedEntry("variable", "new-s3cr3t", "metastore", False, now, now + 60, now + 60))
    assert new_path().shared.get(ckey).value == "new-s3cr3t"  # type: ignore[union-attr]
    writer.close()
    slow.close()
