"""The one-person portrait pipeline (SPEC 2.2–2.7) on real photos with the tiny-random engine.

Proves: the output has the template's size and mode and only pixels inside the face's ``box×3``
crop change; the same seed gives identical PNG bytes (another seed does not); the control images
handed to the REAL engine are the ones SPEC names (canny / colour layout of the first-diffusion
input, openpose of the align-and-pasted "replaced" crop, canny / tile of the fused crop), with
the SPEC's weights, steps, strengths, LoRA and prompt; the first-diffusion mask is the SPEC 2.6
one and the second-diffusion mask is exactly ring ∪ eyes ∪ lips (ring only without the mouth
mask); every stage flag really skips its stage; the working size follows SPEC 2.3; a style
LoRA follows the user LoRA at its weight and a missing one is a clear error.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from infer_helpers import SpyBackend, crops_mask, infer

from easyphoto.engine.base import LoraRef
from easyphoto.errors import InvalidRequest
from easyphoto.face.geometry import align_and_paste
from easyphoto.infer import portrait as portrait_module
from easyphoto.infer.controls import canny, color_layout, openpose, tile
from easyphoto.infer.masks import first_diffusion_mask
from easyphoto.infer.portrait import (
    SD15_SIZE,
    SDXL_SIZE,
    TINY_SIZE,
    crop_and_resize,
    resize,
    working_size,
)
from easyphoto.infer.prompts import DEFAULT_NEGATIVE, DEFAULT_POSITIVE, portrait_prompt
from easyphoto.params import CAPTION

TEMPLATE = "obama2.jpg"


@pytest.fixture(scope="module")
def template(rgb):
    return rgb(TEMPLATE)


@pytest.fixture(scope="module")
def real_run(template, backend, users, one_thread):
    """One default run (SPEC defaults, seed 1) through the spy around the real engine."""
    from infer_helpers import SpyEngine, shared_engine

    engine = SpyEngine(shared_engine())
    return infer(template, engine, backend, users), engine


def test_output_keeps_size_mode_and_everything_outside_the_crop(real_run, template, backend):
    result, engine = real_run
    assert result.image.size == (template.shape[1], template.shape[0])
    assert result.image.mode == "RGB"
    out = np.asarray(result.image)
    outside = ~crops_mask(template.shape, backend.detect(template))
    assert np.array_equal(out[outside], template[outside])
    assert not np.array_equal(out, template)  # the face did change
    person = result.people[0]
    assert person["user_id"] == "obama" and person["status"] == "done"
    assert person["stages"] == ["crop_and_resize", "redetect", "align_and_paste", "fusion_before",
                                "first_diffusion", "colour_shift_first", "fusion_after",
                                "second_diffusion", "colour_shift_last", "paste_back"]
    assert [c.method for c in engine.calls] == ["inpaint", "inpaint"]


def test_same_seed_same_bytes(real_run, template, backend, users, real_engine):
    first, _ = real_run
    again = infer(template, real_engine, backend, users)
    assert again.png_bytes() == first.png_bytes()
    other = infer(template, real_engine, backend, users, seed=2)
    assert other.png_bytes() != first.png_bytes()


def test_first_diffusion_controls_are_the_spec_ones(real_run, users, backend):
    result, engine = real_run
    portrait = result.group.portraits[0]
    kept, face = portrait.intermediates, portrait.face
    call = engine.calls[0]
    # the input is the crop after fusion before; the crop is box×3 at the working size
    assert np.array_equal(call.image, kept["fusion_before"])
    crop = kept["crop_and_resize"]
    assert min(crop.shape[:2]) == 64 and crop.shape[0] % 16 == crop.shape[1] % 16 == 0
    user = users["obama"]
    replaced, _ = align_and_paste(kept["crop_and_resize"], face, user.face_id, user.face_id_face,
                                  1.5)
    assert np.array_equal(kept["align_and_paste"], replaced)
    units = {u.kind: u for u in call.generation.controls}
    assert [u.kind for u in call.generation.controls] == ["canny", "openpose", "color"]
    assert [u.weight for u in call.generation.controls] == [0.5, 0.5, 0.85]
    assert np.array_equal(units["canny"].image, canny(call.image))
    assert np.array_equal(units["color"].image, color_layout(call.image))
    pose, source = openpose(replaced, [face], backend=backend)
    assert np.array_equal(units["openpose"].image, pose) and portrait.openpose_source == source
    assert np.array_equal(call.mask, first_diffusion_mask(call.image, face, backend))
    assert (call.strength, call.generation.steps, call.generation.cfg) == (0.45, 50, 7.0)
    assert call.generation.sampler == "DPM++ 2M SDE Karras" and call.generation.seed == 1
    assert list(call.generation.loras) == [LoraRef(str(user.lora_path), 0.9)]
    assert call.mask_blur == 1  # 8 px at the 512 scale → 1 px at the tiny 64 px scale


def test_second_diffusion_uses_the_fused_crop(real_run):
    result, engine = real_run
    kept = result.group.portraits[0].intermediates
    first, second = engine.calls
    assert np.array_equal(kept["first_diffusion"], first.output)
    assert np.array_equal(second.image, kept["fusion_after"])
    assert [u.kind for u in second.generation.controls] == ["canny", "tile"]
    assert [u.weight for u in second.generation.controls] == [1.0, 1.0]
    assert np.array_equal(second.generation.controls[0].image, canny(kept["fusion_after"]))
    assert np.array_equal(second.generation.controls[1].image, tile(kept["fusion_after"]))
    assert (second.strength, second.generation.steps) == (0.30, 20)
    assert np.array_equal(kept["second_diffusion"], second.output)


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _ring_eyes_lips(image, face, backend):
    """SPEC 2.7.3 from the backend's raw part masks: dilate 32 − erode 16 of the face ∪ eyes ∪
    lips (face = skin, brows, eyes, nose, mouth, lips); the widths are pixels at a 512 working
    size, scaled to the crop's short side (64 with the tiny models: 4 and 2 px)."""
    scale = min(image.shape[:2]) / 512.0
    outer, inner = max(1, round(32 * scale)), max(1, round(16 * scale))

    def part(*names):
        return np.where(backend.part_masks(image, face, names) > 127, 255, 0).astype(np.uint8)

    face_mask = part("skin", "brows", "eyes", "nose", "mouth", "lips")
    ring = (cv2.dilate(face_mask, _disc(outer)) > 0) & ~(cv2.erode(face_mask, _disc(inner)) > 0)
    return ring, (part("eyes") > 0) | (part("lips") > 0)


