"""Validation (SPEC 1.4): templates, renders on the tiny pipeline, render → score → fuse.

The tiny-random models render noise, so nothing rendered by them holds a face: the plumbing
tests (shapes, masks, ControlNet input, LoRA switching, pipeline reuse) use the tiny pipeline;
the chain test replaces the diffusion step by one that keeps or swaps the template's real face.
Scoring on real photos and the fusion arithmetic are in ``test_fusion.py``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import shutil
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from easyphoto.face import get_face_backend
from easyphoto.errors import InvalidRequest
from easyphoto.face.types import Box
from easyphoto.params import CAPTION, TrainRequest
from easyphoto.train import validate
from easyphoto.train.components import TrainComponents
from easyphoto.train.fusion import choose_and_fuse
from easyphoto.train.lora_io import lora_target_modules, save_kohya_lora
from easyphoto.train.tiny import build_tiny_sd15
from easyphoto.train.validate import (
    SOURCE_TEMPLATES,
    SOURCE_USER,
    Render,
    ValidationRenderer,
    render_all_checkpoints,
    render_validation,
    score_renders,
    validation_templates,
)
from easyphoto.train.validation_pipeline import (ADAPTER, IN_PLACE, MERGED, ValidationError,
                                              prepare_input)

RANK, ALPHA, TINY_PX = 4, 2.0, 64


from lora_helpers import add_random_lora  # noqa: E402

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def backend():
    return get_face_backend("lite")


@pytest.fixture(scope="module")
def request_():
    return TrainRequest(user_id="alice", seed=7)


def components(tiny, controlnet=True) -> TrainComponents:
    return TrainComponents("sd15", tiny.unet, tiny.vae, [tiny.text_encoder], [tiny.tokenizer],
                           tiny.scheduler, torch.device("cpu"), torch.float32, "tiny-random",
                           tiny.controlnets.get("canny") if controlnet else None)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_sd15(0, controlnets=("canny",))


def add_lora(models, seed: int) -> list:
    """Training-style peft adapters on [unet, text_encoder] with random A/B; their states."""
    return add_random_lora(models, "sd15", seed=seed, rank=RANK, alpha=ALPHA)


@pytest.fixture(scope="module")
def lora_files(tiny, tmp_path_factory):
    """Two LoRA checkpoint files (steps 100, 200) trained on copies of the tiny models."""
    folder, files = tmp_path_factory.mktemp("ckpt"), {}
    for step, seed in ((100, 1), (200, 2)):
        unet_state, te_state = add_lora([copy.deepcopy(tiny.unet),
                                         copy.deepcopy(tiny.text_encoder)], seed)
        files[step] = save_kohya_lora(folder / f"step{step}.safetensors", unet_state, [te_state],
                                      RANK, ALPHA)
    return files


@pytest.fixture(scope="module")
def templates(backend, photo):
    """Two real-face templates (obama, biden), detected by the lite backend."""
    return validation_templates(None, [photo("obama.jpg"), photo("biden.jpg")], backend)


# ---- templates --------------------------------------------------------------------------------
def test_templates_keep_only_images_with_a_face(tmp_path, photo, backend, caplog):
    shutil.copy(photo("obama2.jpg"), tmp_path / "b_portrait.jpg")
    shutil.copy(photo("grass.png"), tmp_path / "a_landscape.png")
    (tmp_path / "README.md").write_text("not an image")
    with caplog.at_level(logging.INFO, logger="easyphoto.train.validate"):
        found = validation_templates(tmp_path, [photo("biden.jpg")], backend)
    assert found.source == SOURCE_TEMPLATES and [t.name for t in found] == ["b_portrait"]
    assert found[0].source == SOURCE_TEMPLATES and found[0].image.dtype == np.uint8
    assert found[0].face.box.area > 0
    assert [s["file"].endswith("a_landscape.png") for s in found.skipped] == [True]
    assert "no face" in found.skipped[0]["reason"] and "a_landscape.png" in caplog.text
    json.dumps(found.to_dict())


def test_empty_folder_falls_back_to_distinct_user_photos(tmp_path, photo, backend):
    photos = [photo(n) for n in ("obama.jpg", "obama.jpg", "coffee.png", "biden.jpg",
                                 "obama2.jpg", "obama3.jpg", "astronaut.png")]
    found = validation_templates(tmp_path, photos, backend, limit=4)
    assert found.source == SOURCE_USER == "user photos" and "user's own photos" in found.message
    assert [t.name for t in found] == ["obama", "biden", "obama2", "obama3"]
    assert {t.source for t in found} == {SOURCE_USER}
    reasons = " ".join(s["reason"] for s in found.skipped)
    assert "same image" in reasons and "coffee.png: no face" in reasons
    assert validation_templates(tmp_path / "missing", photos[:1], backend).source == SOURCE_USER
    with pytest.raises(ValidationError, match="no validation template"):
        validation_templates(tmp_path, [photo("coffee.png")], backend)


# ---- rendering with the tiny pipeline -----------------------------------------------------------
def outside_mask(render: Render, template) -> np.ndarray:
    """(h, w) bool: crop pixels beyond the face box×1.3 (from the template's face) + feather."""
    ox, oy = render.crop_box.x0, render.crop_box.y0
    box = template.face.box
    face = Box(box.x0 - ox, box.y0 - oy, box.x1 - ox, box.y1 - oy)
    h, w = render.image.shape[:2]
    m = face.scaled(1.3, (w, h))
    x0, y0, x1, y1 = m.to_int()
    pad = render.feather_px
    assert pad <= 0.05 * min(h, w) + 1
    keep = np.ones((h, w), bool)
    keep[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad] = False
    return keep


def template_crop(template, render: Render) -> np.ndarray:
    x0, y0, x1, y1 = render.crop_box.to_int()
    return template.image[y0:y1, x0:x1]


@pytest.fixture(scope="module")
def first_renders(tiny, lora_files, templates, request_, tmp_path_factory):
    out = tmp_path_factory.mktemp("validation")
    renderer = ValidationRenderer(components(tiny), request_, resolution=TINY_PX)
    return renderer.render(lora_files[100], 100, templates, out), out


def test_renders_have_crop_size_and_change_only_the_masked_face(first_renders, templates):
    renders, out = first_renders
    assert [r.template for r in renders] == ["obama", "biden"]
    for render, template in zip(renders, templates):
        crop = template_crop(template, render)
        assert render.image.shape == crop.shape and render.image.dtype == np.uint8
        keep = outside_mask(render, template)
        assert keep.mean() > 0.5
        np.testing.assert_array_equal(render.image[keep], crop[keep])
        assert np.abs(render.image[~keep].astype(int) - crop[~keep]).mean() > 5  # face repainted
        assert render.path == out / f"step100_{template.name}.jpg" and render.path.is_file()
        assert render.control == "canny" and render.step == 100
    json.dumps([r.to_dict() for r in renders])


def test_lora_switches_per_checkpoint_on_one_pipeline(tiny, lora_files, templates, request_,
                                                      tmp_path, monkeypatch, first_renders):
    built = []
    real_build = validate.build_validation_pipeline
    monkeypatch.setattr(validate, "build_validation_pipeline",
                        lambda *a, **k: built.append(1) or real_build(*a, **k))
    before = {k: v.clone() for k, v in tiny.unet.state_dict().items()}
    parts, renderer = components(tiny), None
    renderer = ValidationRenderer(parts, request_, resolution=TINY_PX)
    runs = [render_validation(parts, lora_files[step], templates[:1], request_, step=step,
                              out_dir=tmp_path, renderer=renderer) for step in (100, 200, 100)]
    assert len(built) == 1 and renderer.lora_modes == {100: ADAPTER, 200: ADAPTER}
    first, second, again = (run[0].image for run in runs)
    assert np.abs(first.astype(int) - second).max() > 10  # the LoRA really changed
    np.testing.assert_array_equal(first, again)  # deterministic; step 200's LoRA fully removed
    np.testing.assert_array_equal(first, first_renders[0][0].image)  # same as another renderer
    after = tiny.unet.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_canny_of_the_crop_goes_to_the_controlnet(tiny, lora_files, templates, request_,
                                                  tmp_path, monkeypatch):
    renderer = ValidationRenderer(components(tiny), request_, resolution=TINY_PX)
    assert type(renderer.pipe).__name__ == "StableDiffusionControlNetInpaintPipeline"
    calls, real_call = [], type(renderer.pipe).__call__

    def spy(pipe, *args, **kwargs):
        calls.append(kwargs)
        return real_call(pipe, *args, **kwargs)

    monkeypatch.setattr(type(renderer.pipe), "__call__", spy)
    renders = renderer.render(lora_files[100], 100, list(templates) * 2, tmp_path)
    assert len(calls) == 1  # all four share the 64×64 working size: one batched call
    assert sum(len(k["image"]) for k in calls) == 4 and [r.seed for r in renders] == [7, 8, 9, 10]
    for kwargs in calls:
        for image, control, mask in zip(kwargs["image"], kwargs["control_image"],
                                        kwargs["mask_image"]):
            image, mask = np.asarray(image), np.asarray(mask)
            assert image.shape == (TINY_PX, TINY_PX, 3) and cv2.Canny(image, 100, 200).any()
            np.testing.assert_array_equal(np.asarray(control), np.repeat(
                cv2.Canny(image, 100, 200)[:, :, None], 3, axis=2))
            assert set(np.unique(mask)) == {0, 255} and 0.1 < (mask > 0).mean() < 0.6
        assert (kwargs["prompt"][0], kwargs["strength"], kwargs["num_inference_steps"],
                kwargs["guidance_scale"], kwargs["controlnet_conditioning_scale"]) == \
            (CAPTION, 0.65, 20, 9.0, 1.0)
    crop = template_crop(templates[0], renders[0])
    np.testing.assert_array_equal(np.asarray(calls[0]["image"][0]), cv2.resize(
        crop, (TINY_PX, TINY_PX), interpolation=cv2.INTER_AREA))


def test_batching_keeps_each_template_s_noise(tiny, lora_files, templates, request_, tmp_path,
                                              first_renders):
    renderer = ValidationRenderer(components(tiny), request_, resolution=TINY_PX, max_batch=1)
    alone = renderer.render(lora_files[100], 100, templates, tmp_path)
    for single, batched in zip(alone, first_renders[0]):
        assert np.abs(single.image.astype(int) - batched.image).max() <= 2


@pytest.mark.parametrize("why", ["request", "no_controlnet"])
def test_without_controlnet_it_is_a_plain_inpaint(tiny, lora_files, templates, request_,
                                                  tmp_path, monkeypatch, why):
    request = dataclasses.replace(request_, validation_canny=why != "request")
    renderer = ValidationRenderer(components(tiny, controlnet=why == "request"), request,
                                  resolution=TINY_PX)
    assert type(renderer.pipe).__name__ == "StableDiffusionInpaintPipeline"
    assert renderer.notes and "plain inpaint" in renderer.notes[0]
    calls, real_call = [], type(renderer.pipe).__call__
    monkeypatch.setattr(type(renderer.pipe), "__call__",
                        lambda pipe, *a, **k: calls.append(k) or real_call(pipe, *a, **k))
    render = renderer.render(lora_files[100], 100, templates[:1], tmp_path)[0]
    assert "control_image" not in calls[0] and render.control == "none"
    keep = outside_mask(render, templates[0])
    np.testing.assert_array_equal(render.image[keep], template_crop(templates[0], render)[keep])


def test_sdxl_family_uses_the_sdxl_controlnet_inpaint_pipeline(templates, request_, tmp_path):
    from diffusers import ControlNetModel
    from peft import LoraConfig, get_peft_model_state_dict

    from easyphoto.train.tiny import build_tiny_sdxl

    xl = build_tiny_sdxl(0)
    unet = copy.deepcopy(xl.unet)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA,
                                target_modules=list(lora_target_modules("sdxl").unet)))
    lora = save_kohya_lora(tmp_path / "xl.safetensors", get_peft_model_state_dict(unet), [],
                           RANK, ALPHA, family="sdxl")
    parts = TrainComponents("sdxl", xl.unet, xl.vae, [xl.text_encoder, xl.text_encoder_2],
                            [xl.tokenizer, xl.tokenizer_2], xl.scheduler, torch.device("cpu"),
                            torch.float32, "tiny-random", ControlNetModel.from_unet(xl.unet))
    request = dataclasses.replace(request_, sdxl=True)
    renderer = ValidationRenderer(parts, request, resolution=TINY_PX)
    assert type(renderer.pipe).__name__ == "StableDiffusionXLControlNetInpaintPipeline"
    render = renderer.render(lora, 100, templates[:1], tmp_path)[0]
    crop = template_crop(templates[0], render)
    keep = outside_mask(render, templates[0])
    assert render.image.shape == crop.shape and render.control == "canny"
    np.testing.assert_array_equal(render.image[keep], crop[keep])


