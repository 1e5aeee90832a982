"""The WebUI host adapter: the ONLY module that imports host symbols (``modules.*``,
``modules_forge``); everything else receives the :class:`Host` record built here.

* :func:`load_host` imports the host's modules when called (never at import time): an immutable
  :class:`Host` with flavour (A1111 / Forge) and version (``git_tag()``); tests pass a fake one.
* :class:`HostGpuLock`: ``queue_lock`` + ``shared.state``, re-entrant on its thread; settings
  changed under it (checkpoint, VAE) are restored at the outermost release.
* Checkpoint / VAE switching without the ``queue_lock`` deadlock: inside the lock the option is
  set with ``run_callbacks=False`` and the model reloaded explicitly (Forge main:
  ``main_entry.checkpoint_change`` / ``modules_change``).
* Training inside the host: :func:`selected_checkpoint_file`, :func:`free_vram` (1.6 unloads,
  1.7+ moves the model to the CPU and back, Forge unloads and reloads lazily), :func:`install_lora`.
* Paths: :func:`host_data_dir`, :func:`host_model_folders` (the registry's ``host_folder`` names
  → the host's folders, honouring ``--ckpt-dir``, ``--lora-dir``, ``--controlnet-dir``,
  ``--vae-dir`` and 1.10's ``--models-dir``), :func:`host_models_root`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.version import Version

from ..errors import EasyPhotoError, ModelUnavailable
from .webui_units import parse_webui_version, stable_lora_stem

logger = logging.getLogger(__name__)

_REQUIRED = ("shared", "processing", "scripts", "script_callbacks", "sd_models", "sd_vae",
             "call_queue", "paths", "sd_samplers")
_OPTIONAL = ("paths_internal", "launch_utils", "sd_schedulers", "progress")
#: The data folder's name under the host's outputs folder.
DATA_FOLDER = "easyphoto"
#: EasyPhoto's own models (face, annotators) under the host's models folder.
MODELS_FOLDER = "EasyPhoto"


class HostUnavailable(EasyPhotoError):
    """Not running inside a Stable Diffusion WebUI (or an unsupported one)."""

    http_status = 503


@dataclass(frozen=True)
class Host:
    """The host's modules (``shared``, ``processing``, ...), its flavour and version.
    ``main_entry`` is Forge main's ``modules_forge.main_entry`` (``None`` elsewhere)."""

    shared: Any
    processing: Any
    scripts: Any
    script_callbacks: Any
    sd_models: Any
    sd_vae: Any
    call_queue: Any
    paths: Any
    sd_samplers: Any
    paths_internal: Any = None
    launch_utils: Any = None
    sd_schedulers: Any = None
    progress: Any = None
    main_entry: Any = None
    flavour: str = "a1111"
    version: Version | None = None

    @property
    def forge(self) -> bool:
        return self.flavour == "forge"

    def older_than(self, version: str) -> bool:
        """True only when the version is known and older (unknown = assume current)."""
        return self.version is not None and self.version < Version(version)

    def option(self, key: str, default: Any = None) -> Any:
        """A host setting as saved (``shared.opts.data``), ``default`` when never set."""
        return self.shared.opts.data.get(key, default)

    def scheduler_labels(self) -> tuple[str, ...]:
        """The 1.9+ scheduler labels (``"Karras"``, …); empty before 1.9."""
        if self.sd_schedulers is None:
            return ()
        return tuple(s.label for s in getattr(self.sd_schedulers, "schedulers", ()))


