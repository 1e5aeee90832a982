"""The standalone diffusion engine: diffusers pipelines around resident models (DESIGN.md).

:class:`DiffusersEngine` implements :class:`~easyphoto.engine.base.DiffusionEngine`:

* **inpaint** (SD1.5): ``StableDiffusionControlNetInpaintPipeline`` with the call's ControlNet
  units as one ``MultiControlNetModel`` (1–4 units), or ``StableDiffusionInpaintPipeline``
  without units. WebUI "inpaint, original fill" semantics with a regular (4-channel) model:
  the image is noised to ``strength`` and only the masked latents are denoised (the others are
  reset to the noised original every step); diffusers runs ``int(steps × strength)`` steps of
  a ``steps``-step schedule, as the WebUI does (SPEC 2.6: 50 at 0.45 → 22). The mask is
  blurred with a Gaussian of σ = ``mask_blur`` px (the WebUI's kernel, 2·⌊2.5σ + 0.5⌋ + 1
  wide); the pipeline gets the blurred mask (binarised at ½ on the latent grid) and the result
  is composited back ``out = gen·m + image·(1 − m)``, so pixels the blurred mask does not reach
  are returned byte-identical.
* **txt2img**: SDXL (``StableDiffusionXL[ControlNet]Pipeline``, base ``sdxl_model``) or SD1.5
  (``StableDiffusion[ControlNet]Pipeline``); the latents are decoded here in the VAE's own
  dtype (the SDXL VAE stays fp32 beside fp16 models, see :mod:`easyphoto.train.loading`).

Models are loaded once (:mod:`easyphoto.engine.models`) and a pipeline object is wrapped around
them per call (≈ 0.3 ms, no weights touched). LoRAs are peft adapters switched by weight and
fused into the base weights while a call's set is the last one's (:mod:`easyphoto.engine.loras`),
samplers are re-used scheduler instances (:mod:`easyphoto.engine.samplers`). ControlNet inpaint
calls run the engine's own denoising loop (:mod:`easyphoto.engine.denoise`: the pipeline's
computation, conditioning embedded once, no per-step host sync) with the step captured as a
CUDA graph on CUDA (:mod:`easyphoto.engine.step_graphs`); ``speedups`` switches each of these
off (``Speedups.off()``: the stock pipeline ``__call__`` with unmerged adapters). Units with weight
0 or an empty ``[start, end)`` window are dropped before the call: they add exactly zero.
Weights are fp16 on CUDA by default (``dtype`` may say bf16) and fp32 on the CPU; attention
is diffusers' default SDPA processor. ``offload=True`` keeps the modules on the CPU and moves
each to the GPU while it runs (``enable_model_cpu_offload``), for small GPUs.

Not thread-safe by design of the modules it shares; calls are serialised with a lock.
"""

from __future__ import annotations

import gc
import logging
import secrets
import threading
import time
import weakref
from types import MappingProxyType
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image

from ..errors import InvalidRequest
from ..train.loading import resolve_device, weight_dtype
from .base import ControlUnit, Generation
from .checks import (  # noqa: F401 (check_units, check_generation: re-exported)
    MAX_CONTROL_UNITS,
    active_units,
    check_generation,
    check_units,
    finite,
    inpaint_mask,
)
from .denoise import LoopAids, PromptCache, Speedups, run_inpaint, supports
from .models import (
    FAMILIES,
    LORA_CACHE_LIMIT,
    TINY,
    ModelSet,
    ResidentModels,
    check_kind,
    decode_latents,
)
from .samplers import denoising_steps, schedule_length
from .step_graphs import StepGraphs

logger = logging.getLogger(__name__)

_DTYPES = MappingProxyType({"fp16": "fp16", "float16": "fp16", "half": "fp16", "bf16": "bf16",
                           "bfloat16": "bf16", "fp32": "no", "float32": "no", "no": "no"})
_PIPELINES = MappingProxyType({
              ("inpaint", True): "StableDiffusionControlNetInpaintPipeline",
              ("inpaint", False): "StableDiffusionInpaintPipeline",
              ("sd15", True): "StableDiffusionControlNetPipeline",
              ("sd15", False): "StableDiffusionPipeline",
              ("sdxl", True): "StableDiffusionXLControlNetPipeline",
              ("sdxl", False): "StableDiffusionXLPipeline"})


# ---- masks and images ---------------------------------------------------------------------
def blur_mask(mask: np.ndarray, mask_blur: float) -> np.ndarray:
    """``mask`` (H, W) uint8 blurred like the WebUI: Gaussian σ = ``mask_blur`` px, kernel
    ``2·int(2.5σ + 0.5) + 1``, reflected borders; uint8 out. ``mask_blur`` 0: a copy."""
    if mask_blur <= 0:
        return mask.copy()
    size = 2 * int(2.5 * mask_blur + 0.5) + 1
    return cv2.GaussianBlur(mask, (size, size), float(mask_blur))


