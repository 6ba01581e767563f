"""A process-tier answer never waits for another caller's store read of the same id (single-flight is for
misses): with a never-cached backend ahead, a cached value is served while a slow read of the id is still
in flight."""

from __future__ import annotations

import threading
from typing import Any

from tests.lookup.helpers import quiet_path
from tests.memory_backend import MemoryBackend, UncachedMemoryBackend


class FirstReadGated(MemoryBackend):
    """Its first read waits for ``gate``; later reads answer at once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def get_variable(self, key: str) -> str | None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(10), "gate never opened"
        return super().get_variable(key)


def test_a_process_hit_does_not_wait_for_a_read_in_flight() -> None:
    live = UncachedMemoryBackend()
    slow = FirstReadGated(variables={"k": "s3cr3t-k"})
    search_path = quiet_path(live, slow)
    first: list[Any] = []
    reader = threading.Thread(target=lambda: first.append(search_path.get_variable("k")))
    reader.start()
    try:
        assert slow.entered.wait(10)  # the first lookup's read is in flight, held at the gate
        search_path.prefetch(variables=["k"])  # another read of the id fills the process tier
        second: list[Any] = []
        hit = threading.Thread(target=lambda: second.append(search_path.get_variable("k")))
        hit.start()
        hit.join(5)
        assert not hit.is_alive(), "a cached answer waited for the read in flight"
        assert second == ["s3cr3t-k"]
    finally:
        slow.gate.set()
        reader.join(10)
    assert first == ["s3cr3t-k"]
