"""Job runner: one queue, one GPU lock, progress / ETA / log tail / cancel, SQLite history.

Every long operation the UI or the API starts (training, inference) becomes a *job*:

* ``submit(kind, title, work, ...)`` stores a row in ``<data>/jobs.sqlite3`` and returns its id
  at once; a single worker thread runs jobs one at a time under the GPU lock (the host's
  ``queue_lock`` inside the WebUI, a plain lock standalone).
* Fair sharing: when both kinds wait, the worker alternates kinds (oldest job of the kind that
  did not run last), so a row of trainings cannot starve a quick portrait, nor the reverse.
* ``work(ctx)`` reports through ``ctx.progress`` (a :class:`~easyphoto.progress.Progress`),
  ``ctx.log`` (lines kept in a tail and in ``<workdir>/job.log``), checks ``ctx.cancel`` and may
  register ``ctx.on_cancel`` (e.g. to stop a training subprocess) and ``ctx.set_pid``.
* Status survives a UI reload or a restart: rows live in SQLite. A job that was queued or running
  when the process died is marked failed with the reason on the next start, its child process
  (if still alive) is stopped, and its cleanup hook (registered by kind) removes its files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sqlite3
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Mapping, Optional

from .errors import EasyPhotoError
from .progress import Cancelled, CancelToken, Progress

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
#: Lines of a job's log kept in the database (the full log stays in the job folder).
TAIL_LINES = 60
#: Finished jobs kept in the history (oldest removed first, with their folders).
HISTORY_LIMIT = 500
#: Minimum seconds between two progress writes of one job.
PROGRESS_INTERVAL_S = 0.2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, title TEXT NOT NULL, status TEXT NOT NULL,
    stage TEXT DEFAULT '', done INTEGER DEFAULT 0, total INTEGER DEFAULT 0,
    fraction REAL DEFAULT 0, eta REAL, message TEXT DEFAULT '', error TEXT,
    log_tail TEXT DEFAULT '', request TEXT DEFAULT '{}', result TEXT,
    workdir TEXT, pid INTEGER, created REAL NOT NULL, started REAL, finished REAL
)"""
_COLUMNS = ("id", "kind", "title", "status", "stage", "done", "total", "fraction", "eta",
            "message", "error", "log_tail", "request", "result", "workdir", "pid", "created",
            "started", "finished")


class JobNotFound(EasyPhotoError, KeyError):
    """No job has this id."""

    http_status = 404

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


@dataclass(frozen=True)
class JobView:
    """A job as stored: what the UI and the API show."""

    id: str
    kind: str
    title: str
    status: str
    stage: str
    done: int
    total: int
    fraction: float
    eta: Optional[float]
    message: str
    error: Optional[str]
    log_tail: str
    request: dict
    result: Optional[dict]
    workdir: Optional[str]
    pid: Optional[int]
    created: float
    started: Optional[float]
    finished: Optional[float]

    @property
    def finished_ok(self) -> bool:
        return self.status == DONE

    @property
    def percent(self) -> float:
        return round(100.0 * self.fraction, 1)

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name in _COLUMNS if name not in ("workdir", "pid")}
        data["percent"] = self.percent
        return data


Work = Callable[["JobContext"], Optional[dict]]
#: Stage → (start, end) share of the whole job, for one overall progress bar.
StageSpans = Mapping[str, tuple[float, float]]


