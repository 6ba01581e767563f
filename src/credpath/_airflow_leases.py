"""Airflow listener: revoke the leases a task process holds when the task ends, success or failure.

Registered by the credpath plugin (``CredpathPlugin.listeners``). Airflow 3 calls these hooks in the task's
own process, the one that minted the leases (``credpath._leases`` keeps one lease per process), so the
database users and Vault leases of a task are gone when the task is, whether or not the process then exits
through ``atexit``. A task killed outright revokes nothing: its leases expire at their TTL.

A lease shared per node or per deployment (``share``) is NOT revoked: other tasks use it. The task only
stops using it (a renewer hands its role to another user at once); the last user's lease expires at its TTL.
"""

from __future__ import annotations

import logging
from typing import Any

import pluggy

# Airflow's own marker (``airflow.listeners.hookimpl`` is this): pluggy comes with Airflow, and the module
# imports without Airflow loaded.
hookimpl = pluggy.HookimplMarker("airflow")

__all__ = ["hookimpl", "on_task_instance_failed", "on_task_instance_success"]

log = logging.getLogger("credpath.airflow_leases")


def _revoke(task_instance: Any) -> None:
    from credpath import _lease_sharing, _leases

    try:
        _lease_sharing.release_all()  # shared leases: released, never revoked
        revoked = _leases.revoke_all()
    except Exception as exc:  # a listener must never fail the task; what is left expires at its TTL
        log.warning(
            "credpath: revoking the task's leases failed (%s); they expire at their TTL", type(exc).__name__
        )
        return
    if revoked:
        log.info("credpath: revoked %d lease(s) of task %s", revoked, getattr(task_instance, "task_id", "?"))


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    _revoke(task_instance)


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    _revoke(task_instance)
