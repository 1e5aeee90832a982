"""Training runs in a subprocess: progress events, log file, cancel, swap-in on success only.

Parent side (:class:`TrainingRun`): validates the request, holds the user id's lock for the
whole run, creates a fresh run folder, starts ``python -m easyphoto.train`` and reads its event
lines. On success the run folder replaces the user's folder in one swap; on failure or cancel
the run folder is removed, the previous LoRA is untouched, and the error carries the reason and
the tail of the log (kept under ``<data>/logs/``).

Child side: prints one JSON event per line, prefixed with :data:`EVENT_PREFIX`
(``progress``, ``result``, ``error``); everything else it prints goes to the log only.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Optional, Sequence

from ..errors import EasyPhotoError, UserExists
from ..params import TrainRequest
from ..progress import Cancelled, Progress, ProgressFn, no_progress
from ..store import UserRecord, UserStore, atomic_write_json, user_key
from .env import training_python

log = logging.getLogger(__name__)

EVENT_PREFIX = "@@easyphoto "
#: Lines of the log returned with a failure.
LOG_TAIL_LINES = 40
#: Seconds a cancelled child gets to stop cleanly before it is killed.
CANCEL_GRACE_S = 20.0


class TrainingFailed(EasyPhotoError):
    """Training did not produce a LoRA. ``log_tail`` holds the last lines of its log."""

    http_status = 500

    def __init__(self, message: str, log_tail: str = "", log_path: Optional[Path] = None):
        super().__init__(message)
        self.log_tail, self.log_path = log_tail, log_path

    def __str__(self) -> str:
        text = self.args[0]
        return f"{text}\n--- last lines of the training log ---\n{self.log_tail}" if self.log_tail else text


@dataclass
class TrainingResult:
    """A finished training: the user's record after the swap."""

    record: UserRecord
    log_path: Path

    def to_dict(self) -> dict:
        meta = self.record.meta
        return {"user_id": self.record.user_id, "lora": str(self.record.lora_path),
                "face_id": str(self.record.face_id_path), "log": str(self.log_path),
                "steps": meta.get("steps"), "fused_checkpoints": meta.get("fusion"),
                "timings": meta.get("timings")}


def emit_event(kind: str, payload: dict, stream: Optional[IO[str]] = None) -> None:
    """Child side: write one event line (flushed at once)."""
    stream = stream or sys.stdout
    stream.write(EVENT_PREFIX + json.dumps({"event": kind, **payload}, default=str) + "\n")
    stream.flush()


