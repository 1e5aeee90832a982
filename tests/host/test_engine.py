"""WebUIEngine against the fake WebUI of every flavour (A1111 1.6 / 1.9 / 1.10, Forge main).

Proves: the img2img processing object carries exactly HOST.md's fields; ``is_api`` is True
before the scripts are attached, so seed, steps and sampler survive (the fake's Seed/Sampler
scripts would overwrite them otherwise); the scripts are a copy holding only ControlNet, with a
full-length ``script_args`` list and enabled units of the right generation (string resize mode,
model names with hashes, HWC uint8 images, weights and windows) in ControlNet's slice, disabled
fillers in spare slots, the shared runner untouched; 1.9+ gets sampler and scheduler split;
LoRAs become ``<lora:NAME:W>`` tags with the file in the host's Lora folder; the result is the
first image from ``index_of_first_image`` and only pixels the blurred mask reaches change;
problems ControlNet would swallow (too few slots, a missing model, a wrong size, a unit it did
not apply, no ControlNet at all) are clear errors raised before or right after the call; a WebUI
interrupt becomes Cancelled.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from host_helpers import control_images, square_mask
from PIL import Image

from easyphoto.engine.base import ControlUnit, Generation, LoraRef
from easyphoto.engine.diffusers_engine import blur_mask, composite
from easyphoto.engine.webui import HostGpuLock
from easyphoto.engine.webui_engine import WebUIEngine
from easyphoto.engine.webui_units import ControlNetError
from easyphoto.errors import InvalidRequest, ModelUnavailable
from easyphoto.progress import Cancelled

H, W = 64, 96
WEIGHTS = {"canny": 0.5, "openpose": 0.5, "color": 0.85}


def first_diffusion(controls, loras=(), sampler="DPM++ 2M SDE Karras"):
    units = [ControlUnit(kind, image, WEIGHTS[kind]) for kind, image in
             zip(("canny", "openpose", "color"), controls)]
    return Generation("easyphoto_face, a face", "ugly", 50, 7.0, sampler, 11, units, loras)


def run(fake, generation=None, engine=None, image=None, mask=None, strength=0.45):
    engine = engine or WebUIEngine(fake.host, HostGpuLock(fake.host))
    controls = control_images()
    image = control_images(count=1, seed=5)[0] if image is None else image
    out = engine.inpaint(image, square_mask() if mask is None else mask, strength,
                         generation or first_diffusion(controls))
    return out, image, controls


def test_img2img_fields(fake):
    out, image, _ = run(fake)
    record = fake.calls[-1]
    p = record["p"]
    assert type(p).__name__ == "StableDiffusionProcessingImg2Img"
    assert (p.mask_blur, p.inpainting_fill, p.inpaint_full_res, p.denoising_strength) == \
        (8, 1, False, 0.45)
    assert (p.steps, p.cfg_scale, p.seed, p.width, p.height, p.batch_size, p.n_iter) == \
        (50, 7.0, 11, W, H, 1, 1)
    assert p.do_not_save_samples and p.do_not_save_grid and p.override_settings == {}
    assert (p.prompt, p.negative_prompt) == ("easyphoto_face, a face", "ugly")
    assert np.array_equal(np.asarray(p.init_images[0]), image)
    assert np.array_equal(np.asarray(p.mask), square_mask())
    assert p.is_api_at_setup is True and p.closed
    assert record["lock_held"] and out.shape == image.shape and out.dtype == np.uint8


def test_sampler_and_scheduler_per_version(fake):
    run(fake)
    p = fake.calls[-1]["p"]
    if fake.case.webui >= (1, 9):
        assert (p.sampler_name, p.scheduler) == ("DPM++ 2M SDE", "Karras")
    else:
        assert p.sampler_name == "DPM++ 2M SDE Karras" and not hasattr(p, "scheduler")
    run(fake, first_diffusion(control_images(), sampler="Euler a"))
    p = fake.calls[-1]["p"]
    assert p.sampler_name == "Euler a"
    assert getattr(p, "scheduler", "Automatic") == "Automatic"


def test_seed_and_sampler_survive_the_hosts_ui_scripts(fake):
    """The fake's Seed/Sampler scripts do overwrite a non-API p (the hazard is real) ..."""
    runner = fake.scripts.scripts_img2img
    p = fake.processing.StableDiffusionProcessingImg2Img(seed=11, steps=50,
                                                          sampler_name="Euler")
    p.scripts, p.script_args = runner, [0] + [None] * (runner.scripts[-1].args_to - 1)
    assert p.seed is None and p.is_api_at_setup is False
    # ... and the engine's p keeps every value it set.
    run(fake)
    p = fake.calls[-1]["p"]
    assert (p.seed, p.steps, p.cfg_scale) == (11, 50, 7.0) and p.is_api_at_setup is True


