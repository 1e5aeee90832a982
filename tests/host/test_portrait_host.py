"""The real portrait pipeline (``easyphoto.infer.batch.run_batch``, lite face backend, a real
photo) painting through WebUIEngine on the fake WebUI.

Proves that what the host receives is what the pipeline hands over: two img2img calls; the
first with SPEC 2.6's steps (50), strength (0.45), mask blur (8) and units canny 0.5 /
openpose 0.5 / colour 0.85 whose images are byte-identical to the pipeline's control images
(canny and colour layout of the first-diffusion input), the second with SPEC 2.7's 20 steps,
0.30, canny 1.0 + tile 1.0 (tile = the fused input itself); init image and mask are the
pipeline's; the user's LoRA is in the prompt at 0.9 under its host name and its file is in the
host's Lora folder; pixels outside the face's box×3 crop are the template's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infer"))

from infer_helpers import SpyEngine, crops_mask, face_crop, jpeg, shared_backend

from easyphoto.engine.webui import HostGpuLock
from easyphoto.engine.webui_engine import WebUIEngine
from easyphoto.infer.controls import canny, color_layout
from easyphoto.params import InferRequest


@pytest.fixture(scope="module")
def backend():
    return shared_backend()


@pytest.fixture
def users(tmp_path, rgb, backend):
    """A ready user id ``obama``: face_id / ref from a real photo, a small LoRA file."""
    from easyphoto.infer.batch import load_users
    from easyphoto.store import UserStore

    store = UserStore(tmp_path / "data")
    run = store.begin_run("obama")
    (run / "lora.safetensors").write_bytes(b"not a real lora: the fake host never loads it")
    crop = jpeg(face_crop(rgb("obama.jpg"), backend))
    (run / "face_id.jpg").write_bytes(crop)
    (run / "ref.jpg").write_bytes(crop)
    record = store.commit_run("obama", run, base_model="", steps=0)
    return load_users(store, ["obama"], backend), record


@pytest.mark.parametrize("case", ["a1111-1.6", "a1111-1.10", "forge"])
def test_portrait_through_the_host(make_host, case, users, backend, rgb, one_thread):
    from easyphoto.infer.batch import BatchOptions, run_batch

    fake = make_host(case)
    loaded, record = users
    engine = SpyEngine(WebUIEngine(fake.host, HostGpuLock(fake.host)))
    template = rgb("obama2.jpg")
    request = InferRequest(user_ids=["obama"], face_backend="lite", seed=1).validate()
    batch = run_batch([template], request, engine=engine, backend=backend, users=loaded,
                      options=BatchOptions(keep=True))
    assert not batch.errors, batch.errors
    assert len(fake.calls) == 2 and [c.method for c in engine.calls] == ["inpaint", "inpaint"]

    first, second = (call["p"] for call in fake.calls)
    assert (first.steps, first.denoising_strength, first.mask_blur) == (50, 0.45, 8)
    assert (second.steps, second.denoising_strength, second.mask_blur) == (20, 0.30, 8)
    for p, call in zip((first, second), engine.calls):
        assert np.array_equal(np.asarray(p.init_images[0]), call.image)
        assert np.array_equal(np.asarray(p.mask), call.mask)
        assert p.width == call.image.shape[1] and p.height == call.image.shape[0]
        assert min(p.width, p.height) == 512 and p.seed == 1
        stem = f"easyphoto_{record.path.name}"
        assert p.prompt.startswith("easyphoto_face, easyphoto, 1person")
        assert p.prompt.endswith(f"<lora:{stem}:0.9>")
        handed = call.generation.controls
        assert [u.weight for u in p.cn_units] == [u.weight for u in handed]
        for unit, control in zip(p.cn_units, handed):
            assert unit.enabled and np.array_equal(unit.image, control.image)
            assert unit.image.dtype == np.uint8 and unit.image.shape == call.image.shape
    assert [u.model.split(" [")[0] for u in first.cn_units] == [
        "control_v11p_sd15_canny", "control_v11p_sd15_openpose", "control_sd15_random_color"]
    assert [u.weight for u in first.cn_units] == [0.5, 0.5, 0.85]
    assert np.array_equal(first.cn_units[0].image, canny(engine.calls[0].image))
    assert np.array_equal(first.cn_units[2].image, color_layout(engine.calls[0].image))
    assert [u.model.split(" [")[0] for u in second.cn_units] == [
        "control_v11p_sd15_canny", "control_v11f1e_sd15_tile"]
    assert [u.weight for u in second.cn_units] == [1.0, 1.0]
    assert np.array_equal(second.cn_units[1].image, engine.calls[1].image)
    assert (fake.models / "Lora" / f"{stem}.safetensors").read_bytes() == \
        record.lora_path.read_bytes()

    out = np.asarray(batch.results[0].image)
    outside = ~crops_mask(template.shape, backend.detect(template))
    assert np.array_equal(out[outside], template[outside]) and not np.array_equal(out, template)
