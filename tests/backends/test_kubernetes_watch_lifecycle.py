"""The Kubernetes watches of a process: stopping them all, and restarting them in a forked child (against
the HTTP fake of the API server)."""

from __future__ import annotations

import time
from typing import Any

from credpath.backends import _kubernetes_watch
from tests.backends._pools import idle_ports


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


def _idle_ports(backend: Any) -> set[int]:
    """Local ports of the idle keep-alive connections in ``backend``'s connection pools."""
    return idle_ports(backend.api.rest_client.pool_manager)


def _child_reads(backend: Any, results: Any) -> None:
    try:
        password = backend.get_connection("other_conn").password
        results.put((password, _idle_ports(backend)))
    except BaseException as exc:
        results.put((repr(exc), set()))


def test_a_forked_child_sends_nothing_on_its_parents_sockets(kubernetes_secrets_harness: Any) -> None:
    """A child inherits the parent's pooled keep-alive sockets: a request it sent on one would be answered
    to whichever process reads first (the parent's watch stream read as a LIST answer, a LIST answer read
    as a watch: both stall). The child's calls go on connections of its own."""
    import multiprocessing

    harness = kubernetes_secrets_harness
    harness.seed("connection", "fork_conn", "postgres://u:pw-s3cr3t-f0@db:5432/d")
    harness.seed("connection", "other_conn", "postgres://u:pw-s3cr3t-f1@db:5432/d")
    backend = harness.make_backend()
    assert backend.get_connection("fork_conn").password == "pw-s3cr3t-f0"
    parents = _idle_ports(backend)
    assert parents, "the parent keeps its connection for the next call"
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_reads, args=(backend, results))
    child.start()
    try:
        password, childs = results.get(timeout=30)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert password == "pw-s3cr3t-f1"
    assert childs and not childs & parents, f"the child used the parent's sockets {childs & parents}"
    # and the parent's own connection still serves the parent
    assert backend.get_connection("other_conn").password == "pw-s3cr3t-f1"
    assert _idle_ports(backend) == parents


def test_a_forked_child_builds_its_client_though_the_lock_was_held_at_the_fork(
    kubernetes_secrets_harness: Any,
) -> None:
    """The client lock held at the fork (by any thread of the parent) is never released in the child."""
    import multiprocessing

    kubernetes_secrets_harness.seed("connection", "other_conn", "postgres://u:pw-s3cr3t-f1@db:5432/d")
    backend = kubernetes_secrets_harness.make_backend()
    backend.prepare()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_reads, args=(backend, results))
    try:
        with backend._lock:
            child.start()
        password, _ = results.get(timeout=20)
    finally:
        child.join(10)
        if child.is_alive():  # stuck on the inherited lock
            child.kill()
    assert password == "pw-s3cr3t-f1"


def _child_waits_for(path: Any, ready: Any, results: Any) -> None:
    assert path.get_connection("fork_conn").password == "pw-s3cr3t-w0"
    ready.set()
    started = time.monotonic()
    try:
        _wait(lambda: path.get_connection("fork_conn").password == "pw-s3cr3t-w1", "no change", 15.0)
    except AssertionError:
        results.put(None)
    else:
        results.put(time.monotonic() - started)


def test_watches_survive_a_fork_between_the_parents_list_and_its_watch(
    kubernetes_secrets_harness: Any, monkeypatch: Any
) -> None:
    """The fork falls after the parent's watch listed and before it opened its stream (a busy process
    deschedules the watch thread there): both processes then take the same idle socket from their copies
    of the pool, one for its WATCH, the other for its LIST. Each must still hear a change within seconds."""
    import multiprocessing
    import os

    from kubernetes import client

    from credpath._search_path import SearchPath

    harness = kubernetes_secrets_harness
    harness.seed("connection", "fork_conn", "postgres://u:pw-s3cr3t-w0@db:5432/d")
    parent = os.getpid()
    original = _kubernetes_watch.Watch._watch_once
    delayed: list[Any] = []

    def descheduled(watch: Any) -> None:
        if os.getpid() == parent and watch not in delayed:
            delayed.append(watch)
            time.sleep(0.2)  # the fork below happens meanwhile
        original(watch)

    monkeypatch.setattr(_kubernetes_watch.Watch, "_watch_once", descheduled)
    path = SearchPath([("k8s", harness.make_backend(watch=True))])
    assert path.get_connection("fork_conn").password == "pw-s3cr3t-w0"
    _wait(lambda: delayed, "the parent's watch did not list")
    context = multiprocessing.get_context("fork")
    ready, results = context.Event(), context.Queue()
    child = context.Process(target=_child_waits_for, args=(path, ready, results))
    child.start()
    try:
        assert ready.wait(30)
        here = f"/namespaces/{harness.namespace}/"
        _wait(
            lambda: sum(1 for m, p in list(harness.fake.requests) if m == "WATCH" and here in p) >= 2,
            "the two watches did not open",
        )
        time.sleep(0.5)  # the streams are up (a shared socket fails here)
        name = harness.secret_name("connection", "fork_conn")
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            string_data={"conn_uri": "postgres://u:pw-s3cr3t-w1@db:5432/d"},
        )
        harness.client.replace_namespaced_secret(name, harness.namespace, body)
        _wait(
            lambda: path.get_connection("fork_conn").password == "pw-s3cr3t-w1",
            "the parent's watch did not bring the change within 3 s",
            3.0,
        )
        waited = results.get(timeout=20)
        assert waited is not None and waited < 15.0, "the child's watch did not bring the change"
    finally:
        child.join(20)
        if child.is_alive():
            child.kill()
        _kubernetes_watch.stop_all()