def parse_event(line: str) -> Optional[dict]:
    """Parent side: the event in ``line``, or ``None`` for an ordinary log line."""
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        event = json.loads(line[len(EVENT_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


class TrainingRun:
    """One training of one user id, in a subprocess. Use :meth:`run`, or start/wait/cancel."""

    def __init__(self, store: UserStore, request: TrainRequest, photos: Sequence[Path],
                 logs_dir: Path, progress: ProgressFn = no_progress,
                 models_dir: Optional[Path] = None, python: Optional[str] = None,
                 env: Optional[dict] = None, on_line: Optional[Callable[[str], None]] = None):
        self.store, self.request = store, request.validate()
        self.on_line = on_line
        self.photos = [Path(p) for p in photos]
        self.logs_dir, self.models_dir = Path(logs_dir), models_dir
        self.progress, self.python, self.env = progress, python, env
        self.run_dir: Optional[Path] = None
        self.log_path: Optional[Path] = None
        self._process: Optional[subprocess.Popen] = None
        self._cancelled = threading.Event()
        self._lock_cm = None

    @property
    def pid(self) -> Optional[int]:
        """The training child's pid (also its process group id) once started."""
        return self._process.pid if self._process is not None else None

    def run(self) -> TrainingResult:
        """Start, wait, and return the result (raises TrainingFailed / Cancelled)."""
        self.start()
        return self.wait()

    # -- parent steps ---------------------------------------------------------------------------
    def start(self) -> None:
        """Check the id, take its lock, make the run folder, launch the child."""
        user_id = self.request.user_id
        if not self.photos:
            raise TrainingFailed("no photos were given: upload 5-20 photos of one person")
        self._lock_cm = self.store.lock(user_id)
        self._lock_cm.__enter__()
        try:
            if self.store.exists(user_id) and not self.request.overwrite:
                raise UserExists(f"user id {user_id!r} already exists: choose another id or "
                                 "allow overwriting (its current LoRA is kept until the new one "
                                 "is ready)")
            self.run_dir = self.store.begin_run(user_id)
            self.log_path = self.run_dir / "train.log"
            self._launch()
        except BaseException:
            self._finish_failed()
            raise

    def _launch(self) -> None:
        assert self.run_dir is not None and self.log_path is not None
        atomic_write_json(self.run_dir / "request.json", self.request.to_dict())
        atomic_write_json(self.run_dir / "photos.json", [str(p) for p in self.photos])
        python = self.python or training_python(self.store.users_dir.parent)
        command = [python, "-m", "easyphoto.train", "--run-dir", str(self.run_dir), "--watch-parent"]
        if self.models_dir:
            command += ["--models-dir", str(self.models_dir)]
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        log.info("training %s: %s", self.request.user_id, " ".join(command))
        self._process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env,
            start_new_session=True, bufsize=1)

    def wait(self) -> TrainingResult:
        """Follow the child's events to its end; swap in on success."""
        assert self._process is not None and self._process.stdout is not None
        tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
        result, error = None, None
        with open(self.log_path, "a", encoding="utf-8") as log_file:
            for line in self._process.stdout:
                event = parse_event(line)
                if event is None:
                    log_file.write(line)
                    tail.append(line.rstrip("\n"))
                    if self.on_line is not None:
                        self.on_line(line)
                elif event["event"] == "progress":
                    self.progress(Progress(**{k: v for k, v in event.items() if k != "event"}))
                elif event["event"] == "result":
                    result = event
                elif event["event"] == "error":
                    error = event
        code = self._process.wait()
        if self._process.stdin is not None:
            self._process.stdin.close()
        if code == 0 and result is not None and not self._cancelled.is_set():
            return self._finish_ok(result)
        self._raise_failure(code, error, "\n".join(tail))

    def cancel(self) -> None:
        """Ask the child to stop (SIGTERM, then SIGKILL after a grace period)."""
        self._cancelled.set()
        process = self._process
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        threading.Timer(CANCEL_GRACE_S, self._kill_if_alive).start()

    def _kill_if_alive(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGKILL)

    # -- endings ----------------------------------------------------------------------------------
    def _finish_ok(self, result: dict) -> TrainingResult:
        try:
            meta = json.loads((self.run_dir / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        meta.pop("user_id", None)
        log_copy = self._keep_log()
        try:
            record = self.store.commit_run(self.request.user_id, self.run_dir, **meta)
        finally:
            self._release()
        return TrainingResult(record, log_copy)

    def _raise_failure(self, code: int, error: Optional[dict], tail: str) -> None:
        log_copy = self._finish_failed()
        if self._cancelled.is_set() or (error and error.get("type") == "Cancelled"):
            raise Cancelled(f"training of {self.request.user_id!r} was cancelled; the previous "
                            "LoRA (if any) is unchanged")
        reason = error["message"] if error else f"the training process ended with code {code}"
        raise TrainingFailed(f"training of {self.request.user_id!r} failed: {reason}", tail, log_copy)

    def _finish_failed(self) -> Optional[Path]:
        """Keep the log, remove the run folder, release the lock."""
        log_copy = None
        try:
            if self.run_dir is not None and self.run_dir.exists():
                log_copy = self._keep_log()
                self.store.abort_run(self.run_dir)
        finally:
            self._release()
        return log_copy

    def _keep_log(self) -> Path:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.logs_dir / f"train-{user_key(self.request.user_id)}-{stamp}.log"
        if self.log_path is not None and self.log_path.exists():
            shutil.copyfile(self.log_path, target)
        else:
            target.write_text("", encoding="utf-8")
        return target

    def _release(self) -> None:
        if self._lock_cm is not None:
            self._lock_cm.__exit__(None, None, None)
            self._lock_cm = None
