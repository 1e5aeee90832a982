"""Registration functions; ``name=`` exists from 1.9 (a TypeError before, like the host)."""

import fake_host_config as C

registered = {"ui_tabs": [], "ui_settings": [], "app_started": []}


def _add(kind, callback, name):
    registered[kind].append((callback, name))


if C.WEBUI >= (1, 9):
    def on_ui_tabs(callback, *, name=None):
        _add("ui_tabs", callback, name)

    def on_ui_settings(callback, *, name=None):
        _add("ui_settings", callback, name)

    def on_app_started(callback, *, name=None):
        _add("app_started", callback, name)
else:
    def on_ui_tabs(callback):
        _add("ui_tabs", callback, None)

    def on_ui_settings(callback):
        _add("ui_settings", callback, None)

    def on_app_started(callback):
        _add("app_started", callback, None)
