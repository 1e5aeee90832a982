"""The WebUI extension's registrations and its long-lived runtime (no host import here: the
:class:`~easyphoto.engine.webui.Host` comes from :func:`current_host` or a test).

``scripts/easyphoto_ui.py`` calls :func:`register` every time the WebUI executes it (start and
every "Reload UI"). The :class:`Runtime` — the GPU lock and the :class:`~easyphoto.service.Service`
with its job thread — is created once per host by the cached :func:`runtime` factory, outside
``scripts/``, so a reload re-registers the callbacks but keeps the service, its jobs and models.

* ``on_ui_tabs`` → ``[(easyphoto.ui.build_ui(service), "EasyPhoto", "easyphoto")]``;
* ``on_ui_settings`` → the "EasyPhoto" settings section (:data:`SETTINGS`); ``category_id`` only
  where ``OptionInfo`` takes it (1.7+);
* ``on_app_started`` → ``easyphoto.api.mount_api(app, service, auth=…, token=…)``; with the
  host's ``--api-auth`` the same credentials guard our routes (the host does not cover them);
* callbacks get ``name=`` only where the registration function takes it (1.9+).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..params import FACE_BACKENDS, MAX_PEOPLE
from ..weights import HOST_FOLDERS_ENV
from .webui import (
    Host,
    HostGpuLock,
    free_vram,
    host_data_dir,
    host_model_folders,
    host_models_root,
    install_lora,
    load_host,
    selected_checkpoint_file,
)
from .webui_units import parse_api_auth, stable_lora_stem

logger = logging.getLogger(__name__)

SECTION = ("easyphoto", "EasyPhoto")
TAB_TITLE, TAB_ID = "EasyPhoto", "easyphoto"
#: Settings category (WebUI 1.7+ groups settings pages by category).
CATEGORY = "training"


@dataclass(frozen=True)
class Setting:
    """One entry of the EasyPhoto settings section: a gradio component by name and its args."""

    key: str
    default: Any
    label: str
    component: str = "Checkbox"
    args: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


SETTINGS = (
    Setting("easyphoto_cache_models", True,
            "Keep EasyPhoto's face models loaded between jobs"),
    Setting("easyphoto_check_hashes", False,
            "Verify the sha256 of model files before their first use (slow for large files; "
            "downloads are always verified)"),
    Setting("easyphoto_data_dir", "",
            "EasyPhoto data folder (user ids, jobs, results); empty = <outputs>/easyphoto "
            "(restart to apply)", "Textbox"),
    Setting("easyphoto_default_num_faces", 1,
            "Default number of faces in a template (num_of_faceid)", "Slider",
            MappingProxyType({"minimum": 1, "maximum": MAX_PEOPLE, "step": 1})),
    Setting("easyphoto_face_backend", "auto",
            "Face models: full (insightface + modelscope), lite (PyPI-shipped models), auto "
            "(full when present)", "Radio", MappingProxyType({"choices": list(FACE_BACKENDS)})),
)
DEFAULTS = MappingProxyType({item.key: item.default for item in SETTINGS})


@dataclass(frozen=True)
class Runtime:
    """What lives as long as the WebUI process: the host, its GPU lock, the service."""

    host: Host
    lock: HostGpuLock
    service: Any


@functools.cache
def current_host() -> Host:
    """The running WebUI (imported once per process)."""
    return load_host()


def setting(host: Host, key: str) -> Any:
    """An EasyPhoto setting: the command-line flag where one exists, else the saved value."""
    flag = getattr(host.shared.cmd_opts, key, None)
    return flag if flag not in (None, "") else host.option(key, DEFAULTS[key])


def make_engine(host: Host, lock: HostGpuLock, base_model: str = "") -> Any:
    """The engine factory handed to the service: a WebUIEngine for ``base_model``."""
    from .webui_engine import WebUIEngine

    return WebUIEngine(host, lock, checkpoint=base_model or "")


def lora_ready(host: Host, record: Any) -> None:
    """Service hook: a finished (or imported) LoRA goes into the host's Lora folder."""
    install_lora(host, record.lora_path, stable_lora_stem(record.lora_path))


@functools.cache
def runtime(host: Host) -> Runtime:
    """The one Runtime of ``host`` (created on first use, survives "Reload UI")."""
    from ..service import Service, ServiceConfig

    lock = HostGpuLock(host)
    folders = host_model_folders(host)
    os.environ[HOST_FOLDERS_ENV] = json.dumps({k: str(v) for k, v in folders.items()})
    config = ServiceConfig(data_dir=host_data_dir(host), models_dir=host_models_root(host),
                           face_backend=str(setting(host, "easyphoto_face_backend")),
                           keep_face_models=bool(setting(host, "easyphoto_cache_models")),
                           verify_models=bool(setting(host, "easyphoto_check_hashes")),
                           default_people=int(setting(host, "easyphoto_default_num_faces")))
    service = Service(config, engine_factory=functools.partial(make_engine, host, lock),
                      gpu_lock=lock, on_lora_ready=functools.partial(lora_ready, host),
                      training_guard=functools.partial(free_vram, host),
                      train_base=functools.partial(training_base_model, host))
    logger.info("EasyPhoto: data in %s, models in %s and the WebUI's folders", config.data_dir,
                config.models_dir)
    return Runtime(host, lock, service)


def training_base_model(host: Host) -> Path:
    """The checkpoint file training uses when the request names none: the host's selection."""
    return selected_checkpoint_file(host)


# ---- callbacks ------------------------------------------------------------------------------
def on_ui_tabs(host: Host) -> list:
    from ..ui import build_ui

    return [(build_ui(runtime(host).service), TAB_TITLE, TAB_ID)]


def on_ui_settings(host: Host) -> None:
    import gradio as gr

    shared = host.shared
    takes_category = "category_id" in inspect.signature(shared.OptionInfo).parameters
    extra = {"category_id": CATEGORY} if takes_category else {}
    for item in SETTINGS:
        info = shared.OptionInfo(item.default, item.label, getattr(gr, item.component),
                                 dict(item.args), section=SECTION, **extra)
        shared.opts.add_option(item.key, info)


def api_credentials(host: Host) -> list[tuple[str, str]]:
    """The host's ``--api-auth`` pairs (empty when the host runs without API auth)."""
    return parse_api_auth(getattr(host.shared.cmd_opts, "api_auth", None))


def on_app_started(host: Host, demo: Any, app: Any) -> None:
    from ..api import mount_api

    token = getattr(host.shared.cmd_opts, "easyphoto_api_token", None) or None
    mount_api(app, runtime(host).service, auth=api_credentials(host), token=token)


def _register(function: Callable, callback: Callable, name: str) -> None:
    if "name" in inspect.signature(function).parameters:
        function(callback, name=name)
    else:
        function(callback)


def register(host: Host | None = None) -> None:
    """Register EasyPhoto's tab, settings and routes with the WebUI (idempotent per load)."""
    host = host or current_host()
    callbacks = host.script_callbacks
    _register(callbacks.on_ui_tabs, functools.partial(on_ui_tabs, host), "easyphoto_tab")
    _register(callbacks.on_ui_settings, functools.partial(on_ui_settings, host),
              "easyphoto_settings")
    _register(callbacks.on_app_started, functools.partial(on_app_started, host), "easyphoto_api")
