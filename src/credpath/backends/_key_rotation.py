"""Fernet key rotation of the metastore's stored values (``credpath rotate-fernet-key``).

:func:`rotate_fernet_key` re-encrypts with the first configured key every value another key encrypted:
every value is decrypted first (one no key decrypts stops the rotation before any write), then each row is
rewritten with a compare-and-swap on the tokens it was read with, in one transaction, so a concurrent write
is never reverted. :func:`rotate_key_file` rotates the generated key file crash-safely around it.

It works on a :class:`~credpath.backends.metastore.MetastoreBackend` (its engine, tables and keys); the
backend's methods of the same names delegate here. Key parsing, key files and where the keys come from
(:class:`~credpath._keys.KeySource`) are :mod:`credpath._keys`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from credpath._keys import generate_key, replace_key_file
from credpath.backends._sql import FernetKeyError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Table

    from credpath.backends.metastore import MetastoreBackend

__all__ = ["ROTATE_ATTEMPTS", "Plan", "rotate_fernet_key", "rotate_key_file"]

# The metastore's voice (its log lines and the logger its users filter on).
log = logging.getLogger("credpath.backends.metastore")

#: Attempts to rotate one row that other writers keep changing (each re-reads it under a row lock).
ROTATE_ATTEMPTS = 10
#: Passes of the key file's rotation: a second re-encrypts what a process still on the old key wrote.
_FILE_PASSES = 3

Tokens = tuple[Any, ...]
#: (row id, tokens as read, tokens re-encrypted) of one row.
Rotated = tuple[str, Tokens, Tokens]


class Plan(NamedTuple):
    """One table to rotate: its kind, the table, its primary key and its encrypted columns."""

    kind: str
    table: Table
    pk: str
    cols: tuple[str, ...]


def _changed(old: Tokens, new: Tokens) -> int:
    return sum(1 for a, b in zip(old, new, strict=True) if a != b)


def _snapshot(store: MetastoreBackend, plan: list[Plan]) -> dict[str, list[Tokens]]:
    """Every row's (id, *tokens), per kind."""
    from sqlalchemy import select

    with store._db("reading the values to rotate"), store.engine.connect() as conn:
        return {
            p.kind: [tuple(r) for r in conn.execute(select(p.table.c[p.pk], *(p.table.c[c] for c in p.cols)))]
            for p in plan
        }


def _rotator(store: MetastoreBackend) -> Callable[[Plan, str, Tokens], Tokens]:
    """rotate(plan, row id, tokens) -> the tokens under the first key (a token already its own is kept)."""
    from cryptography.fernet import Fernet, InvalidToken

    fernet = store._fernet_obj()
    text, _setting = store._key_source()
    first = Fernet(store._checked_keys(text, store._key_setting)[0])

    def rotate(plan: Plan, row_id: str, tokens: Tokens) -> Tokens:
        out: list[str | None] = []
        for column, token in zip(plan.cols, tokens, strict=True):
            if token is None:
                out.append(None)
                continue
            try:
                first.decrypt(token.encode("ascii"))
                out.append(token)  # already the first key's
                continue
            except (InvalidToken, ValueError, UnicodeError):
                pass
            try:
                out.append(fernet.rotate(token.encode("ascii")).decode("ascii"))
            except (InvalidToken, ValueError, UnicodeError):
                raise FernetKeyError(
                    f"{store.label}: cannot rotate the {column} of {plan.kind} {row_id!r}: no key in "
                    f"{store._key_setting} decrypts it; nothing was changed",
                    backend=store.name,
                ) from None
        return tuple(out)

    return rotate


def _swap_row(
    store: MetastoreBackend,
    conn: Connection,
    plan: Plan,
    row: Rotated,
    rotate: Callable[[Plan, str, Tokens], Tokens],
) -> int:
    """Write one row's new tokens if it still holds the old ones, else rotate what it holds now; the
    number of values re-encrypted."""
    from sqlalchemy import select, update

    row_id, old, new = row
    table, pk, cols = plan.table, plan.pk, plan.cols
    for _attempt in range(ROTATE_ATTEMPTS):
        if not _changed(old, new):
            return 0
        swap = (
            update(table)
            .where(
                table.c[pk] == row_id,
                *(table.c[c].is_not_distinct_from(v) for c, v in zip(cols, old, strict=True)),
            )
            .values(dict(zip(cols, new, strict=True)))
        )
        if conn.execute(swap).rowcount == 1:
            return _changed(old, new)
        # Written (or deleted) by someone else since it was read: rotate what is there now.
        current = conn.execute(
            select(*(table.c[c] for c in cols)).where(table.c[pk] == row_id).with_for_update()
        ).first()
        if current is None:
            return 0
        old = tuple(current)
        new = rotate(plan, row_id, old)
    raise store.error(
        f"{store.safe_url}: {plan.kind} {row_id!r} kept changing during the key rotation; "
        "nothing was changed, run it again"
    )


def rotate_fernet_key(store: MetastoreBackend) -> int:
    """``MetastoreBackend.rotate_fernet_key`` (its docstring is the contract)."""
    if store._absent():
        return 0
    plan = store._rotation_plan()
    snapshot = _snapshot(store, plan)
    if not any(snapshot.values()):
        return 0
    rotate = _rotator(store)
    # Decrypt everything first: a value no key decrypts stops the rotation before any write.
    rotated: dict[str, list[Rotated]] = {
        p.kind: [(r[0], r[1:], rotate(p, r[0], r[1:])) for r in snapshot[p.kind]] for p in plan
    }
    if not any(_changed(old, new) for rows in rotated.values() for _id, old, new in rows):
        return 0
    counts = {p.kind: 0 for p in plan}
    with store._db("rotating the Fernet key"), store._writing() as conn:
        for p in plan:
            for row in rotated[p.kind]:
                counts[p.kind] += _swap_row(store, conn, p, row, rotate)
    log.info(
        "metastore: re-encrypted %d connection value(s) and %d variable(s)",
        counts["connection"],
        counts["variable"],
    )
    return sum(counts.values())


def rotate_key_file(store: MetastoreBackend) -> int | None:
    """``MetastoreBackend.rotate_key_file`` (its docstring is the contract)."""
    if store.key_origin != "file":
        raise store.config_error(
            f"the Fernet key comes from {store.key_origin}, not {store.key_file}: put the new key first "
            f"in {store.key_origin} (NEW,OLD) and rotate with it"
        )
    source = store._fernet_keys
    path = source.path
    try:
        text = source.read_file()
    except FileNotFoundError:
        if store._absent() or not store._has_encrypted_rows():
            return None
        raise source.missing_error() from None
    keys = [k.decode("ascii") for k in store._checked_keys(text, str(path))]
    with store._lock:
        if len(keys) == 1:
            keys.insert(0, generate_key())
            replace_key_file(path, ",".join(keys))
            log.info("metastore: new Fernet key added first to %s; re-encrypting", path)
        store._fernet = None  # load the file's keys as they are now
        total = 0
        for _pass in range(_FILE_PASSES):
            # Through the method: a subclass (or a test's crash injection) sees every pass.
            done = store.rotate_fernet_key()
            total += done
            if not done:
                break
        replace_key_file(path, keys[0])
        store._fernet = None
        source.forget()
    log.info("metastore: %s now holds the new Fernet key alone; back it up", path)
    return total
