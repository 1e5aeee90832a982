"""Following a job from a generator handler: poll ``service.job(id)``, yield on every change.

Works the same in every gradio (no ``every=``, no timers): the Start button's handler submits
the job and then iterates :func:`follow`; a page (re)load does the same for the latest job.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from ..jobs import FINISHED, JobView

#: Seconds between two polls of a job's status.
POLL_S = 0.5


def _key(view: JobView) -> tuple:
    return (view.status, view.stage, view.done, view.total, round(view.fraction, 4),
            view.message, view.log_tail, view.error, None if view.eta is None else int(view.eta))


def follow(service: Any, job_id: str, show: Callable[[JobView], dict],
           poll_s: float = POLL_S) -> Iterator[dict]:
    """``show(view)`` for the job's first state and each change, until it has finished.

    Stops early, leaving the last state shown, when a newer job of the same kind was
    submitted (its own follower shows that one).
    """
    last = None
    while True:
        view = service.job(job_id)
        key = _key(view)
        if key != last:
            last = key
            yield show(view)
        if view.status in FINISHED or _superseded(service, view):
            return
        time.sleep(poll_s)


def _superseded(service: Any, view: JobView) -> bool:
    newest = service.jobs.list(limit=1, kind=view.kind)
    return bool(newest) and newest[0].id != view.id and newest[0].created > view.created


def latest(service: Any, kind: str) -> JobView | None:
    """The newest job of ``kind`` (or ``None``)."""
    views = service.jobs.list(limit=1, kind=kind)
    return views[0] if views else None


def cancel_job(service: Any, job_id: Any, idle_message: str) -> dict:
    """Cancel the job a tab follows; ``{"message": ...}`` for the tab (``idle_message`` when
    there is none)."""
    from . import render

    if not job_id:
        return {"message": render.message(idle_message, ok=None)}
    view = service.cancel(job_id)
    return {"message": render.message(f"{view.title}: {view.message or view.status}.", ok=None)}
