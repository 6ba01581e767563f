"""Airflow listener: a task that fails drops the ids it read through credpath from every cache tier.

A task that fails because its credential was rotated is retried by Airflow; without this its retry would
be served the same stale copy from the shared tier for up to the TTL. Registered by the credpath plugin
(``CredpathPlugin.listeners``); Airflow calls it in the task's own process, which knows what it read
(:func:`credpath.airflow.note_read`). One store read per id follows, by the retry. Opt out per
deployment with ``[cache] invalidate_failed_tasks = false``.
"""

from __future__ import annotations

import logging
from typing import Any

import pluggy

# Airflow's own marker (``airflow.listeners.hookimpl`` is this): the module imports without Airflow loaded.
hookimpl = pluggy.HookimplMarker("airflow")

__all__ = ["hookimpl", "on_task_instance_failed"]

log = logging.getLogger("credpath.airflow_refresh")


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    from credpath import airflow

    try:
        dropped = airflow.invalidate_reads()
    except Exception as exc:  # a listener must never fail the task; the retry then reads the cache
        log.warning("credpath: dropping the failed task's ids failed (%s)", type(exc).__name__)
        return
    if dropped:
        log.info(
            "credpath: task %s failed; its %d id(s) were dropped from the caches so that its retry reads "
            "the stores",
            getattr(task_instance, "task_id", "?"),
            dropped,
        )
