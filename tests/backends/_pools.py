"""What a client's urllib3 connection pools hold: for the fork tests (a forked child must not send on the
parent's keep-alive sockets)."""

from __future__ import annotations

from typing import Any


def idle_ports(manager: Any) -> set[int]:
    """Local ports of the idle keep-alive connections in a urllib3 ``PoolManager``'s pools."""
    ports = set()
    for key in list(manager.pools.keys()):
        for conn in list(manager.pools[key].pool.queue):
            if conn is not None and conn.sock is not None:
                ports.add(conn.sock.getsockname()[1])
    return ports


def session_idle_ports(session: Any) -> set[int]:
    """:func:`idle_ports` over every adapter of a ``requests.Session``."""
    return {port for adapter in session.adapters.values() for port in idle_ports(adapter.poolmanager)}
