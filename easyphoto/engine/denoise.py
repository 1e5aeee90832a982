"""The engine's own ControlNet-inpaint denoising loop (SD1.5, regular 4-channel UNet).

:func:`run_inpaint` computes what ``StableDiffusionControlNetInpaintPipeline.__call__`` computes
for the engine's calls (one image, or a batch of same-size images with one prompt;
``output_type="np"``, no IP-adapter, no guess mode), using the pipeline object's own
preparation methods (prompt encoding, image and control preprocessing, scheduler set-up,
initial latents), and draws the same random numbers from the
call's generator in the same order, so it returns the pipeline's image (bit-identical on the
CPU; the tests compare them). What it does differently is how the loop runs:

* the ControlNet conditioning images are embedded once, not at every step
  (:mod:`easyphoto.engine.step_graphs`);
* the step (UNet + ControlNets) is a CUDA graph replay where :class:`Speedups` allows it;
* nothing in the loop waits for the GPU: the re-noising of the known region takes the next
  timestep as a device tensor (the pipeline builds a CPU tensor from it: a sync per step), and
  the masked image is not VAE-encoded (a regular UNet never reads it; the pipeline's encoding
  only draws its posterior sample from the generator, which is drawn here in its place);
* the image and the control images go to the device as uint8 and become floats there (what
  the pipeline's image processors compute on the CPU for an image of the requested size, in
  the same memory layout), and the prompt embeddings of recent calls are kept
  (:class:`PromptCache`).

:class:`Speedups` also switches LoRA fusing and the channels-last layout (see the engine).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .step_graphs import EagerStep, StepGraphs, embedded_conditioning


@dataclass(frozen=True)
class Speedups:
    """Switches of the engine's speed-ups (each changes how, not what, is computed).

    ``fuse_loras``: merge the call's LoRAs into the base weights while they stay the same.
    ``own_loop``: the loop of this module instead of the pipeline's ``__call__``.
    ``cuda_graphs``: capture the step as a CUDA graph (own loop, CUDA only).
    ``parallel_controlnets``: a step's ControlNets on parallel streams inside the graph.
    ``channels_last``: UNet and ControlNets in the channels-last layout (own loop, CUDA only;
    other convolution kernels: fp16 rounding differs).

    Measured on an H100 (bench/infer_gpu.py, SD1.5 + 3 ControlNets, 22 steps at 512²): a step
    took 75.7 ms through the pipeline with unmerged adapters, 60.9 ms in the own loop with the
    LoRA fused, 28.6 ms as a CUDA graph, 24.8 ms with parallel ControlNets, 24.3 ms
    channels-last, 20.9 ms with both.
    """

    fuse_loras: bool = True
    own_loop: bool = True
    cuda_graphs: bool = True
    parallel_controlnets: bool = True
    channels_last: bool = True

    @classmethod
    def off(cls) -> "Speedups":
        """Everything off: the diffusers pipeline with unmerged peft adapters."""
        return cls(False, False, False, False, False)


@dataclass
class _Loop:
    """A call's prepared tensors."""

    embeds: torch.Tensor  # (uncond, cond) prompt embeddings, or cond only without CFG
    latents: torch.Tensor
    noise: torch.Tensor
    image_latents: torch.Tensor
    mask: torch.Tensor  # (1, 1, h, w) on the latent grid
    conds: list  # embedded ControlNet conditioning, one per net
    scales: list  # per step: each net's conditioning scale × its window keep
    timesteps: torch.Tensor
    step_kwargs: dict
    guidance: Optional[float]  # CFG scale, ``None`` without CFG


class PromptCache:
    """(uncond, cond) prompt embeddings of recent calls, keyed by the prompts, CFG, the text
    encoder and its LoRA state (what decides them); the least recently used past ``limit``
    goes. Cleared with the models."""

    def __init__(self, limit: int = 8) -> None:
        self.limit = limit
        self._embeds: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def clear(self) -> None:
        self._embeds.clear()

    def embeds(self, pipe, prompt: str, negative: str, cfg: bool, state: tuple) -> torch.Tensor:
        key = (prompt, negative, cfg, id(pipe.text_encoder), state)
        if key not in self._embeds:
            self._embeds[key] = encode(pipe, prompt, negative, cfg)
            while len(self._embeds) > self.limit:
                self._embeds.popitem(last=False)
        self._embeds.move_to_end(key)
        return self._embeds[key]


def encode(pipe, prompt: str, negative: str, cfg: bool) -> torch.Tensor:
    """The pipeline's prompt embeddings: (uncond, cond) concatenated with CFG, else cond."""
    cond, uncond = pipe.encode_prompt(prompt, _first(pipe.unet).device, 1, cfg, negative)
    return torch.cat([uncond, cond]) if cfg else cond


