"""Processing classes (dataclasses with the host's field names; ``scheduler`` from 1.9;
``is_api`` is init=False; setting ``scripts`` and ``script_args`` runs the scripts' ``setup``)
and a ``process_images`` that records every call and fakes a generation."""

from dataclasses import dataclass, field
from typing import Any

import fake_host_config as C
import numpy as np
from PIL import Image

from modules import call_queue, sd_models, sd_samplers, shared

calls = []   # one dict per process_images call
hooks = []   # callables(p) run inside process_images (tests: interrupts, grids)


@dataclass(repr=False)
class StableDiffusionProcessing:
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    sampler_name: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict = None
    negative_prompt: str = ""
    denoising_strength: float = None
    override_settings: dict = None
    override_settings_restore_afterwards: bool = True
    if C.WEBUI >= (1, 9):
        scheduler: str = None
    is_api: bool = field(default=False, init=False)
    scripts_value: Any = field(default=None, init=False)
    script_args_value: list = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)

    def __post_init__(self):
        self.extra_generation_params = dict(self.extra_generation_params or {})
        self.override_settings = dict(self.override_settings or {})
        self.is_api_at_setup, self.closed, self.all_seeds = None, False, None

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete, self.is_api_at_setup = True, self.is_api
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def close(self):
        self.closed = True


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Any = None


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    hr_scale: float = 2.0


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", all_seeds=None, index_of_first_image=0,
                 infotexts=None):
        self.images, self.seed, self.info = images_list, seed, info
        self.all_seeds = all_seeds or p.all_seeds or [seed]
        self.index_of_first_image, self.infotexts = index_of_first_image, infotexts or [info]


def _check_sampler(p):
    if sd_samplers.find_sampler_config(p.sampler_name) is not None:
        return
    if C.WEBUI >= (1, 10):  # 1.10 corrects old combined names
        p.sampler_name, p.scheduler = p.sampler_name.rsplit(" ", 1)
        return
    raise AssertionError(f"bad sampler name: {p.sampler_name}")


def _generate(p):
    """img2img: inverted pixels inside the (unblurred) mask and ±1 drift elsewhere (the host's
    overlay is not byte-exact); txt2img: a gradient."""
    if isinstance(p, StableDiffusionProcessingImg2Img):
        image = np.asarray(p.init_images[0].convert("RGB")).astype(np.int16)
        inside = np.asarray(p.mask) > 0
        out = np.clip(image + 1, 0, 255)
        out[inside] = 255 - image[inside]
        return Image.fromarray(out.astype(np.uint8))
    ramp = np.linspace(0, 255, p.width, dtype=np.uint8)
    return Image.fromarray(np.repeat(np.tile(ramp, (p.height, 1))[:, :, None], 3, axis=2))


def process_images(p):
    if C.WEBUI < (1, 7):  # 1.6 reads every override key from opts.data (KeyError otherwise)
        stored = {k: shared.opts.data[k] for k in p.override_settings}
    else:
        stored = {k: shared.opts.data[k] for k in p.override_settings if k in shared.opts.data}
    record = {"p": p, "lock_held": call_queue.queue_lock.locked(),
              "checkpoint": shared.opts.data.get("sd_model_checkpoint"),
              "vae": shared.opts.data.get("sd_vae"),
              "modules": list(shared.opts.data.get("forge_additional_modules", [])),
              "loaded": getattr(getattr(sd_models.model_data.sd_model, "sd_checkpoint_info",
                                        None), "title", None), "stored": stored}
    calls.append(record)
    if p.scripts is not None:
        p.scripts.before_process(p)
    _check_sampler(p)
    if p.scripts is not None:
        p.scripts.process(p)
    p.all_seeds = [p.seed if p.seed >= 0 else 1234]
    images = [_generate(p)] + [Image.fromarray(u.image) for u in getattr(p, "cn_units", [])]
    result = Processed(p, images, p.all_seeds[0], all_seeds=p.all_seeds)
    for hook in hooks:
        hook(p, result)
    return result
