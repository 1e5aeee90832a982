"""Checks run *inside* the WebUI-like environment (a child process of tests/hostpins).

Usage: ``python webui_smoke.py CHECK`` with CHECK one of ``imports``, ``scripts``, ``ui``,
``api``. Each check raises on failure (the traceback goes to stderr) and otherwise prints one
last line ``RESULT <json>`` for the test to read. The fake WebUI (``fake_webui/``: ``launch``
and ``modules``) must be on PYTHONPATH; ``$FAKE_WEBUI_ROOT`` is a scratch folder used as the
WebUI root and data folder; ``$FAKE_WEBUI_EXTENSION_DIR`` is the EasyPhoto checkout.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pkgutil
import sys
import traceback
from pathlib import Path
from types import MappingProxyType

EXTENSION = Path(os.environ["FAKE_WEBUI_EXTENSION_DIR"]).resolve()
SCRATCH = Path(os.environ["FAKE_WEBUI_ROOT"]).resolve()
#: Packages the WebUI does not have; EasyPhoto must not need them to import.
TRAINING_ONLY = ("diffusers", "peft")


def check_imports() -> dict:
    """Import every module of the easyphoto package (the extension folder on sys.path, as the
    WebUI has it while scripts load) and name any that fails or pulls in diffusers/peft."""
    sys.path.insert(0, str(EXTENSION))
    import easyphoto

    failed, imported = {}, []
    for info in pkgutil.walk_packages(easyphoto.__path__, "easyphoto."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue   # runs a command line when imported
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except Exception:
            failed[info.name] = traceback.format_exc(limit=3).strip().splitlines()[-1]
    absent = {name: importlib.util.find_spec(name) is None for name in TRAINING_ONLY}
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in TRAINING_ONLY)
    return {"imported": imported, "failed": failed, "absent": absent, "loaded": loaded}


def load_scripts() -> list[str]:
    """Execute ``scripts/*.py`` the way the WebUI does: module name = file name, the extension
    folder on sys.path only while the file runs."""
    names = []
    for path in sorted((EXTENSION / "scripts").glob("*.py")):
        sys.path.insert(0, str(EXTENSION))
        try:
            spec = importlib.util.spec_from_file_location(path.name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(EXTENSION))
        names.append(path.name)
    return names


def check_scripts() -> dict:
    """Load the scripts twice (start, then "Reload UI"), then run the registered callbacks as
    the WebUI would: tabs rendered into one page, settings added, routes added at app start."""
    import gradio as gr
    from fastapi import FastAPI
    from modules import script_callbacks, shared

    first = load_scripts()
    for _, callback in script_callbacks.registered["script_unloaded"]:
        callback()
    for kind in script_callbacks.registered:
        script_callbacks.registered[kind].clear()
    load_scripts()
    registered = {kind: len(items) for kind, items in script_callbacks.registered.items()}
    tabs = [tab for _, callback in script_callbacks.registered["ui_tabs"] for tab in callback()]
    with gr.Blocks() as demo, gr.Tabs():
        for blocks, title, elem_id in tabs:
            with gr.TabItem(title, id=elem_id):
                blocks.render()
    for _, callback in script_callbacks.registered["ui_settings"]:
        callback()
    app = FastAPI()
    for _, callback in script_callbacks.registered["app_started"]:
        callback(demo, app)
    return {"scripts": first, "registered": registered,
            "tabs": [(title, elem_id) for _, title, elem_id in tabs],
            "settings": sorted(shared.opts.data_labels),
            "routes": sorted(getattr(r, "path", "") for r in app.routes)}


def make_service():
    from easyphoto.service import Service, ServiceConfig

    return Service(ServiceConfig(data_dir=SCRATCH / "easyphoto-data"))


def tab_labels(blocks) -> list[str]:
    return [block.label for block in blocks.blocks.values()
            if type(block).__name__ in ("Tab", "TabItem")]


def check_ui() -> dict:
    """``easyphoto.ui.build_ui(service)`` under this gradio: the tabs it builds."""
    sys.path.insert(0, str(EXTENSION))
    import gradio as gr

    from easyphoto.ui import build_ui

    blocks = build_ui(make_service())
    return {"gradio": gr.__version__, "is_blocks": isinstance(blocks, gr.Blocks),
            "tabs": tab_labels(blocks)}


def check_api() -> dict:
    """``easyphoto.api.mount_api`` on a bare FastAPI app under this fastapi/pydantic: routes,
    the OpenAPI schema, a read-only call, and the guard when credentials are set."""
    sys.path.insert(0, str(EXTENSION))
    import fastapi
    import pydantic
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from easyphoto.api import mount_api

    service = make_service()
    app = FastAPI()
    mount_api(app, service)
    client = TestClient(app)
    guarded = FastAPI()
    mount_api(guarded, service, auth=[("user", "secret")])
    guarded_client = TestClient(guarded)
    return {"fastapi": fastapi.__version__, "pydantic": pydantic.VERSION,
            "routes": sorted(getattr(r, "path", "") for r in app.routes),
            "openapi": client.get("/openapi.json").status_code,
            "users": client.get("/easyphoto/v1/users").json(),
            "guarded_anonymous": guarded_client.get("/easyphoto/v1/users").status_code,
            "guarded_user": guarded_client.get("/easyphoto/v1/users",
                                               auth=("user", "secret")).status_code}


CHECKS = MappingProxyType({"imports": check_imports, "scripts": check_scripts, "ui": check_ui,
                           "api": check_api})

if __name__ == "__main__":
    os.chdir(SCRATCH)
    print("RESULT " + json.dumps(CHECKS[sys.argv[1]](), default=str))
