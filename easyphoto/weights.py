"""Model files: where they live, whether they are there, and fetching them (the only place).

A :class:`ModelStore` is an explicit object (no module state) built from a models root and,
inside the WebUI, the host's model folders::

    store = ModelStore(models_root("..."), {"Stable-diffusion": Path(...), "Lora": Path(...),
                                             "ControlNet": Path(...), "VAE": Path(...)})
    ckpt = store.require("sd15_base")           # Path, or ModelUnavailable saying what to do
    store.download("vae_sd15", progress=cb)     # resumable, sha256-verified, atomic

Path rule: a spec with a ``host_folder`` that the mapping names goes in that folder; every
other spec goes in ``<models root>/<spec.subdir>/``. The standalone default of the four host
folders is therefore ``<models root>/Stable-diffusion`` etc.

Network switches (read at call time): ``EASYPHOTO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` refuse every
download; ``HF_ENDPOINT`` points Hub downloads at a mirror; ``EASYPHOTO_MODEL_URL_BASE`` replaces
the folder part of plain-URL sources (``<base>/<file name of the URL>``); ModelScope honours its
own ``MODELSCOPE_DOMAIN``. Licences that do not clearly allow commercial use must be accepted
(``accept_licence=True``) before the first download.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from .errors import ChecksumMismatch, EasyPhotoError, InvalidRequest, ModelUnavailable
from .weights_fetch import (ProgressFn, TransferError, fetch_hf, fetch_modelscope, fetch_url,
                            publish, safe_unzip, sha256_file)
from .weights_registry import HOST_FOLDERS, REGISTRY, ModelSpec, all_specs, spec_map

__all__ = ["ModelStore", "ModelSpec", "DownloadResult", "LicenceNotAccepted", "ProgressFn",
           "all_specs", "licence_line", "human_size", "offline_reason", "host_folders_from_env",
           "HOST_FOLDERS_ENV"]

logger = logging.getLogger(__name__)

OFFLINE_ENVS = ("EASYPHOTO_OFFLINE", "HF_HUB_OFFLINE")
URL_BASE_ENV = "EASYPHOTO_MODEL_URL_BASE"
#: A JSON object ``{host folder name: path}`` naming the host's model folders; the WebUI
#: extension sets it so every ModelStore (and the training subprocess) uses them.
HOST_FOLDERS_ENV = "EASYPHOTO_HOST_FOLDERS"
PathLike = Union[str, "os.PathLike[str]"]


class LicenceNotAccepted(EasyPhotoError):
    """A model whose licence restricts use was requested without the user's acceptance."""

    http_status = 403


@dataclass(frozen=True)
class DownloadResult:
    """What :meth:`ModelStore.download` did; ``downloaded`` is False when it was already there."""

    role: str
    path: Path
    licence: str
    commercial_use: bool
    downloaded: bool
    sha256: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def human_size(size: Optional[int]) -> str:
    """``1.4 GB``-style size, ``unknown`` for None."""
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


def licence_line(spec: ModelSpec) -> str:
    """One line for the user: the licence and whether commercial use is allowed."""
    use = "allowed" if spec.commercial_use else "NOT allowed or not confirmed"
    url = f" ({spec.licence_url})" if spec.licence_url else ""
    return f"{spec.role}: licence {spec.licence}{url}; commercial use {use}"


def host_folders_from_env(env: Optional[Mapping[str, str]] = None) -> dict[str, Path]:
    """The host model folders named by :data:`HOST_FOLDERS_ENV` (empty when unset or unusable)."""
    text = (os.environ if env is None else env).get(HOST_FOLDERS_ENV, "")
    try:
        folders = json.loads(text) if text else {}
    except ValueError:
        folders = None
    if not isinstance(folders, dict):
        logger.warning("%s is not a JSON object; ignoring it", HOST_FOLDERS_ENV)
        return {}
    return {name: Path(path) for name, path in folders.items()
            if name in HOST_FOLDERS and isinstance(path, str) and path}