def composite(generated: np.ndarray, image: np.ndarray, soft_mask: np.ndarray) -> np.ndarray:
    """``generated·m + image·(1 − m)`` with ``m = soft_mask / 255`` (all (H, W[, 3]) uint8),
    rounded; where ``soft_mask`` is 0 the result is ``image``'s bytes exactly."""
    alpha = soft_mask.astype(np.float32)[:, :, None] / 255.0
    blended = generated.astype(np.float32) * alpha + image.astype(np.float32) * (1.0 - alpha)
    blended = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.where(soft_mask[:, :, None] > 0, blended, image)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] → uint8 (``round(x·255)``, clipped), any shape."""
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)


def _control_kwargs(units: Sequence[ControlUnit], image_key: str) -> dict:
    """Pipeline keyword arguments of the units (lists, one entry per unit)."""
    if not units:
        return {}
    return {image_key: [Image.fromarray(np.ascontiguousarray(unit.image)) for unit in units],
            "controlnet_conditioning_scale": [float(unit.weight) for unit in units],
            "control_guidance_start": [float(unit.start) for unit in units],
            "control_guidance_end": [float(unit.end) for unit in units]}


class _Clock:
    """Seconds per phase (synchronising CUDA so a phase owns its kernels)."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        self._start = self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, phase: str) -> None:
        if self._cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.laps[phase] = self.laps.get(phase, 0.0) + now - self._last
        self._last = now

    def done(self) -> dict[str, float]:
        self.laps["total"] = self._last - self._start
        return dict(self.laps)


# ---- the engine ---------------------------------------------------------------------------
def _engine_dtype(dtype: Union[torch.dtype, str, None], device: torch.device) -> torch.dtype:
    """The weight dtype: on CUDA ``dtype`` (a torch dtype, or ``"fp16"`` / ``"bf16"`` /
    ``"fp32"``; default fp16; bf16 falls back to fp16 without GPU support); fp32 elsewhere
    (the VAE stays fp32 off CUDA and half-precision CPU kernels are slow or missing)."""
    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "no"}
    name = names.get(dtype) if isinstance(dtype, torch.dtype) else \
        _DTYPES.get(str(dtype or "fp16").lower())
    if name is None:
        raise InvalidRequest(f"unknown dtype {dtype!r}; use fp16, bf16 or fp32.")
    if device.type != "cuda" and dtype is not None and name != "no":
        logger.warning("dtype %s ignored on %s: running in fp32", dtype, device)
    return weight_dtype(name, device)