def test_training_adapter_is_switched_in_place_and_restored(lora_files, templates, request_,
                                                            tmp_path, first_renders):
    fresh = build_tiny_sd15(0, controlnets=("canny",))  # same base weights as `tiny`
    add_lora([fresh.unet, fresh.text_encoder], seed=99)  # training's live adapter
    fresh.unet.train()
    live = {n: (p.detach().clone(), p.requires_grad) for n, p in fresh.unet.named_parameters()}
    renderer = ValidationRenderer(components(fresh), request_, resolution=TINY_PX)
    render = renderer.render(lora_files[100], 100, templates[:1], tmp_path)[0]
    assert renderer.lora_modes == {100: IN_PLACE}
    # the file's LoRA was used: same image as the adapter path on a LoRA-free model
    assert np.abs(render.image.astype(int) - first_renders[0][0].image).max() <= 1
    assert fresh.unet.training and fresh.unet.down_blocks[0].training
    for name, param in fresh.unet.named_parameters():
        assert torch.equal(param, live[name][0]) and param.requires_grad == live[name][1], name


@pytest.mark.parametrize("own", [False, True])
def test_merged_checkpoint_renders_as_the_branches_do_and_base_weights_come_back(
        lora_files, templates, request_, tmp_path, own):
    """``merge_lora`` (CUDA's default): the in-place checkpoint is merged into the UNet's base
    weights while it renders — no LoRA branch runs, the renders match the unmerged ones, and
    every weight (base and LoRA) is bit-identical afterwards, for checkpoint after checkpoint."""
    fresh = build_tiny_sd15(0, controlnets=("canny",))
    add_lora([fresh.unet, fresh.text_encoder], seed=99)
    live = {n: (p.detach().clone(), p.requires_grad) for n, p in fresh.unet.named_parameters()}
    branch_calls = []
    for name, module in fresh.unet.named_modules():
        if ".lora_A." in name:  # a LoRA branch's first projection
            module.register_forward_hook(lambda *a: branch_calls.append(1))
    out = {}
    for merge in (False, True):
        renderer = ValidationRenderer(components(fresh), request_, resolution=TINY_PX,
                                      own_loop=own, merge_lora=merge)
        branch_calls.clear()
        out[merge] = [renderer.render(lora_files[step], step, templates[:2],
                                      tmp_path / f"{merge}{step}") for step in (100, 200)]
        assert renderer.lora_modes == dict.fromkeys((100, 200), MERGED if merge else IN_PLACE)
        assert bool(branch_calls) is not merge
        for name, param in fresh.unet.named_parameters():
            assert torch.equal(param, live[name][0]) and param.requires_grad == live[name][1]
        assert not any(getattr(m, "merged_adapters", None) for m in fresh.unet.modules())
    for unmerged, merged in zip(out[False], out[True]):
        for a, b in zip(unmerged, merged):
            assert np.abs(a.image.astype(int) - b.image).max() <= 2
    assert np.abs(out[True][0][0].image.astype(int) - out[True][1][0].image).max() > 10


