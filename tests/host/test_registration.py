"""The extension's registrations against the fake WebUI of every flavour.

Proves: ``scripts/easyphoto_ui.py`` puts the extension root on ``sys.path`` and registers the
tab, settings and routes, with ``name=`` only where the host takes it (1.9+) and never a
TypeError; running it again (Reload UI) re-registers but keeps the one service; the settings
section has its five keys with ``category_id`` only on 1.7+; the tab is built by
``easyphoto.ui.build_ui(service)``; the routes are mounted on the host's FastAPI app and enforce
the host's ``--api-auth``; ``preload.py`` adds EasyPhoto's flags and ``metadata.ini`` orders the
script after ControlNet; no module but ``easyphoto/engine/webui.py`` imports host symbols.
"""

from __future__ import annotations

import argparse
import configparser
import re
import runpy
import sys

import pytest
from host_helpers import REPO, load_preload

from easyphoto.engine import webui_ext
from easyphoto.params import FACE_BACKENDS

KEYS = ["easyphoto_cache_models", "easyphoto_check_hashes", "easyphoto_data_dir",
        "easyphoto_default_num_faces", "easyphoto_face_backend"]
SCRIPT = REPO / "scripts" / "easyphoto_ui.py"


def run_script(monkeypatch):
    """Execute the extension script as the host does (the root is not on sys.path)."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p.rstrip("/") != str(REPO)])
    runpy.run_path(str(SCRIPT), run_name="easyphoto_ui.py")
    assert str(REPO) in sys.path


def test_script_registers_with_names_only_on_19_plus(fake, monkeypatch):
    run_script(monkeypatch)
    registered = fake.script_callbacks.registered
    names = {kind: [name for _, name in entries] for kind, entries in registered.items()}
    expected = {"ui_tabs": "easyphoto_tab", "ui_settings": "easyphoto_settings",
                "app_started": "easyphoto_api"}
    for kind, name in expected.items():
        assert names[kind] == [name if fake.case.webui >= (1, 9) else None]


def test_reload_ui_keeps_the_service(make_host, monkeypatch):
    fake = make_host("a1111-1.9")
    run_script(monkeypatch)
    run_script(monkeypatch)   # "Reload UI" executes the script again
    tabs = fake.script_callbacks.registered["ui_tabs"]
    assert len(tabs) == 2
    first, second = (callback.args[0] for callback, _ in tabs)
    assert webui_ext.runtime(first) is webui_ext.runtime(second)
    assert webui_ext.runtime(first).lock.host == fake.host


def test_settings_section(fake):
    import gradio as gr

    webui_ext.register(fake.host)
    callback, _ = fake.script_callbacks.registered["ui_settings"][0]
    callback()
    labels = fake.shared.opts.data_labels
    for key in KEYS:
        info = labels[key]
        assert info.section == ("easyphoto", "EasyPhoto") and info.label
        assert info.category_id == ("training" if fake.case.webui >= (1, 7) else None)
    assert labels["easyphoto_face_backend"].component is gr.Radio
    assert labels["easyphoto_face_backend"].component_args == {"choices": list(FACE_BACKENDS)}
    assert labels["easyphoto_default_num_faces"].component_args["maximum"] == 5
    assert [labels[k].default for k in KEYS] == [True, False, "", 1, "auto"]


def test_settings_reach_the_service(make_host, tmp_path):
    fake = make_host("a1111-1.10", opts={"easyphoto_face_backend": "lite",
                                         "easyphoto_data_dir": str(tmp_path / "ep")})
    service = webui_ext.runtime(fake.host).service
    assert service.config.face_backend == "lite" and service.config.data_dir == tmp_path / "ep"
    fake.shared.cmd_opts.easyphoto_face_backend = "full"   # the flag wins over the setting
    assert webui_ext.setting(fake.host, "easyphoto_face_backend") == "full"
    config = service.config  # defaults of the three other settings
    assert (config.keep_face_models, config.verify_models, config.default_people) == \
        (True, False, 1)


def test_model_settings_reach_the_service(make_host, tmp_path):
    fake = make_host("a1111-1.10", opts={"easyphoto_cache_models": False,
                                         "easyphoto_check_hashes": True,
                                         "easyphoto_default_num_faces": 3,
                                         "easyphoto_data_dir": str(tmp_path / "ep")})
    config = webui_ext.runtime(fake.host).service.config
    assert (config.keep_face_models, config.verify_models, config.default_people) == \
        (False, True, 3)


def test_tab_is_built_from_the_service(fake, monkeypatch):
    import easyphoto.ui

    built = []
    monkeypatch.setattr(easyphoto.ui, "build_ui", lambda service: built.append(service) or "UI")
    webui_ext.register(fake.host)
    callback, _ = fake.script_callbacks.registered["ui_tabs"][0]
    assert callback() == [("UI", "EasyPhoto", "easyphoto")]
    assert built == [webui_ext.runtime(fake.host).service]


def test_real_tab_builds(make_host):
    gr = pytest.importorskip("gradio")
    fake = make_host("a1111-1.10")
    [(blocks, title, elem_id)] = webui_ext.on_ui_tabs(fake.host)
    assert isinstance(blocks, gr.Blocks) and (title, elem_id) == ("EasyPhoto", "easyphoto")


def _app_client(fake):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    app = FastAPI()
    webui_ext.register(fake.host)
    callback, _ = fake.script_callbacks.registered["app_started"][0]
    callback(None, app)
    return app, TestClient(app)


def test_routes_are_mounted(fake):
    app, client = _app_client(fake)
    paths = set(app.openapi()["paths"])
    assert {"/easyphoto/v1/users", "/easyphoto/v1/infer", "/easyphoto/v1/train"} <= paths
    response = client.get("/easyphoto/v1/users")
    assert response.status_code == 200 and response.json() is not None


def test_routes_enforce_the_hosts_api_auth(make_host):
    fake = make_host("a1111-1.10", cmd_opts={"api_auth": "alice:s3cret,bob:pw"})
    _, client = _app_client(fake)
    assert client.get("/easyphoto/v1/users").status_code == 401
    assert client.get("/easyphoto/v1/users", auth=("alice", "wrong")).status_code == 401
    assert client.get("/easyphoto/v1/users", auth=("bob", "pw")).status_code == 200


def test_preload_flags():
    preload = load_preload()
    assert preload.FACE_BACKENDS == FACE_BACKENDS
    parser = argparse.ArgumentParser()
    preload.preload(parser)
    opts = parser.parse_args(["--easyphoto-data-dir", "/d", "--easyphoto-face-backend", "lite",
                              "--easyphoto-models-dir", "/m", "--easyphoto-api-token", "t"])
    assert (opts.easyphoto_data_dir, opts.easyphoto_face_backend, opts.easyphoto_models_dir,
            opts.easyphoto_api_token) == ("/d", "lite", "/m", "t")
    with pytest.raises(SystemExit):
        parser.parse_args(["--easyphoto-face-backend", "nope"])


def test_metadata_orders_after_controlnet():
    config = configparser.ConfigParser()
    config.read(REPO / "metadata.ini")
    assert config.get("Extension", "Name") == "easyphoto"
    assert "sd-webui-controlnet" in config.get("scripts", "After")


def test_only_the_adapter_imports_host_symbols():
    host_import = re.compile(r"^\s*(from|import)\s+(modules|modules_forge|lib_controlnet)\b"
                             r"|import_module\(f?[\"'](modules|modules_forge)\b", re.MULTILINE)
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "easyphoto").rglob("*.py")
                 if host_import.search(path.read_text(encoding="utf-8"))]
    assert offenders == ["easyphoto/engine/webui.py"]
    script = SCRIPT.read_text(encoding="utf-8")
    assert not host_import.search(script) and len(script.splitlines()) <= 30
