"""Low-level transfers for :mod:`easyphoto.weights` (the only code that opens connections).

* :func:`fetch_url` — streaming HTTP(S) GET with ``Range`` resume into a ``.part`` file (urllib);
* :func:`fetch_hf` — ``huggingface_hub.hf_hub_download`` into a staging folder (it resumes from
  its own ``.incomplete`` files and honours ``HF_ENDPOINT``);
* :func:`fetch_modelscope` — ``modelscope`` snapshot download (optional dependency);
* helpers: :func:`sha256_file`, :func:`publish` (atomic move), :func:`safe_unzip`.

Transfer failures raise :class:`TransferError` with a short reason; the caller turns it into a
``ModelUnavailable`` that tells the user where to put the file by hand.
"""

from __future__ import annotations

import hashlib
import http.client
import inspect
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from . import __version__

logger = logging.getLogger(__name__)

#: ``progress(bytes_done, bytes_total_or_None)``; called from the downloading thread.
ProgressFn = Callable[[int, Optional[int]], None]

CHUNK = 1 << 20


class TransferError(Exception):
    """A download could not complete; ``str()`` is a short reason (not user-facing alone)."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _content_range_start(value: Optional[str]) -> Optional[int]:
    """The first byte of a ``Content-Range: bytes a-b/n`` header, or None."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


def _open(url: str, have: int, timeout: float):
    """Open ``url`` asking for bytes from ``have`` on; returns the response or None on 416."""
    headers = {"User-Agent": f"easyphoto/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (https/http only)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            return None  # the part already holds the whole file; verification decides
        raise TransferError(f"HTTP {exc.code} {exc.reason} from {url}") from exc


def fetch_url(url: str, part: Path, *, timeout: float = 30.0,
              progress: Optional[ProgressFn] = None) -> Path:
    """Download ``url`` into ``part``, resuming from its current length; returns ``part``.

    A server that ignores ``Range`` (answers 200) restarts the file from byte 0; a ``206`` whose
    ``Content-Range`` does not start at our offset is refused. The part file is kept on any
    failure so the next call resumes.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise TransferError(f"unsupported URL scheme in {url}")
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    try:
        response = _open(url, have, timeout)
        if response is None:
            return part
        with response:
            if have and response.status == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != have:
                    raise TransferError(f"server resumed at byte {start}, expected {have}")
            elif have:
                logger.info("server ignored the Range request; restarting %s", part.name)
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            _stream(response, part, have, total, progress)
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets, ...
        reason = getattr(exc, "reason", None) or exc
        raise TransferError(f"cannot download {url}: {reason}") from exc
    return part


def _stream(response, part: Path, have: int, total: Optional[int],
            progress: Optional[ProgressFn]) -> None:
    """Append (or, with ``have == 0``, write) the body of ``response`` to ``part``."""
    done = have
    with open(part, "ab" if have else "wb") as out:
        while True:
            block = response.read(CHUNK)
            if not block:
                break
            out.write(block)
            done += len(block)
            if progress is not None:
                progress(done, total)
    if total is not None and done < total:
        raise TransferError(f"connection closed after {done} of {total} bytes")


def _tqdm_bridge(progress: ProgressFn):
    """A silent tqdm class that forwards huggingface_hub's progress to ``progress``."""
    from tqdm.auto import tqdm

    class _Bridge(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)
            self._total = kwargs.get("total")

        def update(self, n=1):
            self._done += int(n or 0)
            progress(self._done, self._total)

    return _Bridge


def fetch_hf(repo: str, repo_file: str, revision: Optional[str], staging: Path, *,
             endpoint: Optional[str] = None, progress: Optional[ProgressFn] = None) -> Path:
    """``hf_hub_download`` into ``staging`` (resumable); returns the downloaded file's path."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # a declared dependency, but say so clearly if it is missing
        raise TransferError("the huggingface_hub package is not installed") from exc
    params = inspect.signature(hf_hub_download).parameters
    kwargs: dict = {"revision": revision, "local_dir": str(staging)}
    if "local_dir_use_symlinks" in params:  # older huggingface_hub: real files, not cache links
        kwargs["local_dir_use_symlinks"] = False
    if endpoint:
        kwargs["endpoint"] = endpoint
    if progress is not None and "tqdm_class" in params:
        kwargs["tqdm_class"] = _tqdm_bridge(progress)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        got = Path(hf_hub_download(repo, repo_file, **kwargs))
    except Exception as exc:  # noqa: BLE001 - any failure means "not available", with its reason
        raise TransferError(f"{type(exc).__name__}: {exc}") from exc
    if got.is_symlink():  # never move a file out of the shared Hub cache
        real = got.resolve()
        got.unlink()
        shutil.copyfile(real, got)
    return got


def fetch_modelscope(model_id: str, revision: Optional[str], target: Path) -> Path:
    """Snapshot-download a ModelScope model into ``target`` (``<root>/<owner>/<name>``)."""
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError as exc:
        raise TransferError("the optional package 'modelscope' is not installed "
                            "(pip install \"easyphoto[full]\" or pip install modelscope)") from exc
    kwargs = {"revision": revision} if revision else {}
    if "local_dir" in inspect.signature(snapshot_download).parameters:
        kwargs["local_dir"] = str(target)
    else:  # older modelscope: <cache_dir>/<owner>/<name>
        kwargs["cache_dir"] = str(target.parent.parent)
    try:
        got = Path(snapshot_download(model_id, **kwargs))
    except Exception as exc:  # noqa: BLE001
        raise TransferError(f"{type(exc).__name__}: {exc}") from exc
    if got.resolve() != target.resolve():
        logger.warning("modelscope stored %s at %s, expected %s", model_id, got, target)
    return got


def publish(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` atomically (copy + rename when they are on different drives)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dst)
        return
    except OSError:
        if not src.exists():
            raise
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    src.unlink()


def safe_unzip(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into folder ``dest`` (replacing it); refuses paths leaving ``dest``.

    An archive whose entries all sit in one top-level folder named like ``dest`` is flattened,
    so ``buffalo_l.zip`` gives ``buffalo_l/*.onnx`` either way.
    """
    work = dest.with_name(dest.name + ".extracting")
    shutil.rmtree(work, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            for name in names:
                pure = PurePosixPath(name.replace("\\", "/"))
                if pure.is_absolute() or ".." in pure.parts or ":" in name:
                    raise TransferError(f"unsafe path {name!r} in {archive.name}")
            zf.extractall(work)
    except zipfile.BadZipFile as exc:
        raise TransferError(f"{archive.name} is not a valid zip archive ({exc})") from exc
    nested = bool(names) and all(
        len(PurePosixPath(n).parts) > 1 and PurePosixPath(n).parts[0] == dest.name for n in names)
    root = work / dest.name if nested else work
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(root, dest)
    shutil.rmtree(work, ignore_errors=True)