def test_checkpoints_kept_in_memory_render_without_reading_their_files(
        lora_files, templates, request_, tmp_path, monkeypatch):
    """A checkpoint carrying its tensors (``Checkpoint.lora``) is applied from memory: the
    render is the one its file gives, and the file is not read."""
    from easyphoto.train import lora_io, validation_pipeline
    from easyphoto.train.lora import Checkpoint, LoraSnapshot

    fresh = build_tiny_sd15(0, controlnets=("canny",))
    add_lora([fresh.unet, fresh.text_encoder], seed=99)
    by_file = render_all_checkpoints(components(fresh), {100: lora_files[100]}, templates[:1],
                                     request_, tmp_path / "file")
    read = lora_io.load_kohya_lora(lora_files[100])
    snapshot = LoraSnapshot(read.unet, read.text_encoders, read.rank, read.alpha, read.metadata,
                            "sd15")

    def no_reading(path):
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(validation_pipeline, "load_kohya_lora", no_reading)
    kept = [Checkpoint(100, lora_files[100], snapshot)]
    by_memory = render_all_checkpoints(components(fresh), kept, templates[:1], request_,
                                       tmp_path / "memory")
    np.testing.assert_array_equal(by_memory[0].image, by_file[0].image)
    assert by_memory[0].path.read_bytes() == by_file[0].path.read_bytes()


