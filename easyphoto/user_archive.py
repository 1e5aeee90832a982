"""Export / import a user id as one zip archive.

The archive holds ``easyphoto-user.json`` (format, user id, every file with its size and
sha256), ``lora.safetensors``, ``face_id.jpg``, ``ref.jpg``, ``meta.json`` and — only when asked —
the training ``photos/``. Import trusts nothing in it: member names must be on the allow-list
(no absolute paths, no ``..``), sizes are capped before anything is extracted, each file's
sha256 must match the manifest, the LoRA must be a readable safetensors file (its header is
parsed; nothing is unpickled) and the id is validated like any other. The new id is built
aside and swapped in (the store's run mechanism), so an existing id is never half-replaced.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import zipfile
from pathlib import Path
from typing import Optional

from .errors import InvalidRequest, UserExists
from .store import UserRecord, UserStore, atomic_write_json, user_key, validate_user_id

FORMAT = "easyphoto-user/1"
MANIFEST = "easyphoto-user.json"
CORE_FILES = ("lora.safetensors", "face_id.jpg", "ref.jpg", "meta.json")
PHOTO_NAME = re.compile(r"^photos/[A-Za-z0-9_.-]{1,100}$")
MAX_MEMBER_BYTES = 1 << 30
MAX_TOTAL_BYTES = 2 << 30
MAX_MEMBERS = 200


class ArchiveError(InvalidRequest):
    """The archive is not a usable EasyPhoto user archive (the message says why)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def export_user(store: UserStore, user_id: str, out_dir: Path,
                include_photos: bool = False) -> Path:
    """Write ``<out_dir>/<id>-<date>.zip``; training photos only with ``include_photos``."""
    record = store.get(user_id)
    files = [name for name in CORE_FILES if (record.path / name).is_file()]
    if "lora.safetensors" not in files:
        raise InvalidRequest(f"user id {user_id!r} has no trained LoRA to export")
    if include_photos and (record.path / "photos").is_dir():
        files += [f"photos/{p.name}" for p in sorted((record.path / "photos").iterdir())
                  if p.is_file() and PHOTO_NAME.match(f"photos/{p.name}")]
    manifest = {"format": FORMAT, "user_id": record.user_id,
                "files": {name: {"size": (record.path / name).stat().st_size,
                                 "sha256": _sha256(record.path / name)} for name in files}}
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = out_dir / f"{user_key(record.user_id)}-{stamp}.zip"
    partial = target.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=1))
        for name in files:
            archive.write(record.path / name, name)
    partial.replace(target)
    return target


def _read_manifest(archive: zipfile.ZipFile, label: str) -> dict:
    try:
        manifest = json.loads(archive.read(MANIFEST))
    except KeyError:
        raise ArchiveError(f"{label} is not an EasyPhoto user archive ({MANIFEST} is "
                           "missing)") from None
    except ValueError:
        raise ArchiveError(f"{label}: {MANIFEST} is not valid JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArchiveError(f"{label}: unsupported archive format "
                           f"{manifest.get('format') if isinstance(manifest, dict) else None!r}"
                           f" (expected {FORMAT!r})")
    return manifest


def _check_members(archive: zipfile.ZipFile, manifest: dict, label: str) -> dict:
    files = manifest.get("files")
    if not isinstance(files, dict) or "lora.safetensors" not in files:
        raise ArchiveError(f"{label}: the archive has no lora.safetensors")
    infos = {info.filename: info for info in archive.infolist()}
    if len(infos) > MAX_MEMBERS:
        raise ArchiveError(f"{label}: {len(infos)} files; at most {MAX_MEMBERS} are accepted")
    for name in files:
        if name not in CORE_FILES and not PHOTO_NAME.match(name):
            raise ArchiveError(f"{label}: unexpected file {name!r} in the archive")
        if name not in infos:
            raise ArchiveError(f"{label}: {name!r} is listed but missing")
        if infos[name].file_size > MAX_MEMBER_BYTES:
            raise ArchiveError(f"{label}: {name!r} is too large ({infos[name].file_size} bytes)")
    if sum(infos[name].file_size for name in files) > MAX_TOTAL_BYTES:
        raise ArchiveError(f"{label}: the archive unpacks to more than "
                           f"{MAX_TOTAL_BYTES >> 30} GiB")
    return files


def _check_lora(path: Path, label: str) -> None:
    from .train.lora_io import read_kohya_metadata

    try:
        read_kohya_metadata(path)
    except Exception as error:  # noqa: BLE001 — any parse failure means a bad file
        raise ArchiveError(f"{label}: lora.safetensors is not a valid safetensors file "
                           f"({error})") from None


def _extract(archive: zipfile.ZipFile, files: dict, run_dir: Path, label: str) -> dict:
    for name, expected in files.items():
        target = run_dir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(name) as source, open(target, "wb") as sink:
            copied = 0
            for chunk in iter(lambda: source.read(1 << 20), b""):
                copied += len(chunk)
                if copied > MAX_MEMBER_BYTES:
                    raise ArchiveError(f"{label}: {name!r} is larger than it claims")
                sink.write(chunk)
        if _sha256(target) != str(expected.get("sha256", "")):
            raise ArchiveError(f"{label}: {name!r} does not match its checksum (damaged "
                               "archive?)")
    _check_lora(run_dir / "lora.safetensors", label)
    try:
        meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    return meta if isinstance(meta, dict) else {}


def import_user(store: UserStore, archive_path: Path, user_id: Optional[str] = None,
                overwrite: bool = False) -> UserRecord:
    """Import an archive as ``user_id`` (default: the id stored in it)."""
    label = archive_path.name
    if not zipfile.is_zipfile(archive_path):
        raise ArchiveError(f"{label} is not a zip archive")
    with zipfile.ZipFile(archive_path) as archive:
        manifest = _read_manifest(archive, label)
        files = _check_members(archive, manifest, label)
        user_id = validate_user_id(user_id or manifest.get("user_id"))
        with store.lock(user_id):
            if store.exists(user_id) and not overwrite:
                raise UserExists(f"user id {user_id!r} already exists: import it under another "
                                 "id or allow overwriting")
            run_dir = store.begin_run(user_id)
            try:
                meta = _extract(archive, files, run_dir, label)
                meta.pop("user_id", None)
                meta["imported_from"] = label
                atomic_write_json(run_dir / "meta.json", meta)
                return store.commit_run(user_id, run_dir, **meta)
            except BaseException:
                store.abort_run(run_dir)
                raise