def test_units_of_the_first_diffusion(fake):
    _, _, controls = run(fake)
    p = fake.calls[-1]["p"]
    names = fake.cn_models
    assert [u.model for u in p.cn_units] == [names[1], names[2], names[4]]  # "<stem> [<hash>]"
    assert [u.weight for u in p.cn_units] == [0.5, 0.5, 0.85]
    for unit, control in zip(p.cn_units, controls):
        assert unit.enabled is True
        assert unit.module == ("None" if fake.host.forge else "none")
        assert (unit.guidance_start, unit.guidance_end) == (0.0, 1.0)
        assert unit.image.dtype == np.uint8 and unit.image.shape == (H, W, 3)
        assert np.array_equal(unit.image, control)
        mode = unit.resize_mode
        assert (mode.value if fake.case.controlnet == "pydantic" else mode) == "Just Resize"
    assert [f"ControlNet {i}" in p.extra_generation_params for i in range(3)] == [True] * 3


def test_runner_copy_holds_only_controlnet(fake):
    shared_runner = fake.scripts.scripts_img2img
    ranges = [(s.args_from, s.args_to) for s in shared_runner.scripts]
    run(fake)
    p = fake.calls[-1]["p"]
    cn = next(s for s in shared_runner.alwayson_scripts if s.title() == "ControlNet")
    assert p.scripts is not shared_runner
    assert p.scripts.alwayson_scripts == [cn] and p.scripts.scripts == [cn]
    assert len(shared_runner.alwayson_scripts) == len(ranges) >= 3   # untouched
    assert [(s.args_from, s.args_to) for s in shared_runner.scripts] == ranges
    assert len(p.script_args) == shared_runner.scripts[-1].args_to   # every script's slot
    assert p.script_args[0] == 0
    assert p.script_args[cn.args_from:cn.args_to] == p.cn_units
    assert not hasattr(p, "other_extension_ran") and fake.scripts.errors == []


def test_spare_slots_get_disabled_units(make_host):
    fake = make_host("a1111-1.10", unit_slots=5)
    run(fake)
    p = fake.calls[-1]["p"]
    cn = p.scripts.alwayson_scripts[0]
    slot = p.script_args[cn.args_from:cn.args_to]
    assert [u.enabled for u in slot] == [True, True, True, False, False]


@pytest.mark.parametrize("case, version, label, key", [
    ("a1111-1.10", None, "Multi-ControlNet: ControlNet unit number", "control_net_unit_count"),
    ("a1111-1.6", "v1.1.233", "Multi ControlNet: Max models amount",
     "control_net_max_models_num"),
    ("forge", None, "Multi-ControlNet: ControlNet unit number", "control_net_unit_count")])
def test_too_few_unit_slots(make_host, case, version, label, key):
    fake = make_host(case, unit_slots=2, cn_version=version)
    with pytest.raises(ControlNetError) as error:
        run(fake)
    message = str(error.value)
    assert "2 unit slot(s)" in message and "needs 3" in message
    assert label in message and key in message and "restart" in message
    assert fake.calls == []