def test_cancel_stops_rendering_and_restores_the_models(tiny, lora_files, templates, request_,
                                                        tmp_path):
    from easyphoto.progress import CancelToken, Cancelled

    token, seen = CancelToken(), []

    def progress(report):
        seen.append(report)
        if len(seen) == 2:  # after the first template (max_batch=1): between pipeline calls
            token.cancel()

    renderer = ValidationRenderer(components(tiny), request_, resolution=TINY_PX, max_batch=1)
    with pytest.raises(Cancelled):
        renderer.render(lora_files[100], 100, templates, tmp_path, progress, token)
    assert len(seen) == 2 and len(list(tmp_path.iterdir())) == 1
    token = CancelToken()  # cancelled after the loop's check: the pipeline's step callback stops
    with pytest.raises(Cancelled):
        renderer.render(lora_files[100], 200, templates, tmp_path, lambda p: token.cancel(), token)
    assert not list(tmp_path.glob("step200_*"))
    assert not any("lora" in n for n, _ in tiny.unet.named_modules())  # adapter removed


# ---- render → score → fuse, with a fake diffusion that keeps or swaps the real face ----
class FakeDiffusion(ValidationRenderer):
    """Diffusion replaced, per checkpoint step: "keep" returns the template crop (its real
    face), "swap" pastes biden's face over it, "noise" destroys it."""

    modes, biden, mode = {}, None, "keep"

    def render_jobs(self, submit, lora_path, step, *args, **kwargs):
        self.mode = self.modes[step]
        return super().render_jobs(submit, lora_path, step, *args, **kwargs)

    def diffuse(self, batch, seeds, cancel=None):
        return [self._fake(p, seed) for p, seed in zip(batch, seeds)]

    def _fake(self, prepared, seed):
        h, w = prepared.image.shape[:2]
        if self.mode == "keep":
            return prepared.image
        if self.mode == "swap":
            return cv2.resize(self.biden, (w, h), interpolation=cv2.INTER_AREA)
        return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_render_score_fuse_prefers_the_checkpoint_that_keeps_the_identity(
        tiny, lora_files, backend, photo, request_, tmp_path):
    train_embeddings = np.stack([backend.embed(t.image, t.face) for t in validation_templates(
        None, [photo("obama.jpg"), photo("obama3.jpg")], backend)])
    templates = validation_templates(None, [photo("obama2.jpg")], backend)
    biden = validation_templates(None, [photo("biden.jpg")], backend)[0]
    parts = components(tiny)
    renderer = FakeDiffusion(parts, request_, resolution=256)
    renderer.biden = prepare_input(biden.image, biden.face.box, 256).crop
    renderer.modes = {100: "swap", 200: "keep", 300: "noise"}
    checkpoints = [SimpleNamespace(step=s, path=lora_files[200 if s == 200 else 100])
                   for s in (300, 100, 200)]
    seen = []
    renders = render_all_checkpoints(parts, checkpoints, templates, request_,
                                     tmp_path / "validation", renderer=renderer,
                                     progress=lambda p: seen.append((p.done, p.total)))
    assert [r.step for r in renders] == [100, 200, 300] and seen[-1] == (3, 3)
    assert all(r.path.is_file() for r in renders)  # finished on the worker, saved on return
    scored = score_renders(renders, train_embeddings, backend)
    by_step = {r.step: r for r in scored}
    assert by_step[300].score is None and by_step[200].score > by_step[100].score
    result = choose_and_fuse(scored, checkpoints, 1, tmp_path / "lora.safetensors")
    assert result.weights == [{"step": 200, "checkpoint": lora_files[200].name, "count": 1,
                               "weight": 1.0}]
    assert (tmp_path / "face_id.jpg").read_bytes() == by_step[200].path.read_bytes()
    fused, original = load_file(tmp_path / "lora.safetensors"), load_file(lora_files[200])
    assert all(torch.equal(fused[k], original[k]) for k in original)


