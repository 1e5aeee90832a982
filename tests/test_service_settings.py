"""The service's model settings (the WebUI's "keep face models", "check hashes" and "default
number of faces"): face models released after each inference, model files verified once
before the first model loads, the inference tab starting with the configured people."""

from __future__ import annotations

import hashlib

import pytest

from easyphoto import weights
from easyphoto.errors import ChecksumMismatch
from easyphoto.service import Service, ServiceConfig

DATA = b"model weights" * 1000


class CountingBackend:
    name = "lite"

    def __init__(self):
        self.unloads = 0

    def unload(self):
        self.unloads += 1


def service(tmp_path, **config) -> Service:
    return Service(ServiceConfig(data_dir=tmp_path / "data", base_model="tiny-random",
                                 face_backend="lite", **config))


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("fails", [False, True])
def test_face_models_released_after_inference_unless_kept(tmp_path, monkeypatch, keep, fails):
    svc = service(tmp_path, keep_face_models=keep)
    backend = svc._backends["lite"] = CountingBackend()

    def run(*args):
        if fails:
            raise RuntimeError("the template broke")
        return {"results": []}

    monkeypatch.setattr(svc, "_run_inference", run)
    try:
        if fails:
            with pytest.raises(RuntimeError, match="the template broke"):
                svc._infer(None, None, [], None)
        else:
            assert svc._infer(None, None, [], None) == {"results": []}
        assert backend.unloads == (0 if keep else 1)
        assert ("lite" in svc._backends) == keep
    finally:
        svc.close()


def _store_with(tmp_path, data: bytes):
    spec = weights.ModelSpec(role="tiny_check", title="Tiny", kind="lora", family="sd15",
                             source="url", url="https://example.invalid/tiny.safetensors",
                             filename="tiny.safetensors", size=len(DATA),
                             sha256=hashlib.sha256(DATA).hexdigest(), licence="MIT",
                             commercial_use=True, host_folder="Lora", subdir="Lora")
    store = weights.ModelStore(tmp_path / "models", specs=[spec])
    path = store.path("tiny_check")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return store


def test_model_files_verified_once_before_the_first_model(tmp_path, monkeypatch):
    made = []
    good = _store_with(tmp_path, DATA)
    monkeypatch.setattr(weights, "ModelStore", lambda *a, **k: made.append(1) or good)
    svc = service(tmp_path, verify_models=True)
    try:
        assert svc.verify_models() == ["tiny_check"]
        assert svc.verify_models() == [] and made == [1]  # once per process
    finally:
        svc.close()


def test_a_corrupt_model_file_stops_the_first_model_load(tmp_path, monkeypatch):
    bad = _store_with(tmp_path, DATA[:-1] + b"!")
    monkeypatch.setattr(weights, "ModelStore", lambda *a, **k: bad)
    svc = service(tmp_path, verify_models=True)
    try:
        with pytest.raises(ChecksumMismatch, match="tiny.safetensors"):
            svc.face_backend()
        assert svc._backends == {}
    finally:
        svc.close()


def test_no_verification_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "ModelStore", lambda *a, **k: pytest.fail("verified"))
    svc = service(tmp_path)
    try:
        assert svc.verify_models() == []
    finally:
        svc.close()


@pytest.mark.parametrize("people", [1, 3])
def test_inference_tab_starts_with_the_configured_people(tmp_path, people):
    pytest.importorskip("gradio")
    from easyphoto.ui import build_ui

    svc = service(tmp_path, default_people=people)
    try:
        blocks = build_ui(svc)
        by_id = {getattr(c, "elem_id", None): c for c in blocks.blocks.values()}
        assert by_id["easyphoto_infer_people"].value == people
        visible = [by_id[f"easyphoto_infer_user_{n}"].visible for n in range(1, 6)]
        assert visible == [n <= people for n in range(1, 6)]
    finally:
        svc.close()