@dataclass
class LoopAids:
    """What the engine lends the loop: step ``graphs`` (``None``: eager), the LoRA step
    ``token`` (part of a graph's key), a :class:`PromptCache` with the LoRA ``lora_state``
    (part of its key), and a phase timer ``lap``."""

    graphs: Optional[StepGraphs] = None
    token: tuple = ()
    prompts: Optional[PromptCache] = None
    lora_state: tuple = ()
    lap: Callable[[str], None] = field(default=lambda phase: None)


def supports(pipe) -> bool:
    """Whether :func:`run_inpaint` can stand in for ``pipe(...)``: a ControlNet inpaint
    pipeline with a regular 4-channel UNet, RGB conditioning, no global pooling, no offload."""
    nets = getattr(getattr(pipe, "controlnet", None), "nets", None)
    if not nets or pipe.unet.config.in_channels != 4:
        return False
    if getattr(pipe, "_all_hooks", None) or hasattr(pipe.unet, "_hf_hook"):
        return False
    return all(not net.config.global_pool_conditions
               and net.config.controlnet_conditioning_channel_order == "rgb" for net in nets)


def keep_scales(weights: Sequence[float], starts: Sequence[float], ends: Sequence[float],
                steps: int) -> list:
    """Per step, each unit's scale: its weight, or 0 outside its ``[start, end]`` window
    (the pipeline's ``controlnet_keep`` rule)."""
    rows = []
    for i in range(steps):
        keeps = [1.0 - float(i / steps < s or (i + 1) / steps > e) for s, e in zip(starts, ends)]
        rows.append([w * k for w, k in zip(weights, keeps)])
    return rows


@torch.no_grad()
def run_inpaint(pipe, kwargs: dict, aids: Optional[LoopAids] = None) -> np.ndarray:
    """``pipe(**kwargs).images`` (the engine's inpaint arguments, ``output_type="np"``):
    (N, H, W, 3) floats in [0, 1]. A batch of N same-size images with one prompt: ``image`` and
    ``mask_image`` lists, each ControlNet's ``control_image`` a list, ``generator`` a list."""
    aids = aids or LoopAids()
    lap = aids.lap
    loop = _prepare(pipe, kwargs, aids)
    nets = list(pipe.controlnet.nets)
    with embedded_conditioning(nets):
        latents = _denoise(pipe, nets, loop, aids.graphs, aids.token)
    lap("diffusion")
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False,
                            generator=kwargs["generator"])[0]
    images = pipe.image_processor.postprocess(image, output_type="np",
                                              do_denormalize=[True] * image.shape[0])
    lap("decode")
    return images


def _prepare(pipe, kwargs: dict, aids: LoopAids) -> _Loop:
    device, generator = _first(pipe.unet).device, kwargs["generator"]
    control_dtype = _first(pipe.controlnet).dtype
    guidance = float(kwargs["guidance_scale"])
    cfg = guidance > 1 and pipe.unet.config.time_cond_proj_dim is None
    prompts = (kwargs["prompt"], kwargs["negative_prompt"], cfg)
    embeds = aids.prompts.embeds(pipe, *prompts, aids.lora_state) if aids.prompts \
        else encode(pipe, *prompts)
    aids.lap("prompt")
    width, height = kwargs["width"], kwargs["height"]
    count = len(batch_of(kwargs["image"]))
    embeds = _per_image(embeds, count, cfg)
    nets = list(pipe.controlnet.nets)
    conds = []
    for net, images in zip(nets, kwargs["control_image"]):
        images = batch_of(images)
        if all(_as_requested(image, width, height) for image in images):
            prepared = torch.cat([device_image(image, device) for image in images])
            prepared = prepared.to(dtype=control_dtype)
            prepared = torch.cat([prepared] * 2) if cfg else prepared
        else:  # the processor resizes; the engine never asks for it
            prepared = pipe.prepare_control_image(
                image=images, width=width, height=height, batch_size=count,
                num_images_per_prompt=1, device=device, dtype=control_dtype, crops_coords=None,
                resize_mode="default", do_classifier_free_guidance=cfg, guess_mode=False)
        conds.append(net.controlnet_cond_embedding(prepared))
    aids.lap("controls")
    latents, noise, image_latents, mask, timesteps = _latents(pipe, kwargs, embeds.dtype)
    aids.lap("latents")
    scales = keep_scales(kwargs["controlnet_conditioning_scale"],
                         kwargs["control_guidance_start"], kwargs["control_guidance_end"],
                         len(timesteps))
    return _Loop(embeds, latents, noise, image_latents, mask, conds, scales, timesteps,
                 pipe.prepare_extra_step_kwargs(generator, 0.0), guidance if cfg else None)