def test_missing_model_is_named_before_the_call(fake):
    fake.cn_models.remove("control_v11p_sd15_openpose [cab727d4]")
    with pytest.raises(ModelUnavailable, match="control_v11p_sd15_openpose.pth"):
        run(fake)
    assert fake.calls == [] and fake.cn_common.refreshes  # the list was re-read once


def test_unit_image_size_and_weight_checked_before_the_call(fake):
    controls = control_images()
    controls[1] = controls[1][:32]
    with pytest.raises(InvalidRequest):
        run(fake, first_diffusion(controls))
    heavy = Generation("p", "", 20, 7.0, "Euler a", 1,
                       [ControlUnit("canny", control_images()[0], 2.5)])
    with pytest.raises(InvalidRequest, match=r"\[0, 2\]"):
        run(fake, heavy)
    assert fake.calls == []


def test_unit_controlnet_did_not_apply_is_an_error(fake, monkeypatch):
    cn = fake.scripts.scripts_img2img.alwayson_scripts[-2]

    def broken(self, p, *args):
        raise RuntimeError("preprocessor weights missing")   # the runner swallows this

    monkeypatch.setattr(type(cn), "process", broken)
    with pytest.raises(ControlNetError, match=r"did not apply unit\(s\) 0 \(canny\), 1 "):
        run(fake)
    assert fake.scripts.errors and len(fake.calls) == 1


def test_no_controlnet_installed(make_host):
    fake = make_host("a1111-1.10", controlnet=False)
    with pytest.raises(ControlNetError, match="install the sd-webui-controlnet extension"):
        run(fake)
    assert WebUIEngine(fake.host, HostGpuLock(fake.host)).available_controls() == ()


def test_controlnet_120_is_accepted(make_host):
    fake = make_host("a1111-1.10", cn_version="v1.2.0")
    run(fake)
    assert len(fake.calls[-1]["p"].cn_units) == 3


def test_lora_tags_and_files(fake, tmp_path):
    user = tmp_path / "data" / "users" / "obama-1a2b3c4d5e" / "lora.safetensors"
    user.parent.mkdir(parents=True)
    user.write_bytes(b"user lora")
    style = fake.models / "Lora" / "FilmVelvia3.safetensors"
    style.write_bytes(b"style lora")
    loras = [LoraRef(str(user), 0.9), LoraRef(str(style), 0.65), LoraRef("my_style", 1.0)]
    run(fake, first_diffusion(control_images(), loras))
    prompt = fake.calls[-1]["p"].prompt
    assert prompt == ("easyphoto_face, a face, <lora:easyphoto_obama-1a2b3c4d5e:0.9>, "
                      "<lora:FilmVelvia3:0.65>, <lora:my_style:1>")
    installed = fake.models / "Lora" / "easyphoto_obama-1a2b3c4d5e.safetensors"
    assert installed.read_bytes() == b"user lora"
    assert "easyphoto_obama-1a2b3c4d5e" in fake.networks.refreshes[-1]
    with pytest.raises(ModelUnavailable, match="does not exist"):
        run(fake, first_diffusion(control_images(), [LoraRef(str(tmp_path / "gone.safetensors"))]))


def expected_output(image: np.ndarray) -> np.ndarray:
    """The fake host's generation (inverted inside the mask, +1 drift outside) composited back
    with the mask blurred by 8 px."""
    inside = square_mask() > 0
    generated = np.clip(image.astype(int) + 1, 0, 255).astype(np.uint8)
    generated[inside] = 255 - image[inside]
    return composite(generated, image, blur_mask(square_mask(), 8))


def test_only_pixels_the_blurred_mask_reaches_change(fake):
    out, image, _ = run(fake)
    soft = blur_mask(square_mask(), 8)
    assert np.array_equal(out[soft == 0], image[soft == 0])   # the host's ±1 drift is undone
    assert np.array_equal(out, expected_output(image))
    inside = square_mask() > 0
    assert (out[inside] != image[inside]).all(axis=1).mean() > 0.9


