"""DiffusersEngine on the tiny-random preset (CPU, 64-px models; the images are noise):
the inpaint contract, seeds, samplers, strength × steps, ControlNet units, LoRA adapters,
model residency, txt2img sizes and input errors."""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin as Mixin
from peft import LoraConfig, get_peft_model_state_dict

from easyphoto.engine import samplers
from easyphoto.engine.base import ControlUnit, DiffusionEngine, Generation, LoraRef
from easyphoto.engine.diffusers_engine import DiffusersEngine, blur_mask, composite
from easyphoto.errors import InvalidRequest, ModelUnavailable
from easyphoto.params import SAMPLERS
from easyphoto.train import loading
from easyphoto.train.lora_io import lora_target_modules, save_kohya_lora
from easyphoto.train.tiny import build_tiny_sd15, build_tiny_sdxl, save_tiny_sd15
from easyphoto.weights import ModelStore

SIZE = 64
GEN = Generation("easyphoto_face, easyphoto, 1person", "lowres", steps=4, cfg=7.0,
                 sampler="DPM++ 2M SDE Karras", seed=7)
RANK, ALPHA = 4, 4.0


@pytest.fixture(scope="module", autouse=True)
def one_thread_offline():
    """Tiny models run fastest single-threaded; nothing may reach a hub."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def engine():
    return DiffusersEngine("tiny-random", device="cpu")  # SDXL: tiny-random too


@pytest.fixture(scope="module")
def controls(face) -> dict:
    edges = np.repeat(cv2.Canny(face, 100, 200)[:, :, None], 3, axis=2)
    small = cv2.resize(face, (4, 4), interpolation=cv2.INTER_CUBIC)
    colour = cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
    return {"canny": edges, "openpose": face[:, ::-1], "color": colour, "tile": face}


def with_(generation: Generation = GEN, **changes) -> Generation:
    """``GEN`` (or ``generation``) with some fields changed."""
    return dataclasses.replace(generation, **changes)


def units(controls: dict, kinds=("canny", "openpose", "color", "tile"), weight=1.0) -> list:
    return [ControlUnit(kind, controls[kind], weight) for kind in kinds]


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.any(a != b))


# ---- inpaint contract ----------------------------------------------------------------------
def test_engine_follows_the_protocol_and_runs_fp32_on_cpu(engine):
    assert isinstance(engine, DiffusionEngine)
    assert engine.available_controls() == ("canny", "openpose", "color", "tile")
    assert engine.dtype == torch.float32 and engine.device.type == "cpu"
    engine = DiffusersEngine("tiny-random", device="cpu", dtype="fp16", offload=True)
    assert engine.dtype == torch.float32 and not engine.offload
    with pytest.raises(InvalidRequest, match="unknown dtype"):
        DiffusersEngine("tiny-random", device="cpu", dtype="int8")


def test_inpaint_changes_only_the_blurred_mask(engine, rgb):
    """At 128 px with the default blur 8 (SPEC 2.6): the 41-px kernel leaves a wide border."""
    face = cv2.resize(rgb("astronaut.png")[20:240, 120:340], (128, 128))
    mask = np.zeros((128, 128), np.uint8)
    mask[48:80, 40:88] = 255
    out = engine.inpaint(face, mask, 0.6, GEN)
    assert out.shape == face.shape and out.dtype == np.uint8
    soft = blur_mask(mask, 8)
    outside = soft == 0
    assert outside.sum() > 5000  # the check below covers a real area
    assert np.array_equal(out[outside], face[outside])
    inside = mask > 0
    assert np.mean(np.any(out[inside] != face[inside], axis=1)) > 0.9
    assert set(engine.timings) >= {"models", "loras", "prepare", "diffusion", "composite",
                                   "total"}
    assert all(value >= 0 for value in engine.timings.values())


def test_composite_is_exact_where_the_mask_is_zero_or_full():
    image, generated = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    soft = np.zeros((16, 16), np.uint8)
    soft[4:12, 4:12], soft[6:10, 6:10] = 128, 255
    out = composite(generated, image, soft)
    assert np.array_equal(out[soft == 0], image[soft == 0])
    assert np.array_equal(out[soft == 255], generated[soft == 255])


def test_seed_decides_the_bytes(engine, face, mask):
    first = engine.inpaint(face, mask, 0.6, GEN)
    engine.inpaint(face, mask, 0.6, with_(sampler="Euler a", seed=3))  # state in between
    again = engine.inpaint(face, mask, 0.6, GEN)
    other = engine.inpaint(face, mask, 0.6, with_(seed=8))
    assert first.tobytes() == again.tobytes()
    assert differ(first, other)
    assert engine.last_call["seed"] == 8


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs(engine, face, mask, sampler):
    out = engine.inpaint(face, mask, 1.0, with_(sampler=sampler, steps=2))
    assert out.shape == face.shape and differ(out, face)
    assert engine.last_call["steps_run"] == 2


def test_sampler_table_and_unknown_sampler(engine, face, mask):
    assert tuple(samplers.SCHEDULERS) == SAMPLERS
    with pytest.raises(InvalidRequest, match="Unknown sampler 'Heun'.*DPM\\+\\+ 2M SDE Karras"):
        engine.inpaint(face, mask, 0.5, with_(sampler="Heun"))


def count_unet_calls(engine, run) -> int:
    """UNet forward passes during ``run()`` (CFG batches both halves: one pass per step)."""
    calls = []
    handle = engine.models.get("sd15").unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        run()
    finally:
        handle.remove()
    return len(calls)


def test_strength_runs_int_steps_times_strength(engine, face, mask):
    """SPEC 2.6: 50 steps at 0.45 → 22 denoising steps (WebUI and diffusers semantics)."""
    calls = count_unet_calls(engine, lambda: engine.inpaint(face, mask, 0.45, with_(steps=50)))
    assert calls == 22 and engine.last_call["steps_run"] == 22
    assert engine.last_call["schedule"] == 50
    # 2 steps at 0.3 would run none: the schedule grows so exactly one step runs
    calls = count_unet_calls(engine, lambda: engine.inpaint(face, mask, 0.3, with_(steps=2)))
    assert calls == 1 and engine.last_call["schedule"] == 4


def test_no_work_without_strength_or_mask(face, mask, monkeypatch):
    engine = DiffusersEngine("tiny-random", device="cpu")
    monkeypatch.setattr(loading, "load_components", lambda *a, **k: pytest.fail("loaded"))
    assert np.array_equal(engine.inpaint(face, mask, 0.0, GEN), face)
    assert np.array_equal(engine.inpaint(face, np.zeros_like(mask), 0.5, GEN), face)


# ---- ControlNet units ------------------------------------------------------------------------
def test_control_units_run_and_their_images_matter(engine, face, mask, controls):
    plain = engine.inpaint(face, mask, 0.8, GEN)
    four = engine.inpaint(face, mask, 0.8, with_(controls=units(controls)))
    assert engine.last_call["controls"] == ["canny", "openpose", "color", "tile"]
    assert differ(four, plain)
    canny = engine.inpaint(face, mask, 0.8, with_(controls=units(controls, ("canny",))))
    blank = {"canny": np.zeros_like(face)}
    canny_blank = engine.inpaint(face, mask, 0.8, with_(controls=units(blank, ("canny",))))
    assert differ(canny, canny_blank)
    two = engine.inpaint(face, mask, 0.8, with_(controls=units(controls, ("canny", "tile"))))
    assert differ(two, canny)


def test_control_weight_and_window(engine, face, mask, controls):
    plain = engine.inpaint(face, mask, 0.8, GEN)
    full = engine.inpaint(face, mask, 0.8, with_(controls=units(controls, ("tile",), 1.0)))
    zero = engine.inpaint(face, mask, 0.8, with_(controls=units(controls, ("tile",), 0.0)))
    assert differ(full, zero)
    assert np.array_equal(zero, plain)  # a weight-0 unit is dropped: bit-identical
    late = ControlUnit("tile", controls["tile"], 1.0, start=0.5, end=1.0)
    assert differ(engine.inpaint(face, mask, 0.8, with_(controls=[late])), full)


def test_controlnets_load_once_per_kind(face, mask, controls, monkeypatch):
    engine = DiffusersEngine("tiny-random", device="cpu")
    loaded = []
    original = engine.models._load_controlnet
    monkeypatch.setattr(engine.models, "_load_controlnet",
                        lambda family, kind: loaded.append(kind) or original(family, kind))
    engine.load(controls=("canny",))
    assert loaded == ["canny"]
    for kinds in (("canny",), ("canny", "color"), ("color", "canny", "tile")):
        engine.inpaint(face, mask, 0.5, with_(steps=2, controls=units(controls, kinds)))
    assert loaded == ["canny", "color", "tile"]


def test_missing_controlnet_names_its_role(tmp_path, face, mask, controls):
    folder = save_tiny_sd15(tmp_path / "base", controlnets=("canny",))
    engine = DiffusersEngine(str(folder), device="cpu", store=ModelStore(tmp_path / "models"))
    assert engine.available_controls() == ("canny",)
    out = engine.inpaint(face, mask, 0.5, with_(steps=2, controls=units(controls, ("canny",))))
    assert out.shape == face.shape
    with pytest.raises(ModelUnavailable, match="controlnet_sd15_openpose"):
        engine.inpaint(face, mask, 0.5, with_(controls=units(controls, ("openpose",))))


# ---- LoRA ----------------------------------------------------------------------------------
def make_lora(path, seed: int, text_encoder: bool):
    """A kohya LoRA file for the tiny SD1.5 set: peft rank-4 adapters, random lora_B."""
    tiny, targets = build_tiny_sd15(0), lora_target_modules("sd15")
    models = [(tiny.unet, targets.unet), (tiny.text_encoder, targets.text_encoder)]
    generator, states = torch.Generator().manual_seed(seed), []
    for model, names in models[:2 if text_encoder else 1]:
        model.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(names)))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(0.5 * torch.randn(param.shape, generator=generator))
        states.append(get_peft_model_state_dict(model))
    return save_kohya_lora(path, states[0], states[1:], RANK, ALPHA)


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return (make_lora(folder / "user.safetensors", 1, text_encoder=True),
            make_lora(folder / "style.safetensors", 2, text_encoder=True),
            make_lora(folder / "unet_only.safetensors", 3, text_encoder=False))


@pytest.fixture
def load_spy(monkeypatch):
    """Adapter names passed to ``load_lora_weights`` (every SD1.5 pipeline inherits it)."""
    calls, original = [], Mixin.load_lora_weights

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("adapter_name"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Mixin, "load_lora_weights", spy)
    return calls


def test_lora_applies_by_weight_and_loads_once(face, mask, lora_files, load_spy):
    engine = DiffusersEngine("tiny-random", device="cpu")
    user = lora_files[0]
    base = engine.inpaint(face, mask, 0.7, GEN)
    on = engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(str(user), 1.0)]))
    off = engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(str(user), 0.0)]))
    half = engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(str(user), 0.5)]))
    assert differ(on, off) and differ(half, on) and np.array_equal(off, base)
    assert len(load_spy) == 1  # one file, loaded once, re-weighted since
    assert np.array_equal(engine.inpaint(face, mask, 0.7, GEN), base)  # disabled exactly
    again = engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(str(user), 1.0)]))
    assert again.tobytes() == on.tobytes() and len(load_spy) == 1


def test_two_loras_at_weights(face, mask, lora_files, load_spy):
    engine = DiffusersEngine("tiny-random", device="cpu")
    user, style = (str(path) for path in lora_files[:2])
    only_user = engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(user, 0.9)]))
    models = engine.models.get("sd15")

    def adapter_tensors() -> dict:
        return {(part, name): param.detach().clone()
                for part, model in (("unet", models.unet), ("te", models.text_encoders[0]))
                for name, param in model.named_parameters() if "ep_lora_0" in name}

    before = adapter_tensors()
    plain = engine.inpaint(face, mask, 0.7, GEN)  # LoRA layers off while the next one loads
    pair = with_(loras=[LoraRef(user, 0.9), LoraRef(style, 0.65)])
    both = engine.inpaint(face, mask, 0.7, pair)
    assert differ(both, plain)
    # loading the second adapter leaves the first one's tensors alone (text encoder included)
    after = adapter_tensors()
    assert {part for part, _ in before} == {"unet", "te"} and after.keys() == before.keys()
    assert all(torch.equal(before[key], after[key]) for key in before)
    only_style = engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(style, 0.65)]))
    assert differ(both, only_user) and differ(both, only_style)
    assert len(load_spy) == 2
    assert engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(user, 0.9)])).tobytes() == \
        only_user.tobytes()
    assert engine.inpaint(face, mask, 0.7, pair).tobytes() == both.tobytes()
    assert set(engine.models.get("sd15").loras.loaded) == {os.path.realpath(user),
                                                           os.path.realpath(style)}


def test_lora_cache_evicts_and_notices_changed_files(face, mask, lora_files, load_spy, tmp_path):
    engine = DiffusersEngine("tiny-random", device="cpu", lora_cache_size=1)
    user, style = str(lora_files[0]), str(lora_files[2])  # the second has no text-encoder part
    first = engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(user, 1.0)]))
    engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(style, 1.0)]))
    unet = engine.models.get("sd15").unet
    assert list(unet.peft_config) == [load_spy[-1]]  # the first adapter was deleted
    assert engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(user, 1.0)])).tobytes() == \
        first.tobytes()
    assert len(load_spy) == 3
    with pytest.raises(InvalidRequest, match="at most 1"):
        engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(user, 1.0), LoraRef(style, 1.0)]))
    copy_path = tmp_path / "retrained.safetensors"
    copy_path.write_bytes(Path(user).read_bytes())
    engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(str(copy_path), 1.0)]))
    stamp = time.time() + 5
    os.utime(copy_path, (stamp, stamp))
    engine.inpaint(face, mask, 0.7, with_(loras=[LoraRef(str(copy_path), 1.0)]))
    assert len(load_spy) == 5  # changed on disk → reloaded


def test_bad_lora_references(engine, face, mask, tmp_path):
    missing = LoraRef(str(tmp_path / "nope.safetensors"))
    with pytest.raises(InvalidRequest, match="does not exist"):
        engine.inpaint(face, mask, 0.5, with_(loras=[missing]))
    xl = build_tiny_sdxl(0).unet
    xl.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["to_q", "proj_in"]))
    xl_lora = save_kohya_lora(tmp_path / "xl.safetensors", get_peft_model_state_dict(xl), [],
                              RANK, ALPHA, family="sdxl")
    before = engine.inpaint(face, mask, 0.5, GEN)
    with pytest.raises(InvalidRequest, match="xl.safetensors does not fit this base model"):
        engine.inpaint(face, mask, 0.5, with_(loras=[LoraRef(str(xl_lora))]))
    assert np.array_equal(engine.inpaint(face, mask, 0.5, GEN), before)  # still sound
    pickle = tmp_path / "old.pt"
    pickle.write_bytes(b"\x80\x02")
    with pytest.raises(InvalidRequest, match="never unpickles"):
        engine.inpaint(face, mask, 0.5, with_(loras=[LoraRef(str(pickle))]))


# ---- residency -----------------------------------------------------------------------------
def test_base_loads_once_and_unload_releases(face, mask, controls, lora_files, monkeypatch):
    calls = []
    original = loading.load_components
    monkeypatch.setattr(loading, "load_components",
                        lambda *a, **k: calls.append(a[0]) or original(*a, **k))
    engine = DiffusersEngine("tiny-random", device="cpu")
    engine.inpaint(face, mask, 0.5, with_(steps=2))
    engine.inpaint(face, mask, 0.5, with_(steps=2, controls=units(controls, ("canny",))))
    engine.inpaint(face, mask, 0.5, with_(steps=2, loras=[LoraRef(str(lora_files[0]))]))
    assert calls == ["tiny-random"]
    engine.unload()
    assert not engine.models.is_loaded("sd15")
    engine.inpaint(face, mask, 0.5, with_(steps=2, loras=[LoraRef(str(lora_files[0]))]))
    assert calls == ["tiny-random"] * 2


# ---- txt2img -------------------------------------------------------------------------------
def test_txt2img_sdxl_and_sd15_sizes(engine):
    image = engine.txt2img((64, 96), with_(steps=2))
    assert image.shape == (96, 64, 3) and image.dtype == np.uint8
    assert set(engine.timings) >= {"diffusion", "decode", "total"}
    again = engine.txt2img((64, 96), with_(steps=2))
    assert again.tobytes() == image.tobytes()
    edges = np.zeros((96, 64, 3), np.uint8)
    edges[40:56, :] = 255
    guided = engine.txt2img((64, 96), with_(steps=2, controls=[ControlUnit("canny", edges)]))
    assert guided.shape == (96, 64, 3) and differ(guided, image)
    assert engine.txt2img((80, 64), with_(steps=2), family="sd15").shape == (64, 80, 3)


# ---- bad inputs ----------------------------------------------------------------------------
def test_bad_inputs_are_clear_errors(engine, face, mask, controls):
    with pytest.raises(InvalidRequest, match="does not match image"):
        engine.inpaint(face, mask[:32], 0.5, GEN)
    with pytest.raises(InvalidRequest, match="multiple of 8"):
        engine.inpaint(face[:60, :60], mask[:60, :60], 0.5, GEN)
    with pytest.raises(ValueError, match="unknown control kind 'depth'"):
        ControlUnit("depth", face)
    fake = copy.copy(ControlUnit("canny", face))
    object.__setattr__(fake, "kind", "depth")
    with pytest.raises(InvalidRequest, match="unknown control kind 'depth'"):
        engine.inpaint(face, mask, 0.5, with_(controls=[fake]))
    with pytest.raises(InvalidRequest, match="at most 4"):
        engine.inpaint(face, mask, 0.5, with_(controls=units(controls) + units(controls)[:1]))
    with pytest.raises(InvalidRequest, match="control canny is"):
        engine.inpaint(face, mask, 0.5, with_(controls=[ControlUnit("canny", face[:32])]))
    with pytest.raises(InvalidRequest, match="denoising strength"):
        engine.inpaint(face, mask, 1.5, GEN)
    with pytest.raises(InvalidRequest, match="steps must be an integer"):
        engine.inpaint(face, mask, 0.5, with_(steps=0))
    with pytest.raises(InvalidRequest, match="mask must be"):
        engine.inpaint(face, mask.astype(np.float32), 0.5, GEN)
    with pytest.raises(InvalidRequest, match="multiples of 8"):
        engine.txt2img((60, 64), GEN)
    with pytest.raises(InvalidRequest, match="no color ControlNet for sdxl; sdxl supports canny"):
        engine.txt2img((64, 64), with_(controls=[ControlUnit("color", face)]))
    with pytest.raises(InvalidRequest, match="unknown model family"):
        engine.txt2img((64, 64), GEN, family="sd3")