def _latents(pipe, kwargs: dict, dtype: torch.dtype) -> tuple:
    """Initial latents, their noise, the image latents, the latent-grid mask, timesteps."""
    from diffusers.utils.torch_utils import randn_tensor

    device, generator = _first(pipe.unet).device, kwargs["generator"]
    width, height, strength = kwargs["width"], kwargs["height"], kwargs["strength"]
    images = batch_of(kwargs["image"])
    count = len(images)
    if all(_as_requested(i, width, height) for i in images) and \
            pipe.image_processor.config.do_normalize:  # the processor's normalisation
        image = 2.0 * torch.cat([device_image(i, device) for i in images]) - 1.0
    else:  # the processor resizes; the engine never asks for it
        image = pipe.image_processor.preprocess(kwargs["image"], height=height, width=width,
                                                crops_coords=None, resize_mode="default")
    mask = pipe.mask_processor.preprocess(kwargs["mask_image"], height=height, width=width,
                                          resize_mode="default", crops_coords=None)
    pipe.scheduler.set_timesteps(kwargs["num_inference_steps"], device=device)
    timesteps, _ = pipe.get_timesteps(kwargs["num_inference_steps"], strength, device)
    latents, noise, image_latents = pipe.prepare_latents(
        count, pipe.vae.config.latent_channels, height, width, dtype, device, generator,
        image=image.to(dtype=torch.float32), timestep=timesteps[:1].repeat(count),
        is_strength_max=strength == 1.0, return_noise=True, return_image_latents=True)
    grid = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    mask = torch.nn.functional.interpolate(mask, size=grid).to(device=device, dtype=dtype)
    # the pipeline VAE-encodes the masked image here, which draws one posterior sample each
    randn_tensor((count, pipe.vae.config.latent_channels, *grid), generator=generator,
                 device=device, dtype=_first(pipe.vae).dtype)
    return latents, noise, image_latents, mask, timesteps


def batch_of(value) -> list:
    """A call's images as a list (one PIL image, or a list of them for a batch)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _per_image(embeds: torch.Tensor, count: int, cfg: bool) -> torch.Tensor:
    """One prompt's embeddings for ``count`` images, in the pipeline's order
    (all unconditional rows, then all conditional ones)."""
    if count == 1:
        return embeds
    if not cfg:
        return embeds.repeat(count, 1, 1)
    uncond, cond = embeds.chunk(2)
    return torch.cat([uncond.repeat(count, 1, 1), cond.repeat(count, 1, 1)])


def _first(module) -> torch.Tensor:
    """``module``'s first parameter: its device and dtype (what the pipeline's
    ``_execution_device`` and the models' ``dtype`` give for resident, unhooked modules, which
    walk every submodule for offloading and casting hooks: milliseconds a call)."""
    return next(module.parameters())


def _as_requested(image, width: int, height: int) -> bool:
    """Whether the processors would keep ``image`` as it is (RGB, the requested size)."""
    return image.size == (width, height) and image.mode == "RGB"


def device_image(image, device) -> torch.Tensor:
    """A PIL image as RGB (1, 3, H, W) float32 in [0, 1] on ``device``, channels-last strided:
    the image processors' ``np.array(image).astype(float32) / 255`` and transpose, on the
    device (the layout decides the VAE's and ControlNets' convolution kernels). The divisor is
    a 1-element tensor, not a scalar, which torch may turn into a multiplication by its
    reciprocal."""
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).to(device)
    divisor = torch.full((1,), 255.0, dtype=torch.float32, device=device)
    return pixels[None].permute(0, 3, 1, 2).float() / divisor


def _denoise(pipe, nets, loop: _Loop, graphs: Optional[StepGraphs], token: tuple):
    scheduler, timesteps = pipe.scheduler, loop.timesteps
    latents, count = loop.latents, len(timesteps)
    step = None
    for i in range(count):
        t = timesteps[i]
        model_in = torch.cat([latents] * 2) if loop.guidance is not None else latents
        model_in = scheduler.scale_model_input(model_in, t)
        if step is None:
            step = _step(pipe.unet, nets, model_in, t, loop, graphs, token)
        noise_pred = step(model_in, t, i)
        if loop.guidance is not None:
            uncond, text = noise_pred.chunk(2)
            noise_pred = uncond + loop.guidance * (text - uncond)
        latents = scheduler.step(noise_pred, t, latents, **loop.step_kwargs,
                                 return_dict=False)[0]
        known = loop.image_latents
        if i < count - 1:  # begin_index schedulers read only its shape; DDIM its values
            known = scheduler.add_noise(known, loop.noise, timesteps[i + 1:i + 2])
        latents = (1 - loop.mask) * known + loop.mask * latents
    return latents


def _step(unet, nets, model_in, t, loop: _Loop, graphs: Optional[StepGraphs], token: tuple):
    if graphs is None or model_in.device.type != "cuda":
        return EagerStep(unet, nets, loop.embeds, loop.conds, loop.scales)
    return graphs.step(unet, nets, model_in, t, loop.embeds, loop.conds, loop.scales, token)