@dataclass
class JobContext:
    """What a running job's ``work`` gets: progress, log, cancel, child pid."""

    job_id: str
    workdir: Path
    cancel: CancelToken
    _runner: "JobRunner"
    _spans: StageSpans
    _tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    _last_write: float = 0.0
    _last_log: float = 0.0
    _best: float = 0.0
    _cancel_hooks: list = field(default_factory=list)

    def progress(self, report: Progress) -> None:
        """Record ``report``; the overall fraction maps the stage into its span."""
        start, end = self._spans.get(report.stage, (0.0, 1.0))
        # never move the bar back (a stage that reports per round restarts at 0)
        self._best = fraction = max(self._best, start + (end - start) * report.fraction)
        now = time.monotonic()
        final = report.total and report.done >= report.total
        if now - self._last_write < PROGRESS_INTERVAL_S and not final:
            return
        self._last_write = now
        self._runner._update(self.job_id, stage=report.stage, done=report.done,
                             total=report.total, fraction=min(1.0, fraction), eta=report.eta,
                             message=report.describe())

    def log(self, line: str) -> None:
        """Append ``line`` to the job's log file and its tail (stored at most 5× a second)."""
        line = line.rstrip("\n")
        self._tail.append(line)
        with open(self.workdir / "job.log", "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        if time.monotonic() - self._last_log >= PROGRESS_INTERVAL_S:
            self.flush()

    def flush(self) -> None:
        """Store the log tail now."""
        self._last_log = time.monotonic()
        self._runner._update(self.job_id, log_tail="\n".join(self._tail))

    def set_pid(self, pid: Optional[int]) -> None:
        """Record the job's child process (stopped if EasyPhoto restarts while it runs)."""
        self._runner._update(self.job_id, pid=pid)

    def on_cancel(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` when the user cancels this job (e.g. stop a subprocess)."""
        self._cancel_hooks.append(hook)
        if self.cancel.cancelled:
            hook()


@dataclass
class _Pending:
    work: Work
    spans: StageSpans


class JobRunner:
    """The queue. ``gpu_lock`` is any context manager (default: a private ``threading.Lock``).

    ``cleanups`` maps a job kind to ``hook(view)`` that removes the files of a job that died
    with the process (run on the next start, before the job is shown as failed).
    """

    def __init__(self, data_dir: os.PathLike, gpu_lock: Optional[ContextManager] = None,
                 cleanups: Optional[Mapping[str, Callable[[JobView], None]]] = None):
        self.data_dir = Path(data_dir)
        self.jobs_dir = self.data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "jobs.sqlite3"
        self.gpu_lock = gpu_lock if gpu_lock is not None else threading.Lock()
        self.cleanups = dict(cleanups or {})
        self._db_lock = threading.RLock()
        self._wake = threading.Condition()
        self._pending: dict[str, _Pending] = {}
        self._contexts: dict[str, JobContext] = {}
        self._last_kind: Optional[str] = None
        self._closed = False
        with self._connect() as db:
            db.execute(_SCHEMA)
        self.recover()
        self._worker = threading.Thread(target=self._loop, name="easyphoto-jobs", daemon=True)
        self._worker.start()

    # -- database ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self._db_lock:
            db = sqlite3.connect(self.db_path, timeout=30)
            try:
                with db:
                    yield db
            finally:
                db.close()

    def _update(self, job_id: str, **values: Any) -> None:
        for key in ("request", "result"):
            if key in values and not isinstance(values[key], (str, type(None))):
                values[key] = json.dumps(values[key], default=str)
        assignments = ", ".join(f"{key} = ?" for key in values)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def _rows(self, where: str = "", args: tuple = (), limit: int = HISTORY_LIMIT) -> list[JobView]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM jobs {where} "
                              "ORDER BY created DESC LIMIT ?", (*args, limit)).fetchall()
        return [_view(row) for row in rows]

    # -- public API ----------------------------------------------------------------------------
    def submit(self, kind: str, title: str, work: Work, *, request: Optional[dict] = None,
               spans: Optional[StageSpans] = None, job_id: Optional[str] = None) -> str:
        """Queue ``work``; returns the job id. ``<jobs>/<id>/`` is the job's folder."""
        if self._closed:
            raise EasyPhotoError("the job runner is shut down")
        job_id = job_id or new_job_id()
        workdir = self.jobs_dir / job_id
        workdir.mkdir(parents=True, exist_ok=True)  # the caller may have staged files
        with self._connect() as db:
            db.execute("INSERT INTO jobs (id, kind, title, status, request, workdir, created) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (job_id, kind, title, QUEUED, json.dumps(request or {}, default=str),
                        str(workdir), time.time()))
        with self._wake:
            self._pending[job_id] = _Pending(work, dict(spans or {}))
            self._wake.notify_all()
        self._prune()
        return job_id

    def get(self, job_id: str) -> JobView:
        rows = self._rows("WHERE id = ?", (str(job_id),), 1)
        if not rows:
            raise JobNotFound(f"job {job_id!r} does not exist (it may have been removed from "
                              "the history)")
        return rows[0]

    def list(self, limit: int = 50, kind: Optional[str] = None) -> list[JobView]:
        if kind:
            return self._rows("WHERE kind = ?", (kind,), limit)
        return self._rows(limit=limit)

    def cancel(self, job_id: str) -> JobView:
        """Cancel a queued job at once; ask a running one to stop (it ends as ``cancelled``)."""
        view = self.get(job_id)
        with self._wake:
            if self._pending.pop(job_id, None) is not None:
                self._update(job_id, status=CANCELLED, finished=time.time(),
                             message="cancelled before it started")
                return self.get(job_id)
            context = self._contexts.get(job_id)
        if context is not None:
            context.cancel.cancel()
            for hook in list(context._cancel_hooks):
                hook()
            self._update(job_id, message="cancelling…")
        return self.get(job_id) if context else view

    def wait(self, job_id: str, timeout: Optional[float] = None, poll: float = 0.05) -> JobView:
        """Block until the job has finished (or ``timeout`` seconds passed); returns its view."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            view = self.get(job_id)
            if view.status in FINISHED or (deadline is not None and time.monotonic() > deadline):
                return view
            time.sleep(poll)

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs; cancel what runs; wait a little for the worker."""
        self._closed = True
        with self._wake:
            for job_id in list(self._pending):
                self._pending.pop(job_id)
                self._update(job_id, status=CANCELLED, finished=time.time(),
                             message="EasyPhoto shut down before this job started")
            running = list(self._contexts)
            self._wake.notify_all()
        for job_id in running:
            self.cancel(job_id)
        self._worker.join(timeout)

    # -- recovery after a restart --------------------------------------------------------------
    def recover(self) -> list[str]:
        """Mark jobs left queued/running by a dead process as failed; clean their files."""
        stale = self._rows("WHERE status IN (?, ?)", (QUEUED, RUNNING))
        for view in stale:
            _stop_orphan(view.pid)
            hook = self.cleanups.get(view.kind)
            if hook is not None:
                try:
                    hook(view)
                except Exception:  # noqa: BLE001 — recovery must go on for the other jobs
                    log.exception("cleanup of job %s failed", view.id)
            reason = ("EasyPhoto stopped while this job was running; its unfinished files "
                      "were removed" if view.status == RUNNING else
                      "EasyPhoto stopped before this job started")
            self._update(view.id, status=FAILED, finished=time.time(), error=reason,
                         message=reason, pid=None)
        return [view.id for view in stale]

    # -- the worker ----------------------------------------------------------------------------
    def _next(self) -> Optional[tuple[str, _Pending]]:
        with self._wake:
            while not self._pending and not self._closed:
                self._wake.wait(1.0)
            if self._closed:
                return None
            order = self._rows("WHERE status = ?", (QUEUED,))[::-1]  # oldest first
            queued = [v for v in order if v.id in self._pending]
            if not queued:
                return None
            other = [v for v in queued if v.kind != self._last_kind]
            chosen = (other or queued)[0]
            self._last_kind = chosen.kind
            return chosen.id, self._pending.pop(chosen.id)

    def _loop(self) -> None:
        while not self._closed:
            picked = self._next()
            if picked is not None:
                self._run(*picked)

    def _run(self, job_id: str, pending: _Pending) -> None:
        context = JobContext(job_id, self.jobs_dir / job_id, CancelToken(), self, pending.spans)
        with self._wake:
            self._contexts[job_id] = context
        self._update(job_id, status=RUNNING, started=time.time(), message="waiting for the GPU")
        try:
            with self.gpu_lock:
                context.cancel.check()
                self._update(job_id, message="started")
                result = pending.work(context) or {}
            self._update(job_id, status=DONE, finished=time.time(), fraction=1.0, eta=0.0,
                         result=result, message="finished", pid=None)
        except Cancelled as error:
            self._update(job_id, status=CANCELLED, finished=time.time(), error=str(error),
                         message="cancelled", pid=None)
        except Exception as error:  # noqa: BLE001 — every failure becomes the job's message
            if not isinstance(error, EasyPhotoError):
                log.exception("job %s failed", job_id)
            self._update(job_id, status=FAILED, finished=time.time(), error=str(error),
                         message=str(error).splitlines()[0] if str(error) else "failed",
                         pid=None)
        finally:
            context.flush()
            with self._wake:
                self._contexts.pop(job_id, None)

    def _prune(self) -> None:
        with self._connect() as db:
            old = db.execute("SELECT id, workdir FROM jobs WHERE status IN (?, ?, ?) "
                             "ORDER BY created DESC LIMIT -1 OFFSET ?",
                             (*FINISHED, HISTORY_LIMIT)).fetchall()
            for job_id, workdir in old:
                db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                if workdir and Path(workdir).parent == self.jobs_dir:
                    _remove_tree(Path(workdir))


def new_job_id() -> str:
    """A fresh job id (16 hex digits), e.g. to stage a job's files before submitting it."""
    return uuid.uuid4().hex[:16]


def _view(row: tuple) -> JobView:
    data = dict(zip(_COLUMNS, row))
    data["request"] = json.loads(data["request"] or "{}")
    data["result"] = json.loads(data["result"]) if data["result"] else None
    data["message"] = data["message"] or ""
    data["log_tail"] = data["log_tail"] or ""
    data["stage"] = data["stage"] or ""
    return JobView(**data)


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _is_ours(pid: int) -> bool:
    """Whether ``pid`` is alive and runs EasyPhoto (never signal a recycled pid of another)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"easyphoto" in cmdline


def _stop_orphan(pid: Optional[int]) -> None:
    """Stop the process group of a job's child left running by a dead EasyPhoto."""
    if not pid or not _is_ours(pid):
        return
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while _is_ours(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