def offline_reason(env: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Why downloads are switched off (``HF_HUB_OFFLINE=1`` ...), or None."""
    env = os.environ if env is None else env
    for name in OFFLINE_ENVS:
        if env.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"offline mode is on ({name}={env[name]})"
    return None


class ModelStore:
    """Resolves, checks and downloads the registry's model files under one models root."""

    def __init__(self, models_root: PathLike, host_folders: Optional[Mapping[str, PathLike]] = None,
                 *, specs: Optional[Iterable[ModelSpec]] = None, hf_endpoint: Optional[str] = None,
                 url_base: Optional[str] = None, timeout: float = 30.0) -> None:
        """``specs`` replaces the registry (tests, custom tables); endpoints override the env.
        ``host_folders`` ``None``: the folders :data:`HOST_FOLDERS_ENV` names (if any)."""
        self.models_root = Path(models_root)
        if host_folders is None:
            host_folders = host_folders_from_env()
        unknown = set(host_folders or {}) - set(HOST_FOLDERS)
        if unknown:
            raise InvalidRequest(f"unknown host model folder(s) {sorted(unknown)}; "
                                 f"expected some of {list(HOST_FOLDERS)}")
        self.host_folders = {k: Path(v) for k, v in (host_folders or {}).items()}
        self._specs = REGISTRY if specs is None else spec_map(specs)
        self.hf_endpoint = hf_endpoint
        self.url_base = url_base
        self.timeout = timeout

    # ---- lookup -------------------------------------------------------------------------
    def specs(self) -> tuple[ModelSpec, ...]:
        """Every model this store knows, in display order."""
        return tuple(self._specs.values())

    def spec(self, role: str) -> ModelSpec:
        """The spec of ``role``; an unknown role is an :class:`InvalidRequest`."""
        try:
            return self._specs[role]
        except KeyError:
            raise InvalidRequest(f"unknown model role {role!r}; known roles: "
                                 + ", ".join(self._specs)) from None

    def folder(self, role: str) -> Path:
        """The folder the model's file (or folder) goes in."""
        spec = self.spec(role)
        if spec.host_folder and spec.host_folder in self.host_folders:
            return self.host_folders[spec.host_folder]
        return self.models_root / spec.subdir

    def path(self, role: str) -> Path:
        """Where the model is used from (a file, or a folder for ModelScope / unpacked packs)."""
        return self.folder(role) / self.spec(role).local_name

    def archive_path(self, role: str) -> Path:
        """The downloaded file itself (the ``.zip`` for unpacked packs, else :meth:`path`)."""
        return self.folder(role) / self.spec(role).filename

    def is_present(self, role: str) -> bool:
        """True when the model's file exists and is not empty (folder: exists, not empty)."""
        spec, path = self.spec(role), self.path(role)
        if spec.is_folder:
            return path.is_dir() and any(path.iterdir())
        return path.is_file() and path.stat().st_size > 0

    def require(self, role: str) -> Path:
        """The model's path, or :class:`ModelUnavailable` saying how to get it."""
        if self.is_present(role):
            return self.path(role)
        raise self.unavailable(role, "it is not downloaded yet")

    def unavailable(self, role: str, reason: str) -> ModelUnavailable:
        """The user-facing error for a model that is missing (``reason`` says why)."""
        spec, path = self.spec(role), self.path(role)
        if spec.source == "modelscope":
            place = f"put the model's files in the folder {path}"
        elif spec.unpack:
            place = f"put {spec.filename} at {self.archive_path(role)} and extract it into {path}"
        else:
            place = f"place the file at {path}"
        size = f"expected size {human_size(spec.size)}" + (
            f", sha256 {spec.sha256}" if spec.sha256 else "")
        return ModelUnavailable(
            f"Model {spec.title!r} ({spec.role}, file {spec.filename}) is not available: {reason}. "
            f"It comes from {self.source_for(role)} ({size}; licence: {spec.licence}). "
            f"Run `easyphoto models download {spec.role}` when online, or download it yourself "
            f"and {place}.")

    def source_for(self, role: str) -> str:
        """Where a download of ``role`` would come from, overrides applied."""
        spec = self.spec(role)
        if spec.source == "url":
            return self._url(spec)
        if spec.source == "hf":
            endpoint = self._hf_endpoint()
            label = spec.source_label
            return label.replace("huggingface.co", endpoint.rstrip("/"), 1) if endpoint else label
        return spec.source_label

    def licence_notice(self, role: str) -> str:
        """The licence line to show before the first download of ``role``."""
        return licence_line(self.spec(role))

    # ---- download -----------------------------------------------------------------------
    def download(self, role: str, progress: Optional[ProgressFn] = None, *,
                 accept_licence: bool = False, force: bool = False) -> DownloadResult:
        """Fetch ``role`` unless present: resume, verify sha256/size, then move into place.

        Raises :class:`LicenceNotAccepted` for a non-commercial (or unconfirmed) licence without
        ``accept_licence``, :class:`ModelUnavailable` when offline or the transfer fails (a
        partial file is kept for resuming), :class:`ChecksumMismatch` when the data is wrong
        (the bad download is deleted, never left at the final path).
        """
        spec = self.spec(role)
        if self.is_present(role) and not force:
            return DownloadResult(role, self.path(role), spec.licence, spec.commercial_use, False)
        if not spec.commercial_use and not accept_licence:
            raise LicenceNotAccepted(
                f"{licence_line(spec)}. Accept this licence to download {spec.filename} "
                "(command line: --accept-licence).")
        reason = offline_reason()
        if reason:
            raise self.unavailable(role, reason)
        from filelock import FileLock

        lock = self.models_root / ".locks" / f"{role}.lock"
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(lock)):
                if self.is_present(role) and not force:  # another process finished it meanwhile
                    return DownloadResult(role, self.path(role), spec.licence,
                                          spec.commercial_use, False)
                logger.info("downloading %s from %s", role, self.source_for(role))
                digest = self._download_locked(spec, progress)
        except OSError as exc:  # disk full, read-only folder, ...
            raise self.unavailable(role, f"cannot write it ({exc})") from exc
        logger.info("%s ready at %s", role, self.path(role))
        return DownloadResult(role, self.path(role), spec.licence, spec.commercial_use, True,
                              digest)

    def _download_locked(self, spec: ModelSpec, progress: Optional[ProgressFn]) -> Optional[str]:
        """Dispatch on the source; returns the verified sha256 (None when none is known)."""
        role, part = spec.role, self.archive_path(spec.role).with_name(spec.filename + ".part")
        try:
            if spec.source == "modelscope":
                got = fetch_modelscope(spec.repo or "", spec.revision, self.path(role))
                if not self.is_present(role):
                    raise self.unavailable(role, f"modelscope stored it at {got}")
                return None
            if spec.source == "hf":
                staging = self.models_root / ".downloads" / role
                got = fetch_hf(spec.repo or "", spec.repo_file or spec.filename, spec.revision,
                               staging, endpoint=self._hf_endpoint(), progress=progress)
                try:
                    digest = self._check(spec, got, delete_bad=True)
                finally:
                    if not got.exists():
                        shutil.rmtree(staging, ignore_errors=True)
                publish(got, self.archive_path(role))
                shutil.rmtree(staging, ignore_errors=True)
                return digest
            fetch_url(self._url(spec), part, timeout=self.timeout, progress=progress)
        except TransferError as exc:
            kept = spec.source == "url" and part.is_file() and part.stat().st_size > 0
            note = f"; the partial file {part} is kept and the next download resumes it" \
                if kept else ""
            raise self.unavailable(role, f"download failed ({exc}){note}") from exc
        digest = self._check(spec, part, delete_bad=True)
        publish(part, self.archive_path(role))
        if spec.unpack:
            try:
                safe_unzip(self.archive_path(role), self.path(role))
            except TransferError as exc:
                self.archive_path(role).unlink(missing_ok=True)
                raise self.unavailable(role, str(exc)) from exc
        return digest

    def _check(self, spec: ModelSpec, file: Path, *, delete_bad: bool) -> Optional[str]:
        """Compare ``file`` with the spec's sha256 and size; returns the sha256 when known."""
        if spec.sha256 is None and spec.size is None:
            return None
        size = file.stat().st_size
        actual = sha256_file(file)
        if (spec.sha256 is None or actual == spec.sha256) and spec.size in (None, size):
            return actual
        if delete_bad:
            file.unlink(missing_ok=True)
            what = (f"The download was deleted; run `easyphoto models download {spec.role}` "
                    f"again or place a correct copy at {self.archive_path(spec.role)}.")
        else:
            what = (f"The file was left in place: replace it with a correct copy "
                    f"(or delete it and run `easyphoto models download {spec.role}`).")
        want_size = "any size" if spec.size is None else f"{spec.size} bytes"
        raise ChecksumMismatch(
            f"Checksum mismatch for {spec.filename} ({spec.role}, {file}): expected sha256 "
            f"{spec.sha256 or 'unknown'} and {want_size}, got sha256 {actual} and {size} bytes. "
            f"{what}")

    def _hf_endpoint(self) -> Optional[str]:
        return self.hf_endpoint or os.environ.get("HF_ENDPOINT") or None

    def _url(self, spec: ModelSpec) -> str:
        base = self.url_base or os.environ.get(URL_BASE_ENV)
        url = spec.url or ""
        return f"{base.rstrip('/')}/{url.rsplit('/', 1)[-1]}" if base else url

    # ---- checks and listing ---------------------------------------------------------------
    def verify(self, role: str) -> str:
        """``"ok"``, ``"missing"`` or ``"unverified"`` (no known checksum); raises
        :class:`ChecksumMismatch` naming both hashes when the file on disk is wrong (the file
        is left where it is: it may be the user's own copy)."""
        spec = self.spec(role)
        if not self.is_present(role):
            return "missing"
        target = self.archive_path(role)
        if (spec.sha256 is None and spec.size is None) or spec.source == "modelscope" \
                or not target.is_file():
            return "unverified"
        self._check(spec, target, delete_bad=False)
        return "ok"

    def status(self) -> list[dict[str, Any]]:
        """One JSON-friendly row per model, for ``models list`` and the UI."""
        rows = []
        for spec in self.specs():
            rows.append({
                "role": spec.role, "title": spec.title, "kind": spec.kind,
                "family": spec.family, "source": spec.source, "origin": self.source_for(spec.role),
                "repo": spec.repo, "file": spec.repo_file or spec.filename,
                "revision": spec.revision, "url": spec.url and self._url(spec),
                "filename": spec.filename, "path": str(self.path(spec.role)),
                "present": self.is_present(spec.role), "size": spec.size,
                "sha256": spec.sha256, "licence": spec.licence,
                "licence_url": spec.licence_url, "commercial_use": spec.commercial_use,
                "optional": spec.optional, "host_folder": spec.host_folder,
                "notes": spec.notes,
            })
        return rows
