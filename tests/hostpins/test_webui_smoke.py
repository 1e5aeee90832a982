"""EasyPhoto inside a WebUI-like environment (WebUI 1.10 pins + what install.py installed).

Proves: every easyphoto module imports without diffusers/peft (the WebUI has neither);
``scripts/*.py`` load the way the WebUI loads them (twice: start and "Reload UI") against a
minimal fake ``modules`` package and register a tab, settings and routes; ``build_ui`` builds
its Train/Inference/Users tabs under gradio 3.41.2; ``mount_api`` works under fastapi 0.94 /
pydantic 1 (routes, OpenAPI schema, a call, the credentials guard).
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def scripts_result(smoke):
    return smoke("scripts")


def test_easyphoto_imports_without_diffusers_or_peft(smoke):
    result = smoke("imports")
    assert result["absent"] == {"diffusers": True, "peft": True}, "the layer must not have them"
    assert result["failed"] == {}, "\n".join(f"{m}: {e}" for m, e in result["failed"].items())
    assert result["loaded"] == []
    assert "easyphoto.service" in result["imported"] and "easyphoto.api" in result["imported"]


def test_scripts_load_and_register_like_a_webui_extension(scripts_result):
    assert "easyphoto_ui.py" in scripts_result["scripts"]
    assert scripts_result["registered"]["ui_tabs"] == 1
    assert scripts_result["registered"]["app_started"] >= 1
    titles = [title for title, _ in scripts_result["tabs"]]
    assert titles == ["EasyPhoto"], titles
    assert [elem_id for _, elem_id in scripts_result["tabs"]] == ["easyphoto"]


def test_scripts_add_settings_and_routes(scripts_result):
    assert any(key.startswith("easyphoto") for key in scripts_result["settings"]), \
        scripts_result["settings"]
    assert "/easyphoto/v1/users" in scripts_result["routes"], scripts_result["routes"]


def test_build_ui_under_gradio_3(smoke):
    result = smoke("ui")
    assert result["gradio"] == "3.41.2"
    assert result["is_blocks"]
    assert {"Train", "Inference", "Users"} <= set(result["tabs"]), result["tabs"]


def test_mount_api_under_fastapi_094_pydantic_1(smoke):
    result = smoke("api")
    assert result["fastapi"] == "0.94.0" and result["pydantic"].startswith("1.")
    for path in ("/easyphoto/v1/train", "/easyphoto/v1/infer", "/easyphoto/v1/jobs/{job_id}",
                 "/easyphoto/v1/users", "/easyphoto/v1/templates"):
        assert path in result["routes"], (path, result["routes"])
    assert result["openapi"] == 200
    assert result["users"] == []
    assert result["guarded_anonymous"] == 401 and result["guarded_user"] == 200