def test_square_crops_batch_templates_of_any_aspect():
    """Templates of different aspect ratios get the same working size (one batched call)."""
    from easyphoto.face.types import Box
    from easyphoto.train.validation_pipeline import prepare_input, square_crop_box

    tall, wide = np.zeros((900, 400, 3), np.uint8), np.zeros((300, 1200, 3), np.uint8)
    box = square_crop_box(Box(150, 100, 250, 220), 3.0, 400, 900)
    assert box.width == box.height == 360 and box.x0 >= 0 and box.x1 <= 400
    sizes = {prepare_input(image, face, 64).image.shape for image, face in
             ((tall, Box(150, 100, 250, 220)), (wide, Box(10, 20, 90, 110)))}
    assert sizes == {(64, 64, 3)}


def test_shipped_validation_templates_are_public_domain_portraits_with_faces():
    """The repository commits no photo: the manifest's packaged portraits are found in the
    installed packages and each shows one detectable face."""
    from easyphoto.train.pipeline import TEMPLATES_DIR

    result = validate.validation_templates(TEMPLATES_DIR, [], backend=get_face_backend("lite"))
    assert result.source == validate.SOURCE_TEMPLATES
    files = sorted(t.path.name for t in result.templates)
    assert "grace_hopper.jpg" in files
    assert all(t.face.box.area > 80 * 80 for t in result.templates)
    assert not [p for p in TEMPLATES_DIR.iterdir() if p.suffix.lower() in (".jpg", ".png")]


