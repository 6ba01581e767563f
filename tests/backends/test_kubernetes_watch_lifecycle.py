"""The Kubernetes watches of a process: stopping them all, and restarting them in a forked child (against
the HTTP fake of the API server)."""

from __future__ import annotations

import time
from typing import Any

from credpath.backends import _kubernetes_watch


def _wait(condition: Any, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_stop_all_stops_and_forgets_every_watch(kubernetes_secrets_harness: Any) -> None:
    harness = kubernetes_secrets_harness
    first, second = (
        harness.make_backend(watch=True),
        harness.make_backend(watch=True, namespace=f"{harness.namespace}-b"),
    )
    before = harness.fake.watch_requests
    assert first.subscribe_changes(lambda *_: None) and second.subscribe_changes(lambda *_: None)
    watches = [w for backend in (first, second) for w, _ in backend._watching]
    assert len({id(w) for w in watches}) == 2 and all(w.key in _kubernetes_watch._watches for w in watches)
    _wait(lambda: harness.fake.watch_requests >= before + 2, "the streams did not open")

    _kubernetes_watch.stop_all()

    assert not any(w.key in _kubernetes_watch._watches for w in watches)
    assert all(w._stop.is_set() for w in watches)
    harness.fake.drop_watches()  # the open streams end: a running watch would list and watch again
    for watch in watches:
        assert watch._thread is not None
        watch._thread.join(5)
        assert not watch._thread.is_alive()
    opened = harness.fake.watch_requests
    time.sleep(0.3)
    assert harness.fake.watch_requests == opened
    # a backend subscribing afterwards gets a new watch, and closing the stopped ones is harmless
    first.close()
    third = harness.make_backend(watch=True)
    assert third.subscribe_changes(lambda *_: None)
    (fresh,) = [w for w, _ in third._watching]
    assert fresh not in watches and _kubernetes_watch._watches[fresh.key] is fresh
    _kubernetes_watch.stop_all()
