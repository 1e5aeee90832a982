"""Callback registry of the fake WebUI, with 1.10's ``name=`` keyword.

Registrations are kept in :data:`registered` (one list per kind) so a test can call them the
way the WebUI does: ``ui_tabs()`` → ``[(blocks, title, elem_id)]``, ``ui_settings()``,
``app_started(demo, app)``.
"""

from typing import Callable, Optional

KINDS = ("ui_tabs", "ui_settings", "app_started", "script_unloaded", "before_reload",
         "model_loaded")
registered = {kind: [] for kind in KINDS}


def _register(kind: str, callback: Callable, name: Optional[str]) -> None:
    if not callable(callback):
        raise TypeError(f"on_{kind}: {callback!r} is not callable")
    registered[kind].append((name, callback))


def on_ui_tabs(callback, *, name=None):
    _register("ui_tabs", callback, name)


def on_ui_settings(callback, *, name=None):
    _register("ui_settings", callback, name)


def on_app_started(callback, *, name=None):
    _register("app_started", callback, name)


def on_script_unloaded(callback, *, name=None):
    _register("script_unloaded", callback, name)


def on_before_reload(callback, *, name=None):
    _register("before_reload", callback, name)


def on_model_loaded(callback, *, name=None):
    _register("model_loaded", callback, name)
