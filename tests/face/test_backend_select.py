"""Choosing the face backend: ``get_face_backend`` / ``describe_backend``, and a light import.

Selection only checks that files exist (the full backend loads lazily), so placeholder files
stand in for buffalo_l here; real detection through the full backend is in test_full.py.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys

import pytest

from easyphoto.errors import InvalidRequest
from easyphoto.face import describe_backend, get_face_backend

HEAVY = ("mediapipe", "dlib", "insightface", "onnxruntime", "modelscope", "torch")


def placeholder_pack(models_dir, files=("det_10g.onnx", "w600k_r50.onnx")):
    pack = models_dir / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True, exist_ok=True)
    for name in files:
        (pack / name).write_bytes(b"placeholder")
    return models_dir


def test_importing_the_face_layer_is_light():
    code = ("import json, sys, easyphoto.face; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_unknown_name_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="unknown face backend"):
        get_face_backend("medium", models_dir=tmp_path)


def test_lite_is_always_lite(tmp_path):
    import easyphoto.face.lite  # noqa: F401
    backend = get_face_backend("lite", models_dir=placeholder_pack(tmp_path))
    assert backend.name == "lite"
    assert describe_backend(backend)["fallback_reason"] is None


def test_full_without_files_falls_back_to_lite_with_a_warning(tmp_path, caplog):
    import easyphoto.face.lite  # noqa: F401
    with caplog.at_level(logging.WARNING, logger="easyphoto.face"):
        backend = get_face_backend("full", models_dir=tmp_path)
    assert backend.name == "lite"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "det_10g.onnx" in warnings[0] and "w600k_r50.onnx" in warnings[0]
    assert "easyphoto models download insightface_buffalo_l" in warnings[0]
    reason = describe_backend(backend)["fallback_reason"]
    assert reason and "det_10g.onnx" in reason


def test_warning_names_only_the_missing_file(tmp_path, caplog):
    import easyphoto.face.lite  # noqa: F401
    placeholder_pack(tmp_path, files=("det_10g.onnx",))
    with caplog.at_level(logging.WARNING, logger="easyphoto.face"):
        backend = get_face_backend("full", models_dir=tmp_path)
    assert backend.name == "lite"
    message = caplog.records[-1].getMessage()
    assert "w600k_r50.onnx" in message and "det_10g.onnx" not in message


def test_full_without_insightface_names_the_package(tmp_path, caplog, monkeypatch):
    import easyphoto.face.lite  # noqa: F401
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "insightface" else real_find_spec(name, *a))
    with caplog.at_level(logging.WARNING, logger="easyphoto.face"):
        backend = get_face_backend("full", models_dir=placeholder_pack(tmp_path))
    assert backend.name == "lite"
    assert "'insightface' is not installed" in caplog.records[-1].getMessage()
    assert "easyphoto[full]" in caplog.records[-1].getMessage()


def test_auto_picks_lite_quietly_without_files(tmp_path, caplog):
    import easyphoto.face.lite  # noqa: F401
    with caplog.at_level(logging.INFO, logger="easyphoto.face"):
        backend = get_face_backend("auto", models_dir=tmp_path)
    assert backend.name == "lite"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("det_10g.onnx" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("name", ["auto", "full", "FULL"])
def test_full_when_its_files_are_there(tmp_path, name):
    import insightface  # noqa: F401
    backend = get_face_backend(name, models_dir=placeholder_pack(tmp_path))
    assert backend.name == "full"
    info = describe_backend(backend)
    assert info["fallback_reason"] is None
    assert info["same_person_threshold"] == backend.same_person_threshold
    assert info["models"]["detector"].endswith("det_10g.onnx")
    assert info["capabilities"]["embed"] == "insightface:w600k_r50.onnx"
    # no modelscope model in an empty folder: every such capability says why it uses lite
    for capability in ("saliency", "fuse", "retouch", "super_resolve"):
        assert info["capabilities"][capability] == "lite"
        assert "easyphoto models download" in info["fallbacks"][capability]


def test_models_dir_from_the_environment(tmp_path, monkeypatch):
    import insightface  # noqa: F401
    monkeypatch.setenv("EASYPHOTO_MODELS_DIR", str(placeholder_pack(tmp_path)))
    assert get_face_backend("auto").name == "full"


def test_files_found_through_an_injected_model_store(tmp_path):
    """A store (``is_present`` / ``path``, as ``easyphoto.weights.ModelStore``) wins over the
    folder layout, e.g. the WebUI's host-aware store."""
    import insightface  # noqa: F401
    pack = placeholder_pack(tmp_path / "elsewhere") / "insightface" / "models" / "buffalo_l"

    class Store:
        def is_present(self, role):
            return role == "insightface_buffalo_l"

        def path(self, role):
            return pack

    backend = get_face_backend("full", models_dir=tmp_path / "empty", weights=Store())
    assert backend.name == "full"
    assert describe_backend(backend)["models"]["recogniser"] == str(pack / "w600k_r50.onnx")


def test_the_registry_and_the_fallback_layout_agree(tmp_path):
    """``easyphoto.weights`` puts buffalo_l where the full backend's own layout looks for it."""
    from easyphoto import weights
    from easyphoto.face.full_models import (INSIGHTFACE_LAYOUT, INSIGHTFACE_ROLE, MODELSCOPE_MODELS,
                                            PARSER_ROLE)

    store = weights.ModelStore(tmp_path)
    assert store.path(INSIGHTFACE_ROLE) == tmp_path.joinpath(*INSIGHTFACE_LAYOUT)
    for role, _task, model_id in MODELSCOPE_MODELS.values():
        assert store.spec(role).repo == model_id
    assert store.path(PARSER_ROLE).name == "face_skin.pth"


def test_describe_without_a_backend_describes_the_default_choice(tmp_path, monkeypatch):
    """``easyphoto doctor`` calls ``describe_backend()`` with no argument."""
    import easyphoto.face.lite  # noqa: F401
    monkeypatch.setenv("EASYPHOTO_MODELS_DIR", str(tmp_path))
    info = describe_backend()
    assert info["name"] == "lite"
    assert "det_10g.onnx" in info["fallback_reason"]
    assert describe_backend(name="lite")["fallback_reason"] is None
