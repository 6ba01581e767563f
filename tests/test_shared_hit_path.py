"""The shared tier's hit path: the sealed entry format (AES-256-GCM under keys derived from the Fernet
keys), what a process keeps between hits (entry names, opened entries, verified generation records, encoded
script calls) and the RESP reply parser. Each kept thing must never serve another id's, another key's or
altered bytes' answer."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from credpath import _redis_store as rs
from credpath import _shared_cache as sc
from credpath._redis_store import RespStore
from credpath._shared_cache import FileStore, SharedEntry, SharedTier
from credpath.model import Connection

KEY = Fernet.generate_key()
NEW_KEY = Fernet.generate_key()
CKEY = ("connection", "db", None)
PASSWORD = "pw-s3cr3t-hit"


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = FileStore(tmp_path / "shared.db")
    yield s
    s.close()


def conn_entry(password: str = PASSWORD, ttl: float = 600.0) -> SharedEntry:
    now = time.time()
    conn = Connection(
        conn_id="db",
        conn_type="postgres",
        host="h",
        login="u",
        password=password,
        port=5432,
        extra='{"a": 1}',
    )
    return SharedEntry("connection", conn, "src", False, now, now + ttl, now + ttl, version="v1")


def written(tier: SharedTier, ckey: tuple[str, str, str | None], entry: SharedEntry) -> None:
    tier.get(ckey)  # the miss a store read follows (its generation is what the entry is written under)
    tier.put(ckey, entry)


# --- the sealed format ---


def test_an_entry_sealed_under_the_previous_key_opens_after_a_rotation(store: Any) -> None:
    old = SharedTier(store, [KEY], "scope")
    rotated = SharedTier(store, [NEW_KEY, KEY], "scope")  # the new key first: it seals, both open
    name = old.name(CKEY)
    e = conn_entry()
    opened = rotated._open(name, old._seal(name, e))
    assert opened == e and opened is not None and opened.value.password == PASSWORD
    # The rotated tier seals under the new key: a process still on the old key alone cannot open that,
    # and one whose keys no longer include the old key cannot open the old entries (a miss, not a value).
    assert old._open(name, rotated._seal(name, e)) is None
    assert SharedTier(store, [NEW_KEY], "scope")._open(name, old._seal(name, e)) is None
    assert rotated.counts["undecryptable"] == 0


def test_entries_of_the_earlier_format_are_a_clean_miss_and_are_written_again(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tier = SharedTier(store, [KEY], "scope")
    e = conn_entry()
    written(tier, CKEY, e)
    name = tier.name(CKEY)
    # What the earlier code wrote: a Fernet token of the same body, naming the entry inside.
    payload = json.loads(tier._sealer.open(name, store.get(name)))
    payload["n"] = name
    store.put(name, Fernet(KEY).encrypt(json.dumps(payload).encode()), time.time() + 600)
    with caplog.at_level(logging.WARNING, logger="credpath.shared_cache"):
        assert tier.get(CKEY) is None
    assert PASSWORD not in caplog.text
    assert tier.counts["undecryptable"] == 1
    tier.put(CKEY, e)  # the store read that follows the miss writes it in the current format
    again = tier.get(CKEY)
    assert again is not None and again.value == e.value


@pytest.mark.parametrize("where", [0, 1, 2, 5, 6, 17, 18, -17, -1])
def test_an_altered_entry_is_a_miss_even_right_after_its_good_bytes_opened(store: Any, where: int) -> None:
    tier = SharedTier(store, [KEY], "scope")
    name = tier.name(CKEY)
    good = tier._seal(name, conn_entry())
    assert tier._open(name, good) is not None  # kept as opened
    altered = bytearray(good)
    altered[where] ^= 0x01  # format, key id, nonce, body, tag
    assert tier._open(name, bytes(altered)) is None
    assert tier._open(name, good[:-1]) is None
    assert tier._open(name, good + b"\0") is None
    assert tier._open(name, b"") is None
    assert tier.counts["undecryptable"] == 4


def test_an_entry_moved_to_another_name_does_not_open_even_when_kept_under_its_own(store: Any) -> None:
    tier = SharedTier(store, [KEY], "scope")
    name, other = tier.name(CKEY), tier.name(("connection", "db2", None))
    good = tier._seal(name, conn_entry())
    assert tier._open(name, good) is not None
    assert tier._open(other, good) is None  # the name is bound by the seal, and kept per name
    # Through the store: the entry copied under another id's name (with its generation record) is a miss.
    written(tier, CKEY, conn_entry())
    store.put(other, store.get(name), time.time() + 600)
    store.put("g:" + other, store.get("g:" + name), time.time() + 600)
    assert tier.get(CKEY) is not None
    assert tier.get(("connection", "db2", None)) is None


def test_sealed_bodies_that_are_not_entries_are_counted_misses(store: Any) -> None:
    tier = SharedTier(store, [KEY], "scope")
    name = tier.name(CKEY)
    bad_bodies = [
        b"not json",  # ValueError
        b"\xff\xfe{}",  # not UTF-8
        b"{}",  # KeyError
        b"[1]",  # TypeError
        json.dumps({"k": "connection", "m": False, "s": "x", "v": {"conn_id": "db", "bogus": 1}}).encode(),
        json.dumps({"k": "connection", "m": False, "s": "x", "v": "a string"}).encode(),
    ]
    for body in bad_bodies:
        assert tier._open(name, tier._sealer.seal(name, body)) is None
    assert tier.counts["undecryptable"] == len(bad_bodies)


def test_a_connection_opens_equal_to_the_one_sealed(store: Any) -> None:
    tier = SharedTier(store, [KEY], "scope")
    name = tier.name(CKEY)
    e = conn_entry()
    opened = tier._open(name, tier._seal(name, e))
    assert opened is not None
    assert type(opened.value) is Connection
    assert opened.value == e.value and hash(opened.value) == hash(e.value)
    assert PASSWORD not in repr(opened.value) and PASSWORD not in repr(opened)
    # Fields other than a Connection's exactly: built the usual way (its defaults, its checks).
    body = json.dumps(
        {"k": "connection", "m": False, "s": "x", "v": {"conn_id": "db"}, "t": 1, "f": 2, "x": 3}
    )
    partial = tier._open(name, tier._sealer.seal(name, body.encode()))
    assert partial is not None and partial.value == Connection(conn_id="db")


# --- what a process keeps between hits ---


def test_a_repeated_hit_opens_the_entry_once_and_a_new_value_is_opened(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = SharedTier(store, [KEY], "scope")
    written(tier, CKEY, conn_entry())
    opens = []
    real = tier._sealer.open

    def counted(name: str, blob: bytes) -> bytes:
        opens.append(name)
        return real(name, blob)

    monkeypatch.setattr(tier._sealer, "open", counted)
    first, second = tier.get(CKEY), tier.get(CKEY)
    assert first is not None and first is second
    assert len(opens) == 1
    tier.put(CKEY, conn_entry("pw-s3cr3t-new"))  # new bytes under the same name
    third = tier.get(CKEY)
    assert third is not None and third.value.password == "pw-s3cr3t-new"
    assert len(opens) == 2


def test_kept_entries_still_obey_expiry_generations_and_invalidation(store: Any, monkeypatch: Any) -> None:
    tier = SharedTier(store, [KEY], "scope")
    written(tier, CKEY, conn_entry(ttl=600))
    assert tier.get(CKEY) is not None
    other = SharedTier(store, [KEY], "scope")
    other.invalidate(CKEY)  # another process: a new generation, the entry dropped
    assert tier.get(CKEY) is None
    written(tier, CKEY, conn_entry())
    blob, gen = store.get(tier.name(CKEY)), store.get("g:" + tier.name(CKEY))
    assert tier.get(CKEY) is not None
    other.invalidate(CKEY)
    store.put(tier.name(CKEY), blob, time.time() + 600)  # the old bytes put back, old record gone
    assert tier.get(CKEY) is None  # refused: its generation is not the record's
    altered = gen[:-1] + (b"1" if gen.endswith(b"0") else b"0")  # the MAC's last hex digit, changed
    store.put("g:" + tier.name(CKEY), altered, time.time() + 600)  # a record that does not verify
    assert tier.get(CKEY) is None
    store.put("g:" + tier.name(CKEY), gen, time.time() + 600)  # all put back: the tier is untrusted storage
    assert tier.get(CKEY) is not None
    now = time.time()
    monkeypatch.setattr(sc, "time", type("T", (), {"time": staticmethod(lambda: now + 601)}))
    assert tier.get(CKEY) is None  # past keep_until, kept or not


def test_values_that_can_change_in_place_are_not_kept(store: Any) -> None:
    tier = SharedTier(store, [KEY], "scope")
    state = tier.state("vault")
    state.put("mounts", {"kv": 2}, ttl=60)
    got = state.get("mounts")
    got["kv"] = 1  # a caller changing what it got
    assert state.get("mounts") == {"kv": 2}


def test_names_are_kept_per_full_id_and_stay_what_they_were(store: Any) -> None:
    tier = SharedTier(store, [KEY], "scope")
    ckeys = [
        ("connection", "db", None),
        ("connection", "db", "team"),
        ("variable", "db", None),
        ("connection", "db\0", None),
        ("state", "vault\0db", None),
    ]
    names = [tier.name(c) for c in ckeys]
    assert len(set(names)) == len(ckeys)
    fresh = SharedTier(store, [KEY], "scope")
    assert [fresh.name(c) for c in reversed(ckeys)] == list(reversed(names))  # order does not matter
    assert tier.name(ckeys[0]) == names[0]
    for i in range(sc.NAMES_KEEP + 10):  # past the bound: cleared, and derived again the same
        tier.name(("variable", f"v{i}", None))
    assert len(tier._names) <= sc.NAMES_KEEP
    assert [tier.name(c) for c in ckeys] == names
    assert SharedTier(store, [KEY], "other scope").name(ckeys[0]) != names[0]
    assert SharedTier(store, [NEW_KEY, KEY], "scope").name(ckeys[0]) != names[0]  # the first key names


@pytest.mark.parametrize(
    "ckey",
    [
        ("connection", "db", None),
        ("variable", 'a"b\\c\n\0', "team/ü"),
        ("connection", "ключ-\u2028-\ud800", None),
        ("state", "vault\0kv_version", None),
    ],
)
def test_names_are_the_hmac_of_the_json_they_always_were(store: Any, ckey: Any) -> None:
    import hashlib
    import hmac

    scope = 'scope "with" quotes'
    tier = SharedTier(store, [KEY], scope)
    mac_key = hashlib.sha256(b"credpath shared cache key names\0" + KEY).digest()
    message = json.dumps([scope, *ckey], separators=(",", ":")).encode()
    assert tier.name(ckey) == hmac.new(mac_key, message, hashlib.sha256).hexdigest()


def test_opened_entries_are_bounded(store: Any) -> None:
    tier = SharedTier(store, [KEY], "scope")
    e = conn_entry()
    for i in range(sc.OPENED_KEEP + 5):
        name = tier.name(("variable", f"v{i}", None))
        assert tier._open(name, tier._seal(name, e)) is not None
    assert 0 < len(tier._opened) <= sc.OPENED_KEEP


# --- RESP replies ---

HIT_REPLY = b"*3\r\n$5\r\nab\r\nc\r\n$-1\r\n:-1\r\n"


def test_replies_parse_to_what_redis_sent() -> None:
    cases: list[tuple[bytes, Any]] = [
        (HIT_REPLY, [b"ab\r\nc", None, -1]),
        (b"$0\r\n\r\n", b""),
        (b"+OK\r\n", b"OK"),
        (b":42\r\n", 42),
        (b"*-1\r\n", None),
        (b"*0\r\n", []),
        (b"*2\r\n*1\r\n:1\r\n$1\r\n\xff\r\n", [[1], b"\xff"]),
    ]
    for data, value in cases:
        assert rs._parse(data + b"+next\r\n", 0) == (value, len(data))
    line = b"-NOSCRIPT No matching script. key s3cr3t\r\n"
    error, end = rs._parse(line, 0)
    assert isinstance(error, rs.RedisError) and str(error) == "NOSCRIPT" and end == len(line)
    with pytest.raises(ConnectionError):
        rs._parse(b"?what\r\n", 0)


def test_a_reply_cut_anywhere_asks_for_more() -> None:
    for cut in range(len(HIT_REPLY)):
        with pytest.raises(rs._Short):
            rs._parse(HIT_REPLY[:cut], 0)


def test_replies_arriving_in_pieces_are_read_whole() -> None:
    a, b = socket.socketpair()
    try:
        conn = rs._Connection(a)
        data = HIT_REPLY + b":7\r\n" + b"$70000\r\n" + b"x" * 70000 + b"\r\n"

        def send() -> None:
            for i in range(0, 40):  # byte by byte first, then the rest
                b.sendall(data[i : i + 1])
                time.sleep(0.001)
            b.sendall(data[40:])

        sender = threading.Thread(target=send)
        sender.start()
        assert conn.reply() == [b"ab\r\nc", None, -1]
        assert conn.reply() == 7
        assert conn.reply() == b"x" * 70000
        sender.join()
        assert conn.buffer == b""
    finally:
        a.close()
        b.close()


def test_hits_on_redis_keep_one_round_trip_and_survive_a_script_flush(
    redis_url: str, redis_server: Any
) -> None:
    store = RespStore(redis_url)
    tier = SharedTier(store, [KEY], "scope")
    big = SharedEntry(
        "variable", "v" * 300_000, "src", False, time.time(), time.time() + 600, time.time() + 600
    )
    written(tier, ("variable", "big", None), big)
    written(tier, CKEY, conn_entry())
    tier.get_or_acquire(CKEY)  # the script loaded (NOSCRIPT, then EVAL: once per server)
    before = store.round_trips
    for _ in range(3):
        entry, held = tier.get_or_acquire(CKEY)
        assert entry is not None and held is None and entry.value.password == PASSWORD
        entry, held = tier.get_or_acquire(("variable", "big", None))
        assert entry is not None and entry.value == big.value
    assert store.round_trips - before == 6
    redis_server.client().script_flush()  # the encoded EVALSHA is kept: NOSCRIPT, then EVAL loads it
    assert tier.get_or_acquire(CKEY)[0] is not None
    assert tier.get_or_acquire(CKEY)[0] is not None
    assert tier.get_or_acquire(("connection", "nobody", None)) == (None, True)  # the lease part as before
    assert all(PASSWORD.encode() not in payload for payload in store._encoded.values())
    # An entry altered in Redis after this process kept it: a miss, never the kept value.
    name = tier.name(CKEY)
    blob = redis_server.client().get(sc.PREFIX + "e:" + name)
    redis_server.client().set(sc.PREFIX + "e:" + name, blob[:-1] + bytes([blob[-1] ^ 1]), px=60_000)
    assert tier.get_or_acquire(CKEY) == (None, None)
    tier.flush()  # its counters now, while the server runs (not at exit)
    store.close()


def test_an_entry_repr_never_shows_its_value() -> None:
    now = time.time()
    variable = SharedEntry("variable", "var-s3cr3t-value", "src", False, now, now + 1, now + 1)
    assert "var-s3cr3t-value" not in repr(variable) and "var-s3cr3t-value" not in str(variable)
    assert PASSWORD not in repr(conn_entry())


def test_invalidating_or_closing_drops_what_was_kept(store: Any) -> None:
    tier = SharedTier(store, [KEY], "scope")
    written(tier, CKEY, conn_entry())
    written(tier, ("variable", "v", None), conn_entry())
    assert tier.get(CKEY) is not None and tier.get(("variable", "v", None)) is not None
    tier.invalidate(CKEY)
    assert tier.name(CKEY) not in tier._opened and len(tier._opened) == 1
    tier.close()
    assert tier._opened == {}


def test_two_keys_with_the_same_key_id_both_open(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    real = hmac.digest

    def digest(key: bytes, message: bytes, algorithm: str) -> bytes:
        if message.startswith(b"credpath shared cache entry key id"):
            return b"\0" * 32  # every key gets the same id
        return real(key, message, algorithm)

    monkeypatch.setattr(hmac, "digest", digest)
    old, both = SharedTier(store, [KEY], "scope"), SharedTier(store, [NEW_KEY, KEY], "scope")
    name = old.name(CKEY)
    assert both._open(name, old._seal(name, conn_entry())) is not None  # the second key with that id
    assert both.counts["undecryptable"] == 0