class DiffusersEngine:
    """:class:`~easyphoto.engine.base.DiffusionEngine` on diffusers, models resident.

    ``base_model``: the SD1.5 model for :meth:`inpaint` and SD1.5 :meth:`txt2img` —
    ``"tiny-random"``, a diffusers folder, a single-file ``.safetensors`` checkpoint, a registry
    checkpoint role, or ``""`` for the registry's ``sd15_base``. ``sdxl_model``: the same for
    SDXL txt2img (``""`` = ``sdxl_base``; ``None`` = ``"tiny-random"`` when the base is, else
    ``""``). ``models_dir`` / ``store``: where registry models
    (bases, ControlNets ``controlnet_sd15_<kind>``) are found. ``device``: default CUDA when
    present. ``dtype``: torch dtype or ``"fp16"`` / ``"bf16"`` / ``"fp32"`` (default fp16 on
    CUDA, fp32 on the CPU). ``offload``: keep modules on the CPU between uses (CUDA only).
    ``lora_cache_size``: LoRA adapters kept resident per base model. ``speedups``: which
    speed-ups run (:class:`~easyphoto.engine.denoise.Speedups`; default all;
    ``Speedups.off()``: the plain pipeline).

    After each call ``timings`` holds seconds per phase (``models``, ``loras``, ``prepare``,
    ``diffusion``, ``decode`` or ``composite``, ``total``) and ``last_call`` the seed used, the
    schedule length, the denoising steps run and the control kinds applied.
    """

    def __init__(self, base_model: str = "", models_dir=None, device=None,
                 dtype: Union[torch.dtype, str, None] = None, offload: bool = False,
                 store=None, sdxl_model: Optional[str] = None,
                 lora_cache_size: int = LORA_CACHE_LIMIT,
                 speedups: Optional[Speedups] = None) -> None:
        self.device = resolve_device(device)
        self.speedups = Speedups() if speedups is None else speedups
        self.dtype = _engine_dtype(dtype, self.device)
        self.offload = bool(offload) and self.device.type == "cuda"
        if offload and not self.offload:
            logger.warning("offload needs a CUDA device; running on %s without it", self.device)
        if sdxl_model is None:
            sdxl_model = TINY if base_model.strip() == TINY else ""
        self.models = ResidentModels(
            {"sd15": base_model, "sdxl": sdxl_model},
            device=torch.device("cpu") if self.offload else self.device, target=self.device,
            dtype=self.dtype, models_dir=models_dir, store=store, lora_limit=lora_cache_size,
            fuse_loras=self.speedups.fuse_loras)
        self.timings: dict[str, float] = {}
        self.last_call: dict = {}
        self._lock = threading.RLock()
        self.graphs = StepGraphs(parallel=self.speedups.parallel_controlnets)
        self.prompts = PromptCache()
        self._laid_out: weakref.WeakSet = weakref.WeakSet()  # modules made channels-last

    # ---- protocol -------------------------------------------------------------------------
    def load(self, family: str = "sd15", controls: Sequence[str] = ()) -> None:
        """Load the family's base model and the ControlNets of ``controls`` (kinds) now
        (otherwise the first call that needs them does)."""
        with self._lock:
            family = _check_family(family)
            for kind in controls:
                check_kind(family, kind)
            self.models.get(family)
            self.models.controlnets(family, list(controls))

    def available_controls(self, family: str = "sd15") -> tuple[str, ...]:
        """Control kinds whose ControlNet is loaded or can be loaded without a download."""
        return self.models.available_controls(_check_family(family))

    def unload(self) -> None:
        """Drop every resident model and adapter; free the CUDA cache."""
        with self._lock:
            self.graphs.clear()
            self.prompts.clear()
            self.models.release()
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            logger.info("diffusers engine: models released")

    def inpaint(self, image: np.ndarray, mask: np.ndarray, strength: float,
                generation: Generation, mask_blur: int = 8) -> np.ndarray:
        """Repaint ``mask`` (H, W) uint8 (255 = repaint) of ``image`` (H, W, 3) uint8 RGB at
        denoising ``strength`` ∈ [0, 1]; returns (H, W, 3) uint8. Pixels where the mask blurred
        by ``mask_blur`` px (σ) is 0 are ``image``'s. Strength 0 or an empty mask: a copy of
        ``image`` (no model is loaded)."""
        with self._lock:
            clock = _Clock(self.device)
            mask = inpaint_mask(image, mask, generation)
            strength = finite(strength, "denoising strength", 0.0, 1.0)
            finite(mask_blur, "mask blur", 0.0)
            soft = blur_mask(mask, mask_blur)
            if strength == 0 or not soft.any():
                self.last_call = {"seed": None, "schedule": 0, "steps_run": 0, "controls": []}
                self.timings = clock.done()
                return image.copy()
            height, width = image.shape[:2]
            units = active_units(generation.controls)
            models, pipe = self._prepare("sd15", "inpaint", units, generation, clock)
            length = schedule_length(generation.steps, strength)
            kwargs, seed = self._common_kwargs(generation, length, width, height)
            kwargs.update(image=Image.fromarray(np.ascontiguousarray(image)),
                          mask_image=Image.fromarray(soft),
                          strength=strength, output_type="np",
                          **_control_kwargs(units, "control_image"))
            clock.lap("prepare")
            images, path = self._run_inpaint(pipe, kwargs, models, clock)
            result = composite(to_uint8(images[0]), image, soft)
            clock.lap("composite")
            self._finish(clock, seed, length, denoising_steps(length, strength), units, path)
            return result

    def txt2img(self, size: tuple[int, int], generation: Generation,
                family: str = "sdxl") -> np.ndarray:
        """A new (height, width, 3) uint8 image for ``size`` = (width, height), multiples of 8,
        from the ``family`` base (``"sdxl"``: SPEC 2.9 templates; ``"sd15"``)."""
        with self._lock:
            clock = _Clock(self.device)
            family = _check_family(family)
            width, height = _check_size(size)
            check_units(generation.controls)
            for unit in generation.controls:
                check_kind(family, unit.kind)
                if unit.image.shape[:2] != (height, width):
                    raise InvalidRequest(f"control {unit.kind} is {unit.image.shape[:2]}, the "
                                         f"requested size is {(height, width)} (H, W).")
            check_generation(generation)
            units = active_units(generation.controls)
            models, pipe = self._prepare(family, family, units, generation, clock)
            kwargs, seed = self._common_kwargs(generation, generation.steps, width, height)
            kwargs.update(output_type="latent", **_control_kwargs(units, "image"))
            clock.lap("prepare")
            latents = pipe(**kwargs).images
            clock.lap("diffusion")
            image = decode_latents(models.vae, latents)[0]
            clock.lap("decode")
            self._finish(clock, seed, generation.steps, generation.steps, units)
            return image

    # ---- internals ------------------------------------------------------------------------
    def _run_inpaint(self, pipe, kwargs: dict, models: ModelSet,
                     clock: _Clock) -> tuple[np.ndarray, dict]:
        """The inpaint pipeline's images, by the own loop where the speed-ups allow, else by
        the pipeline's ``__call__``; and how they were made."""
        fast = self.speedups.own_loop and not self.offload and supports(pipe)
        if not fast:
            images = pipe(**kwargs).images
            clock.lap("diffusion")
            return images, {"own_loop": False, "graphed": False}
        self._lay_out([pipe.unet, *pipe.controlnet.nets])  # (the VAE decodes slower so)
        cuda = self.device.type == "cuda" and self.speedups.cuda_graphs
        captures = self.graphs.captures
        aids = LoopAids(self.graphs if cuda else None, models.loras.step_token(), self.prompts,
                        models.loras.state_key(), clock.lap)
        images = run_inpaint(pipe, kwargs, aids)
        return images, {"own_loop": True, "graphed": cuda and self.graphs.last_graphed,
                        "captured": self.graphs.captures - captures}

    def _lay_out(self, modules: list) -> None:
        """Channels-last weights for ``modules`` (once each; graphs made before are dropped;
        a module stays channels-last when the speed-up is switched off later)."""
        if not self.speedups.channels_last or self.device.type != "cuda":
            return
        todo = [module for module in modules if module not in self._laid_out]
        for module in todo:
            module.to(memory_format=torch.channels_last)
            self._laid_out.add(module)
        if todo:
            self.graphs.clear()

    def _prepare(self, family: str, task: str, units: Sequence[ControlUnit],
                 generation: Generation, clock: _Clock) -> tuple[ModelSet, object]:
        """Resident models + ControlNets, the call's pipeline and its LoRAs."""
        models = self.models.get(family)
        nets = self.models.controlnets(family, [unit.kind for unit in units])
        clock.lap("models")
        pipe = self._pipeline(models, task, nets, generation.sampler)
        models.loras.apply(pipe, generation.loras)
        clock.lap("loras")
        return models, pipe

    def _pipeline(self, models: ModelSet, task: str, nets: list, sampler: str):
        """A diffusers pipeline object around the resident modules (no weights loaded)."""
        import diffusers

        pipeline_cls = getattr(diffusers, _PIPELINES[task, bool(nets)])
        kwargs = models.pipeline_kwargs(models.samplers.get(sampler))
        if nets:
            kwargs["controlnet"] = list(nets)  # → MultiControlNetModel (1–4 nets)
        pipe = pipeline_cls(**kwargs)
        pipe.set_progress_bar_config(disable=True)
        if self.offload:
            pipe.enable_model_cpu_offload(device=self.device)
        return pipe

    def _common_kwargs(self, generation: Generation, length: int, width: int,
                       height: int) -> tuple[dict, int]:
        """Pipeline arguments shared by every task, and the seed used (a negative seed is
        replaced by a random one; the generator lives on the execution device)."""
        seed = int(generation.seed)
        if seed < 0:
            seed = secrets.randbelow(2 ** 32)
            logger.info("seed %d chosen for seed %d", seed, generation.seed)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return {"prompt": generation.prompt, "negative_prompt": generation.negative_prompt,
                "num_inference_steps": length, "guidance_scale": float(generation.cfg),
                "generator": generator, "width": width, "height": height}, seed

    def _finish(self, clock: _Clock, seed: int, length: int, steps_run: int,
                units: Sequence[ControlUnit], path: Optional[dict] = None) -> None:
        self.timings = clock.done()
        self.last_call = {"seed": seed, "schedule": length, "steps_run": steps_run,
                          "controls": [unit.kind for unit in units], **(path or {})}
        logger.debug("diffusers engine call: %s, %s", self.last_call, self.timings)


def _check_family(family: str) -> str:
    if family not in FAMILIES:
        raise InvalidRequest(f"unknown model family {family!r}; one of {FAMILIES}.")
    return family


def _check_size(size) -> tuple[int, int]:
    """``(width, height)`` as ints, both positive multiples of 8."""
    try:
        width, height = (int(side) for side in size)
    except (TypeError, ValueError):
        raise InvalidRequest(f"size must be (width, height), got {size!r}.") from None
    if width < 8 or height < 8 or width % 8 or height % 8:
        raise InvalidRequest(f"size {width}×{height} must be positive multiples of 8.")
    return width, height