def test_first_image_after_a_grid_and_before_detect_maps(fake):
    def grid_first(p, result):
        result.images.insert(0, Image.new("RGB", (W, H), (1, 2, 3)))
        result.index_of_first_image = 1

    fake.processing.hooks.append(grid_first)
    out, image, _ = run(fake)
    assert len(fake.processing.calls) == 1 and len(fake.calls[-1]["p"].cn_units) == 3
    assert np.array_equal(out, expected_output(image))   # not the grid, not a detect map


def test_webui_interrupt_cancels(fake):
    engine = WebUIEngine(fake.host, HostGpuLock(fake.host))
    fake.processing.hooks.append(lambda p, result: fake.shared.state.interrupt())
    lock = engine.lock
    with lock:
        with pytest.raises(Cancelled, match="interrupted from the WebUI"):
            run(fake, engine=engine)
        with pytest.raises(Cancelled):   # the rest of the job stops before the next call
            run(fake, engine=engine)
    assert len(fake.calls) == 1


def test_nothing_to_do_makes_no_call(fake):
    image = control_images(count=1)[0]
    out, _, _ = run(fake, image=image, strength=0.0)
    assert np.array_equal(out, image)
    out, _, _ = run(fake, image=image, mask=np.zeros((H, W), np.uint8))
    assert np.array_equal(out, image) and fake.calls == []


def test_txt2img_without_units(fake):
    engine = WebUIEngine(fake.host, HostGpuLock(fake.host))
    out = engine.txt2img((W, H), Generation("a room", "", 30, 7.0, "Euler a", 3), family="sd15")
    p = fake.calls[-1]["p"]
    assert type(p).__name__ == "StableDiffusionProcessingTxt2Img"
    assert (p.width, p.height, p.steps, p.seed, p.is_api, p.scripts) == (W, H, 30, 3, True, None)
    assert out.shape == (H, W, 3)


def test_available_controls(fake):
    engine = WebUIEngine(fake.host, HostGpuLock(fake.host))
    assert engine.available_controls() == ("canny", "openpose", "color", "tile")
    fake.cn_models.remove("control_v11f1e_sd15_tile [a371b31b]")
    assert engine.available_controls() == ("canny", "openpose", "color")


def test_small_controlnet_model_cache_warns_once(make_host, caplog):
    fake = make_host("a1111-1.10")
    engine = WebUIEngine(fake.host, HostGpuLock(fake.host))
    with caplog.at_level(logging.WARNING, logger="easyphoto.engine.webui_engine"):
        run(fake, engine=engine)
        run(fake, engine=engine)
    warnings = [r for r in caplog.records if "Model cache size" in r.getMessage()]
    assert len(warnings) == 1 and "2 model(s)" in warnings[0].getMessage()


def test_tiny_random_is_refused(fake):
    with pytest.raises(InvalidRequest, match="tiny-random"):
        WebUIEngine(fake.host, HostGpuLock(fake.host), checkpoint="tiny-random")


@pytest.mark.parametrize("saved, registered", [(5, True), (2, False)])
def test_no_cache_warning_when_large_enough_or_not_controlnets(make_host, caplog, saved,
                                                               registered):
    fake = make_host("forge", opts={"control_net_model_cache_size": saved})
    if not registered:
        del fake.shared.opts.data_labels["control_net_model_cache_size"]
    with caplog.at_level(logging.WARNING, logger="easyphoto.engine.webui_engine"):
        run(fake)
    assert not [r for r in caplog.records if "Model cache size" in r.getMessage()]


def test_scripts_not_set_up_yet(make_host):
    fake = make_host("a1111-1.10")
    fake.scripts.scripts_img2img = None   # --nowebui before the API built its runners
    with pytest.raises(ControlNetError, match="not set up its img2img/txt2img scripts"):
        run(fake)
    assert fake.calls == []