def _optional(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def load_host() -> Host:
    """Import the running WebUI's modules (call from a callback or the extension's script)."""
    try:
        found = {name: importlib.import_module(f"modules.{name}") for name in _REQUIRED}
    except ImportError as error:
        raise HostUnavailable(f"EasyPhoto's WebUI adapter needs a running Stable Diffusion WebUI "
                              f"(AUTOMATIC1111 1.6+ or Forge): {error}") from error
    found.update({name: _optional(f"modules.{name}") for name in _OPTIONAL})
    forge = _optional("modules_forge") is not None
    entry = _optional("modules_forge.main_entry") if forge else None
    tag = None
    if found["launch_utils"] is not None and hasattr(found["launch_utils"], "git_tag"):
        try:
            tag = found["launch_utils"].git_tag()
        except Exception:
            logger.debug("git_tag() failed", exc_info=True)
    host = Host(**found, main_entry=entry, flavour="forge" if forge else "a1111",
                version=parse_webui_version(tag))
    logger.info("EasyPhoto: WebUI %s %s", host.flavour, host.version or f"(version {tag!r})")
    return host


# ---- the GPU lock --------------------------------------------------------------------------
class HostGpuLock:
    """``queue_lock`` + ``shared.state``, re-entrant for its owning thread.

    The outermost ``__enter__`` takes the host's queue lock, calls ``state.begin(job=...)`` and
    registers the job as the host's current task (``modules.progress``: the id from
    ``create_task_id`` on 1.8+, an id of the same shape before; queued, then started), so the
    WebUI's progress and pending-task endpoints see it; the outermost ``__exit__`` first undoes
    every setting recorded with :meth:`remember` (last first), finishes the task, then
    ``state.end()`` and releases the lock. EasyPhoto's job runner holds it for a whole job; the
    engine enters it again per call (a no-op re-entry on the same thread). The task
    bookkeeping never fails a job: a host whose ``progress`` module differs is logged and
    skipped.
    """

    def __init__(self, host: Host, job: str = "easyphoto") -> None:
        self.host, self.job = host, job
        self._owner: int | None = None
        self._depth = 0
        self._restores: list[tuple[str, Any, Callable[[Any], None]]] = []
        self.task: str | None = None  # the host task id while held

    @property
    def held(self) -> bool:
        """True when the calling thread holds the lock."""
        return self._owner == threading.get_ident()

    def __enter__(self) -> HostGpuLock:  # noqa: PYI034 (typing.Self needs Python 3.11)
        if self.held:
            self._depth += 1
            return self
        self.host.call_queue.queue_lock.acquire()
        try:
            self.host.shared.state.begin(job=self.job)
        except BaseException:
            self.host.call_queue.queue_lock.release()
            raise
        self._owner, self._depth = threading.get_ident(), 1
        self._start_task()
        return self

    def _start_task(self) -> None:
        progress = self.host.progress
        if progress is None or not hasattr(progress, "start_task"):
            return
        try:
            make = getattr(progress, "create_task_id", None)  # 1.8+
            task = make(self.job) if make else f"task({self.job}-{os.urandom(8).hex()[:15]})"
            if hasattr(progress, "add_task_to_queue"):
                progress.add_task_to_queue(task)
            progress.start_task(task)
            self.task = task
        except Exception:
            logger.debug("EasyPhoto: the host's task list did not take the job", exc_info=True)

    def _finish_task(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            try:
                self.host.progress.finish_task(task)
            except Exception:
                logger.debug("EasyPhoto: could not finish host task %s", task, exc_info=True)

    def __exit__(self, *exc_info: object) -> bool:
        self._depth -= 1
        if self._depth:
            return False
        try:
            while self._restores:
                key, original, restore = self._restores.pop()
                try:
                    restore(original)
                except Exception:
                    logger.exception("EasyPhoto: could not restore the host's %s", key)
        finally:
            try:
                self._finish_task()
                self.host.shared.state.end()
            finally:
                self._owner = None
                self.host.call_queue.queue_lock.release()
        return False

    def remember(self, key: str, original: Any, restore: Callable[[Any], None]) -> None:
        """Record ``key``'s value before this session first changed it (later calls no-op)."""
        if not self.held:
            raise RuntimeError("change host settings only while holding the GPU lock")
        if all(known != key for known, _, _ in self._restores):
            self._restores.append((key, original, restore))

    def original(self, key: str, default: Any = None) -> Any:
        """The value ``key`` had before this session changed it (``default`` if unchanged)."""
        return next((value for known, value, _ in self._restores if known == key), default)


# ---- checkpoints and VAE -------------------------------------------------------------------
def resolve_checkpoint(host: Host, name: str) -> Any:
    """The host's ``CheckpointInfo`` for a title, a stem or a file path (``ModelUnavailable``
    listing the folder when the host does not know it)."""
    models = host.sd_models
    path = Path(name)
    info = models.get_closet_checkpoint_match(name)
    if info is None and path.is_file():
        info = next((known for known in getattr(models, "checkpoints_list", {}).values()
                     if Path(known.filename).resolve() == path.resolve()), None)
    if info is None and path.suffix.lower() in (".safetensors", ".ckpt"):
        info = models.get_closet_checkpoint_match(path.stem)
    if info is None:
        raise ModelUnavailable(
            f"The WebUI does not know the checkpoint {name!r}: put the file in "
            f"{host_model_folders(host)['Stable-diffusion']} and press the refresh button next to the checkpoint list "
            f"(or choose one the WebUI lists).")
    return info


def _apply_checkpoint(host: Host, title: str) -> None:
    """Make ``title`` the loaded checkpoint (the GPU lock must be held)."""
    if host.main_entry is not None and hasattr(host.main_entry, "checkpoint_change"):
        host.main_entry.checkpoint_change(title, save=False, refresh=True)
        return
    host.shared.opts.set("sd_model_checkpoint", title, run_callbacks=False)
    host.sd_models.reload_model_weights()


def switch_checkpoint(host: Host, lock: HostGpuLock, info: Any) -> None:
    """Select ``info`` for this session; the previous checkpoint returns at lock release."""
    current = host.option("sd_model_checkpoint")
    if current == info.title:
        return
    lock.remember("sd_model_checkpoint", current,
                  lambda title: _apply_checkpoint(host, title) if title else None)
    logger.info("EasyPhoto: switching the checkpoint to %s", info.title)
    _apply_checkpoint(host, info.title)


def _apply_vae(host: Host, value: Any) -> None:
    if host.main_entry is not None and hasattr(host.main_entry, "modules_change"):
        host.main_entry.modules_change(list(value), save=False, refresh=True)
        return
    host.shared.opts.set("sd_vae", value, run_callbacks=False)
    host.sd_vae.reload_vae_weights()


def switch_vae(host: Host, lock: HostGpuLock, name: str) -> None:
    """Use VAE file ``name`` for this session; the previous one returns at lock release.

    A1111 1.6–1.10: ``sd_vae`` is set without callbacks and reloaded here (1.6's
    ``override_settings`` fails on keys missing from ``opts.data``, so it is not used; a
    missing saved value restores to ``"Automatic"``). Forge main: ``forge_additional_modules``.
    """
    if host.main_entry is not None and hasattr(host.main_entry, "modules_change"):
        current: Any = list(host.option("forge_additional_modules", []) or [])
        wanted: Any = [name]
    else:
        current, wanted = host.option("sd_vae", "Automatic"), name
        known = getattr(host.sd_vae, "vae_dict", None)
        if isinstance(known, dict) and name not in known and name not in ("Automatic", "None"):
            getattr(host.sd_vae, "refresh_vae_list", lambda: None)()
            if name not in host.sd_vae.vae_dict:
                raise ModelUnavailable(f"The WebUI does not know the VAE {name!r}: put the file in "
                                       f"{host_model_folders(host)['VAE']} and refresh.")
    if current == wanted:
        return
    lock.remember("vae", current, lambda value: _apply_vae(host, value))
    _apply_vae(host, wanted)


# ---- training inside the host ----------------------------------------------------------------
def selected_checkpoint_file(host: Host) -> Path:
    """The file of the checkpoint selected in the host (does not load the model)."""
    try:
        return Path(host.sd_models.select_checkpoint().filename)
    except FileNotFoundError as error:
        raise ModelUnavailable(f"The WebUI has no checkpoint to train on: {error}") from error


@contextlib.contextmanager
def free_vram(host: Host) -> Iterator[None]:
    """Free the host model's VRAM for the duration (training) and restore it after.

    1.6: ``unload_model_weights`` drops the model → ``reload_model_weights`` after. 1.7+ (and an
    unknown version): the model goes to the CPU and back with ``send_model_to_device`` (1.7+
    ``reload_model_weights`` returns early for the same checkpoint). Forge: its unload moves
    every model off the GPU and ``process_images`` loads lazily, so nothing to restore."""
    models = host.sd_models
    if host.forge:
        models.unload_model_weights()
        yield
        return
    model = getattr(getattr(models, "model_data", None), "sd_model", None)
    if model is None:  # nothing loaded: touching shared.sd_model would load it
        yield
    elif host.older_than("1.7"):
        models.unload_model_weights()
        try:
            yield
        finally:
            models.reload_model_weights()
    else:
        models.send_model_to_cpu(model)
        try:
            yield
        finally:
            models.send_model_to_device(model)


def lora_folder(host: Host) -> Path:
    """The host's Lora folder (``--lora-dir`` or ``<models>/Lora``)."""
    return host_model_folders(host)["Lora"]


def _up_to_date(source: Path, target: Path) -> bool:
    if not target.is_file():
        return False
    if os.path.samefile(source, target):
        return True
    a, b = source.stat(), target.stat()
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns


def install_lora(host: Host, source: Any, stem: str | None = None) -> str:
    """Place ``source`` in the host's Lora folder as ``<stem>.safetensors`` (default
    :func:`~easyphoto.engine.webui_units.stable_lora_stem`): a hard link where possible, else a
    copy keeping the modification time, swapped in atomically; refreshes the host's LoRA list
    when the file changed. Returns the stem (the ``<lora:NAME:W>`` name)."""
    source = Path(source)
    if not source.is_file():
        raise ModelUnavailable(f"LoRA file {source} does not exist: train the user id again.")
    stem = stem or stable_lora_stem(source)
    folder = lora_folder(host)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{stem}.safetensors"
    if _up_to_date(source, target):
        return stem
    temp = folder / f".{stem}.{os.getpid()}.{threading.get_ident()}.tmp"
    temp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, temp)
        except OSError:
            shutil.copy2(source, temp)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    logger.info("EasyPhoto: LoRA %s installed as %s", source, target)
    refresh_loras()
    return stem


def refresh_loras() -> bool:
    """Re-scan the built-in Lora extension's folder (found lazily; without it the host still
    finds new files when a prompt names them). True when a refresh ran."""
    networks = sys.modules.get("networks")
    refresh = getattr(networks, "list_available_networks", None)
    if not callable(refresh) or not hasattr(networks, "available_networks"):
        return False
    try:
        refresh()
    except Exception:
        logger.warning("EasyPhoto: refreshing the WebUI's LoRA list failed", exc_info=True)
        return False
    return True


# ---- paths ---------------------------------------------------------------------------------
def outputs_dir(host: Host) -> Path:
    """The host's outputs folder (``paths_internal.default_output_dir`` 1.8+, else
    ``<data_path>/outputs``)."""
    default = getattr(host.paths_internal, "default_output_dir", None)
    return Path(default) if default else Path(host.paths.data_path) / "outputs"


def host_data_dir(host: Host, override: Any = None) -> Path:
    """EasyPhoto's data folder: ``override``, ``--easyphoto-data-dir``, the
    ``easyphoto_data_dir`` setting, else ``<host outputs>/easyphoto``."""
    chosen = (override or getattr(host.shared.cmd_opts, "easyphoto_data_dir", None)
              or host.option("easyphoto_data_dir", ""))
    return Path(chosen).expanduser() if chosen else outputs_dir(host) / DATA_FOLDER


def host_models_root(host: Host) -> Path:
    """EasyPhoto's own models: ``--easyphoto-models-dir``, else ``<models_path>/EasyPhoto``."""
    chosen = getattr(host.shared.cmd_opts, "easyphoto_models_dir", None)
    return Path(chosen).expanduser() if chosen else Path(host.paths.models_path) / MODELS_FOLDER


def _controlnet_folder(host: Host, models: Path) -> Path:
    cmd_opts = host.shared.cmd_opts
    if getattr(cmd_opts, "controlnet_dir", None):
        return Path(cmd_opts.controlnet_dir)
    shared_dir = models / "ControlNet"
    extensions = Path(getattr(host.paths, "extensions_dir", "") or
                      Path(host.paths.data_path) / "extensions")
    legacy = extensions / "sd-webui-controlnet" / "models"
    return legacy if not shared_dir.is_dir() and legacy.is_dir() else shared_dir


def host_model_folders(host: Host) -> dict[str, Path]:
    """The registry's ``host_folder`` names → the host's folders, for ``ModelStore``."""
    models = Path(host.paths.models_path)
    cmd_opts = host.shared.cmd_opts
    return {"Stable-diffusion": Path(getattr(cmd_opts, "ckpt_dir", None)
                                     or models / "Stable-diffusion"),
            "VAE": Path(getattr(cmd_opts, "vae_dir", None) or models / "VAE"),
            "Lora": Path(getattr(cmd_opts, "lora_dir", None) or models / "Lora"),
            "ControlNet": _controlnet_folder(host, models)}