@pytest.mark.parametrize("live_adapter, batch", [(False, 1), (True, 1), (True, 4)])
def test_own_loop_renders_what_the_pipeline_renders(lora_files, templates, request_, tmp_path,
                                                    live_adapter, batch):
    """The engine's own loop (used on CUDA, where it replays the step as a CUDA graph) gives
    the pipeline's renders, for a checkpoint switched in place (training's live adapter) and
    one loaded as an adapter, one template per call or four in one batch (each with its own
    seed); the graph-free CPU run checks the arithmetic."""
    models = build_tiny_sd15(0, controlnets=("canny",))
    if live_adapter:
        add_lora([models.unet, models.text_encoder], seed=99)
    out, four = {}, [*templates, *(dataclasses.replace(t, name=t.name + "-2") for t in templates)]
    four = four if batch > 1 else four[:3]
    for own in (False, True):
        renderer = ValidationRenderer(components(models), request_, resolution=TINY_PX,
                                      max_batch=batch, own_loop=own)
        assert (renderer.loop is not None) == own
        renders = [renderer.render(lora_files[step], step, four, tmp_path / f"{own}{step}")
                   for step in (100, 200)]
        assert renderer.lora_modes == dict.fromkeys((100, 200),
                                                    IN_PLACE if live_adapter else ADAPTER)
        out[own] = [[r.image for r in run] for run in renders]
    for pipeline_run, loop_run in zip(out[False], out[True]):
        for by_pipeline, by_loop in zip(pipeline_run, loop_run):
            np.testing.assert_array_equal(by_loop, by_pipeline)
    assert np.abs(out[True][0][0].astype(int) - out[True][1][0]).max() > 10  # LoRA switched
    # a template's render depends on its seed (its place), not on its batch companions
    assert np.abs(out[True][0][0].astype(int) - out[True][0][2]).max() > 0


def test_own_loop_is_off_where_it_does_not_apply(tiny, request_):
    assert ValidationRenderer(components(tiny), request_, resolution=TINY_PX).loop is None  # CPU
    plain = dataclasses.replace(request_, validation_canny=False)
    assert ValidationRenderer(components(tiny), plain, resolution=TINY_PX,
                              own_loop=True).loop is None  # no ControlNet


def test_attention_order_is_checked_and_leaves_the_cpu_alone(tiny, request_):
    from easyphoto.train.lora import attention_order

    with pytest.raises(InvalidRequest, match="attention must be one of"):
        ValidationRenderer(components(tiny), request_, resolution=TINY_PX, attention="fast")
    assert ValidationRenderer(components(tiny), request_, resolution=TINY_PX).attention == "flash"
    assert isinstance(attention_order(torch.device("cpu"), "flash"), contextlib.nullcontext)
    assert isinstance(attention_order(torch.device("cuda"), "default"), contextlib.nullcontext)


def test_attention_order_on_older_torch_keeps_pytorch_s_own(monkeypatch):
    """A WebUI host's torch: no torch.nn.attention (< 2.3), or no priority order (< 2.5)."""
    import sys
    import types

    from easyphoto.train.lora import attention_order

    monkeypatch.setitem(sys.modules, "torch.nn.attention", None)
    assert isinstance(attention_order(torch.device("cuda"), "flash"), contextlib.nullcontext)

    def no_priority(backends):  # torch 2.3–2.4's signature
        raise AssertionError("not called with the priority flag")

    old = types.SimpleNamespace(SDPBackend=types.SimpleNamespace(FLASH_ATTENTION=1, MATH=3),
                                sdpa_kernel=no_priority)
    monkeypatch.setitem(sys.modules, "torch.nn.attention", old)
    assert isinstance(attention_order(torch.device("cuda"), "flash"), contextlib.nullcontext)
