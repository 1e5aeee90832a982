"""User-id store: one folder per user id, atomic writes, one lock per id, runs swapped in whole.

Layout under ``<data_root>/users/``::

    <key>/                    the user's folder (``key`` is derived from the id, never the raw id)
        meta.json             {"user_id", "created", "updated", "status", ...}
        photos/ dataset/ checkpoints/ validation/ ref.jpg face_id.jpg lora.safetensors
    .<key>.run-<stamp>/       a training run being built (swapped in whole on success)
    .<key>.old-<stamp>/       the previous folder during a swap (restored if a swap was cut off)
    .locks/<key>.lock         the id's lock file

The folder key is the case-folded id with dots replaced, plus a hash of the case-folded id, so
ids that differ only in case collide (and are refused) and no id can name a path outside
``users/`` or a reserved device name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

from filelock import FileLock, Timeout

from .errors import InvalidUserId, UserBusy, UserExists, UserNotFound

_ID_PATTERN = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
RESERVED_IDS = ("none",)
META = "meta.json"


def validate_user_id(user_id: Any) -> str:
    """Return ``user_id`` if it is a valid id, else raise ``InvalidUserId`` saying why."""
    if not isinstance(user_id, str):
        raise InvalidUserId(f"user id must be text, got {type(user_id).__name__}")
    if not user_id:
        raise InvalidUserId("user id is empty: use 1-64 letters, digits, '_', '-' or '.'")
    if len(user_id) > 64:
        raise InvalidUserId(f"user id is {len(user_id)} characters long; the limit is 64")
    if not _ID_PATTERN.fullmatch(user_id):
        bad = sorted({c for c in user_id if not re.fullmatch(r"[A-Za-z0-9_.\-]", c)})
        raise InvalidUserId(f"user id {user_id!r} contains {' '.join(map(repr, bad))}: use only "
                            "letters, digits, '_', '-' and '.'")
    if user_id.lower() in RESERVED_IDS:
        raise InvalidUserId(f"user id {user_id!r} is reserved (it means 'no user')")
    if user_id.startswith("."):
        raise InvalidUserId(f"user id {user_id!r} must not start with '.'")
    return user_id


def user_key(user_id: str) -> str:
    """The folder name of ``user_id``: safe, case-insensitive, never the raw id."""
    folded = validate_user_id(user_id).casefold()
    digest = hashlib.sha256(folded.encode()).hexdigest()[:10]
    return f"{folded.replace('.', '_')[:40]}-{digest}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Union[str, os.PathLike], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder + fsync + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: Union[str, os.PathLike], payload: Any) -> Path:
    text = json.dumps(payload, indent=2, sort_keys=True, default=str, ensure_ascii=False)
    return atomic_write_bytes(path, text.encode("utf-8"))


@dataclass(frozen=True)
class UserRecord:
    """A user id as stored: its folder and its ``meta.json``."""

    user_id: str
    path: Path
    meta: dict

    @property
    def lora_path(self) -> Path:
        return self.path / "lora.safetensors"

    @property
    def face_id_path(self) -> Path:
        return self.path / "face_id.jpg"

    @property
    def ref_path(self) -> Path:
        return self.path / "ref.jpg"

    def to_dict(self) -> dict:
        return {"user_id": self.user_id, "path": str(self.path), **self.meta}


class UserStore:
    """User ids on disk under ``<root>/users``. Safe for several processes at once."""

    def __init__(self, root: Union[str, os.PathLike]):
        self.users_dir = Path(root) / "users"

    # -- paths and locks ---------------------------------------------------------------------
    def user_dir(self, user_id: str) -> Path:
        return self.users_dir / user_key(user_id)

    @contextlib.contextmanager
    def lock(self, user_id: str, timeout: float = 0.0) -> Iterator[None]:
        """Hold the id's lock; ``UserBusy`` if another process/thread holds it past ``timeout``."""
        lock_dir = self.users_dir / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_dir / f"{user_key(user_id)}.lock"), thread_local=False)
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            raise UserBusy(f"user id {user_id!r} is busy (a training run or another change "
                           "holds it); try again when it finishes") from None
        try:
            yield
        finally:
            lock.release()

    # -- queries -----------------------------------------------------------------------------
    def _read(self, folder: Path) -> Optional[UserRecord]:
        try:
            meta = json.loads((folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("user_id"), str):
            return None
        return UserRecord(meta["user_id"], folder, meta)

    def get(self, user_id: str) -> UserRecord:
        """The stored record; ``UserNotFound`` if the id does not exist."""
        self.recover(user_id)
        record = self._read(self.user_dir(user_id))
        if record is None:
            raise UserNotFound(f"user id {user_id!r} does not exist")
        return record

    def exists(self, user_id: str) -> bool:
        try:
            self.get(user_id)
        except UserNotFound:
            return False
        return True

    def list(self) -> list[UserRecord]:
        """All stored ids, sorted case-insensitively."""
        if not self.users_dir.is_dir():
            return []
        records = [self._read(p) for p in self.users_dir.iterdir()
                   if p.is_dir() and not p.name.startswith(".")]
        return sorted((r for r in records if r), key=lambda r: r.user_id.casefold())

    # -- changes -----------------------------------------------------------------------------
    def create(self, user_id: str, overwrite: bool = False, **meta: Any) -> UserRecord:
        """Create an empty id (status "new"). An existing id is refused unless ``overwrite``."""
        with self.lock(user_id):
            folder = self.user_dir(user_id)
            existing = self._read(folder)
            if existing and not overwrite:
                same = "" if existing.user_id == user_id else f" (as {existing.user_id!r}; ids " \
                                                             "are case-insensitive)"
                raise UserExists(f"user id {user_id!r} already exists{same}: choose another id "
                                 "or allow overwriting")
            if folder.exists():
                self._remove_tree(folder)
            folder.mkdir(parents=True)
            record_meta = {"user_id": user_id, "created": _now(), "updated": _now(),
                           "status": "new", **meta}
            atomic_write_json(folder / META, record_meta)
            return UserRecord(user_id, folder, record_meta)

    def update_meta(self, user_id: str, **changes: Any) -> UserRecord:
        """Merge ``changes`` into ``meta.json`` atomically (the caller may hold the lock)."""
        record = self.get(user_id)
        meta = {**record.meta, **changes, "user_id": record.user_id, "updated": _now()}
        atomic_write_json(record.path / META, meta)
        return UserRecord(record.user_id, record.path, meta)

    def delete(self, user_id: str) -> None:
        """Remove every file of ``user_id``: its folder, unfinished runs, leftovers, lock."""
        with self.lock(user_id):
            key = user_key(user_id)
            if not (self.users_dir / key).exists() and not self._siblings(key):
                raise UserNotFound(f"user id {user_id!r} does not exist")
            for path in [self.users_dir / key, *self._siblings(key)]:
                self._remove_tree(path)
        with contextlib.suppress(FileNotFoundError):
            (self.users_dir / ".locks" / f"{key}.lock").unlink()

    # -- training runs: build aside, swap in whole -------------------------------------------
    def begin_run(self, user_id: str) -> Path:
        """A fresh, empty folder beside the user's folder for a new run to write into."""
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        run = self.users_dir / f".{user_key(user_id)}.run-{stamp}"
        run.mkdir(parents=True)
        return run

    def commit_run(self, user_id: str, run_dir: Path, **meta: Any) -> UserRecord:
        """Make ``run_dir`` the user's folder (meta written first); the old folder is removed."""
        folder = self.user_dir(user_id)
        previous = self._read(folder)
        created = previous.meta.get("created") if previous else _now()
        atomic_write_json(run_dir / META, {"user_id": user_id, "created": created,
                                           "updated": _now(), "status": "ready", **meta})
        old = None
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{_dt.datetime.now():%Y%m%d-%H%M%S-%f}")
            os.replace(folder, old)
        os.replace(run_dir, folder)
        if old is not None:
            self._remove_tree(old)
        return self.get(user_id)

    def abort_run(self, run_dir: Path) -> None:
        """Remove an unfinished run folder; the user's folder is untouched."""
        self._remove_tree(run_dir)

    def recover(self, user_id: str) -> None:
        """Repair a swap cut off between its two renames: bring the previous folder back."""
        folder = self.user_dir(user_id)
        if folder.exists():
            return
        olds = sorted(p for p in self._siblings(folder.name) if ".old-" in p.name)
        if olds:
            os.replace(olds[-1], folder)

    def _siblings(self, key: str) -> list[Path]:
        if not self.users_dir.is_dir():
            return []
        return [p for p in self.users_dir.iterdir()
                if p.name.startswith(f".{key}.run-") or p.name.startswith(f".{key}.old-")]

    def _remove_tree(self, path: Path) -> None:
        if path.absolute().parent.resolve() != self.users_dir.resolve():
            raise RuntimeError(f"refusing to remove {path}: not directly inside {self.users_dir}")
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
