"""A store client that belongs to the process that made it.

A forked child (Airflow forks task processes from a parent that may already have read a store) inherits the
parent's clients and, in their connection pools, the parent's idle keep-alive sockets: a request the child
sent on one would be answered to whichever process reads first (a wrong value, or a read that hangs). So a
:class:`PerProcess` value is handed out only in the process that made it; a new process gets its own, made
from the inherited one's settings (never closing it: closing a child's copy of a socket can end the parent's
connection, as a database driver's goodbye message does). Its lock is the process's own too: a thread of the
parent may have held it at the fork, and nothing in the child would release it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["PerProcess"]

T = TypeVar("T")


class PerProcess(Generic[T]):
    """A lazily made value of this process.

    ``build()`` makes the first value; ``adopt(inherited)`` makes a new process's value from the one
    inherited at the fork (default: ``build()`` again). One ``os.getpid()`` per :meth:`get`.
    """

    __slots__ = ("_adopt", "_build", "_lock", "_lock_pid", "_pid", "_reentrant", "_value")

    def __init__(
        self,
        build: Callable[[], T],
        adopt: Callable[[T], T] | None = None,
        *,
        reentrant: bool = False,
    ) -> None:
        self._build = build
        self._adopt = adopt
        self._reentrant = reentrant
        self._value: T | None = None
        self._pid = 0  # the process that made _value
        self._lock: threading.Lock | threading.RLock = self._new_lock()
        self._lock_pid = os.getpid()

    def _new_lock(self) -> threading.Lock | threading.RLock:
        return threading.RLock() if self._reentrant else threading.Lock()

    @property
    def lock(self) -> threading.Lock | threading.RLock:
        """This process's lock (held while a value is made)."""
        pid = os.getpid()
        if self._lock_pid != pid:  # a forked child: the parent's lock may have been held at the fork
            self._lock, self._lock_pid = self._new_lock(), pid
        return self._lock

    def get(self) -> T:
        """This process's value, made (or adopted from the parent's) on first use."""
        value = self._value
        if value is not None and self._pid == os.getpid():
            return value
        with self.lock:
            return self._make(build=True)  # type: ignore[return-value]  # build=True never gives None

    def existing(self) -> T | None:
        """This process's value if one was made here or inherited (adopting it), else None (nothing is
        built)."""
        with self.lock:
            return self._make(build=False)

    def clear(self) -> T | None:
        """Forgets the value; returns it if this process made it, for the caller to close (one inherited
        from the parent is only dropped: its connections are the parent's)."""
        with self.lock:
            value, self._value = self._value, None
            return value if self._pid == os.getpid() else None

    def _make(self, build: bool) -> T | None:  # under self.lock
        pid = os.getpid()
        if self._value is None:
            if not build:
                return None
            self._value = self._build()
        elif self._pid != pid:
            inherited = self._value
            self._value = None  # a failed adoption leaves nothing of the parent's to hand out
            self._value = self._adopt(inherited) if self._adopt is not None else self._build()
        self._pid = pid
        return self._value