def test_second_diffusion_mask_is_ring_eyes_lips(real_run, backend):
    result, engine = real_run
    face = result.group.portraits[0].face
    second = engine.calls[1]
    ring, eyes_lips = _ring_eyes_lips(second.image, face, backend)
    assert np.array_equal(second.mask > 0, ring | eyes_lips)
    assert set(np.unique(second.mask)) <= {0, 255}


def test_without_mouth_mask_the_second_mask_is_the_ring(template, backend, users, fake_engine):
    result = infer(template, fake_engine, backend, users, mouth_mask=False)
    second = fake_engine.calls[1]
    ring, _ = _ring_eyes_lips(second.image, result.group.portraits[0].face, backend)
    assert np.array_equal(second.mask > 0, ring)


def test_prompt_is_spec_2_1(real_run):
    _, engine = real_run
    positive, negative = portrait_prompt("masterpiece, beauty", "")
    assert positive == f"{CAPTION}, masterpiece, beauty, {DEFAULT_POSITIVE}"
    assert negative == DEFAULT_NEGATIVE
    assert all((c.generation.prompt, c.generation.negative_prompt) == (positive, negative)
               for c in engine.calls)


FLAGS = {
    "apply_face_fusion_before": ("fusion_before", "fuse", 1),
    "apply_face_fusion_after": ("fusion_after", "fuse", 1),
    "color_shift_first": ("colour_shift_first", "colour_shift", 1),
    "color_shift_last": ("colour_shift_last", "colour_shift", 1),
}


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_each_stage_flag_skips_its_stage(flag, template, backend, users, fake_engine,
                                         monkeypatch):
    stage, spied, calls_left = FLAGS[flag]
    shifts = []
    real_shift = portrait_module.colour_shift
    monkeypatch.setattr(portrait_module, "colour_shift",
                        lambda *a, **k: shifts.append(a[4]) or real_shift(*a, **k))
    spy = SpyBackend(backend)
    on = infer(template, fake_engine, spy, users)
    counts_on = {"fuse": spy.counts["fuse"], "colour_shift": len(shifts)}
    assert counts_on == {"fuse": 2, "colour_shift": 2}
    spy.counts["fuse"], shifts[:] = 0, []
    off = infer(template, fake_engine, spy, users, **{flag: False})
    counts_off = {"fuse": spy.counts["fuse"], "colour_shift": len(shifts)}
    assert counts_off[spied] == calls_left
    assert stage in on.people[0]["stages"] and stage not in off.people[0]["stages"]
    assert len(fake_engine.calls) == 4  # both diffusions ran both times


def test_crop_face_preprocess_off_works_on_the_whole_template(template, backend, users,
                                                              fake_engine):
    result = infer(template, fake_engine, backend, users, crop_face_preprocess=False)
    first = fake_engine.calls[0]
    height, width = template.shape[:2]
    assert first.image.shape[1::-1] == TINY_SIZE.fit(width, height)
    kept = result.group.portraits[0].intermediates
    assert np.array_equal(kept["resize"], resize(template, TINY_SIZE.fit(width, height)))
    assert result.people[0]["stages"][0] == "resize"
    assert result.image.size == (width, height)


def test_working_size_follows_spec_2_3(template, backend):
    assert working_size("tiny-random") == TINY_SIZE and working_size("") == SD15_SIZE
    assert working_size("", sdxl=True) == SDXL_SIZE
    assert SD15_SIZE.fit(1000, 1500) == (512, 768) and SD15_SIZE.fit(1000, 1530) == (512, 768)
    width, height = SDXL_SIZE.fit(1000, 1500)
    assert width % 32 == height % 32 == 0 and 0.9 < width * height / 1024 ** 2 <= 1.0
    face = backend.detect(template)[0]
    crop = crop_and_resize(template, face, SD15_SIZE)
    x0, y0, x1, y1 = face.box.scaled(3.0, clip=(template.shape[1], template.shape[0])).to_int()
    assert crop.box == (x0, y0, x1, y1)
    assert min(crop.image.shape[:2]) == 512 and crop.image.shape[1] % 32 == 0


def test_style_lora_follows_the_user_lora(template, backend, users, fake_engine):
    style = str(users["biden"].lora_path)
    infer(template, fake_engine, backend, users, style_lora=style, style_lora_weight=0.65)
    user = LoraRef(str(users["obama"].lora_path), 0.9)
    expected = [user, LoraRef(style, 0.65)]
    assert [list(c.generation.loras) for c in fake_engine.calls] == [expected, expected]
    with pytest.raises(InvalidRequest, match="style LoRA 'no-such.safetensors' is not a file"):
        infer(template, fake_engine, backend, users, style_lora="no-such.safetensors")
