"""The validation pipeline: its inputs, its construction once per run, LoRA switching.

* Inputs (:func:`prepare_input`): the template cropped at face ``box×3``, resized so its short
  side is the working resolution (sides multiples of 64), the ``box×1.3`` face mask and the
  canny edges (100/200) of the resized crop; :func:`composite` pastes a render back through a
  feathered mask so pixels more than :func:`feather_px` outside the mask box never change.
* :func:`build_validation_pipeline` wraps the models a training run already holds in a
  diffusers inpaint pipeline (ControlNet or plain, SD1.5 or SDXL) without copying or reloading
  anything.
* :func:`lora_applied` applies one LoRA checkpoint file for the duration of a ``with`` block and
  puts everything back afterwards, in one of two ways chosen per checkpoint:

  - **in place** (the training run's case): the UNet / text encoders already carry training's
    peft adapter with exactly the file's modules and scale ``alpha/rank``. The file's
    ``lora_A`` / ``lora_B`` tensors are copied into that adapter's parameters and the previous
    values restored afterwards. No module is added or removed and no adapter is (de)activated,
    so training's optimizer, ``requires_grad`` flags and active adapter are untouched; the
    cost is reading the file plus one copy of the LoRA tensors (base weights are never
    touched). Rendering from the *file* (not the live weights) makes the score belong to
    exactly what fusion averages (checkpoints are saved in fp16).
    On CUDA the UNet's copy is then **merged** into its base weights as well
    (:class:`MergedLora`): the denoising steps run the plain layers instead of a rank-128
    branch beside each of them; the base weights are copied back, bit for bit, afterwards.
  - **adapter** (any other case, e.g. re-validating files on a model without LoRA layers):
    diffusers ``load_lora_weights(path, adapter_name=...)`` + ``set_adapters``; afterwards the
    adapter is deleted (or, if the models had no LoRA layers before, every LoRA layer
    unloaded) and the previously active adapters and every parameter's ``requires_grad``
    restored.

Images are ``(H, W, 3)`` uint8 RGB arrays, masks ``(H, W)`` uint8 0/255, boxes in pixels.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from ..errors import EasyPhotoError, InvalidRequest
from ..face.geometry import box_mask, crop
from ..face.types import Box
from .components import TrainComponents
from .lora_io import KohyaLora, load_kohya_lora, state_for_model

log = logging.getLogger(__name__)

IN_PLACE, ADAPTER, MERGED = "in-place", "adapter", "in-place, merged"
#: Template crop around the face (SPEC 2.3 / 1.2) and inpaint mask (SPEC 1.4), as ``box×r``.
CROP_RATIO, MASK_RATIO = 3.0, 1.3
#: Canny thresholds (SPEC 2.6) and the ControlNet weight. Weight 1.0: the paper gives none for
#: validation; 1.0 is the reference's weight whenever canny is the only structure control
#: (SPEC 2.7/2.8), and it keeps the template's face geometry fixed so checkpoints differ by
#: identity, which is what the score measures.
CANNY_LOW, CANNY_HIGH, CANNY_WEIGHT = 100, 200, 1.0
#: Working-size sides are multiples of this (VAE ×8 · UNet ×8 downsampling).
SIZE_MULTIPLE = 64
#: Composite feather: Gaussian σ = FEATHER_SIGMA px at a 512-px working size (the host's mask
#: blur 8), scaled to the crop; the kernel reaches FEATHER_REACH·σ past the mask box.
FEATHER_SIGMA, FEATHER_REACH, FEATHER_AT = 8.0, 2.5, 512
JPEG_QUALITY = 95


class ValidationError(EasyPhotoError):
    """Validation cannot run (no usable template, bad inputs)."""


# ---- one template's inputs ----------------------------------------------------------------------
@dataclass(frozen=True)
class ValidationInput:
    """A template prepared for inpainting.

    ``crop`` (h, w, 3) is the template at ``face.box×3``; ``crop_box`` its place in the template;
    ``mask_box`` the ``box×1.3`` inpaint box in crop px. ``image`` / ``mask`` / ``control`` are
    the working-size (H, W) pipeline inputs: RGB, 0/255 mask, 3-channel canny edges.
    """

    crop: np.ndarray = field(repr=False)
    crop_box: Box
    mask_box: Box
    image: np.ndarray = field(repr=False)
    mask: np.ndarray = field(repr=False)
    control: np.ndarray = field(repr=False)


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """``(W, H)``: short side ≈ ``resolution``, aspect kept, both multiples of 64 (≥ 64)."""
    scale = resolution / min(width, height)
    return tuple(max(SIZE_MULTIPLE, SIZE_MULTIPLE * round(side * scale / SIZE_MULTIPLE))
                 for side in (width, height))


def canny_control(image: np.ndarray) -> np.ndarray:
    """``cv2.Canny(image, 100, 200)`` of an RGB image, as a (H, W, 3) uint8 0/255 image."""
    edges = cv2.Canny(np.ascontiguousarray(image), CANNY_LOW, CANNY_HIGH)
    return np.repeat(edges[:, :, None], 3, axis=2)


def square_crop_box(face_box: Box, ratio: float, width: int, height: int) -> Box:
    """A square of side ``ratio × max(face w, h)`` centred on the face, shrunk to fit the
    image and shifted inside it. Square crops give every template the same working size, so
    all templates of a checkpoint render in one batched pipeline call."""
    side = min(ratio * max(face_box.width, face_box.height), width, height)
    cx, cy = face_box.center
    x0 = min(max(cx - side / 2, 0.0), width - side)
    y0 = min(max(cy - side / 2, 0.0), height - side)
    return Box(x0, y0, x0 + side, y0 + side)


def prepare_input(image: np.ndarray, face_box: Box, resolution: int) -> ValidationInput:
    """Crop ``image`` at a square ``face_box×3`` (see :func:`square_crop_box`), mask
    ``face_box×1.3`` and resize for a ``resolution``-px working size (:class:`ValidationInput`)."""
    height, width = image.shape[:2]
    crop_image, (ox, oy) = crop(image, square_crop_box(face_box, CROP_RATIO, width, height))
    ch, cw = crop_image.shape[:2]
    if min(ch, cw) < 8:
        raise ValidationError(f"the face crop of a validation template is too small ({cw}×{ch}).")
    face = Box(face_box.x0 - ox, face_box.y0 - oy, face_box.x1 - ox, face_box.y1 - oy)
    mask_box = face.scaled(MASK_RATIO, (cw, ch))
    w, h = working_size(cw, ch, resolution)
    sx, sy = w / cw, h / ch
    interpolation = cv2.INTER_AREA if sx < 1 else cv2.INTER_CUBIC
    work = cv2.resize(crop_image, (w, h), interpolation=interpolation)
    work_box = Box(mask_box.x0 * sx, mask_box.y0 * sy, mask_box.x1 * sx, mask_box.y1 * sy)
    return ValidationInput(crop_image, Box(ox, oy, ox + cw, oy + ch), mask_box, work,
                           box_mask((h, w), work_box), canny_control(work))


def feather_px(crop_shape: tuple[int, int]) -> int:
    """How far (crop px) past the mask box the composite may change pixels."""
    sigma = FEATHER_SIGMA * min(crop_shape) / FEATHER_AT
    return max(1, math.ceil(FEATHER_REACH * sigma))


def composite(base: np.ndarray, top: np.ndarray, mask_box: Box) -> np.ndarray:
    """``top`` over ``base`` (same (h, w, 3) uint8) inside ``mask_box``, feathered; pixels the
    feathered mask does not reach are ``base``'s exactly."""
    reach = feather_px(base.shape[:2])
    hard = box_mask(base.shape[:2], mask_box).astype(np.float32) / 255.0
    alpha = cv2.GaussianBlur(hard, (2 * reach + 1, 2 * reach + 1), reach / FEATHER_REACH)
    alpha = alpha[:, :, None]
    blended = np.rint(base * (1.0 - alpha) + top * alpha).clip(0, 255).astype(np.uint8)
    return np.where(alpha > 0, blended, base)


def encode_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


# ---- the pipeline -----------------------------------------------------------------------------
def _pipeline_class(family: str, controlnet: bool):
    import diffusers

    names = {("sd15", True): "StableDiffusionControlNetInpaintPipeline",
             ("sd15", False): "StableDiffusionInpaintPipeline",
             ("sdxl", True): "StableDiffusionXLControlNetInpaintPipeline",
             ("sdxl", False): "StableDiffusionXLInpaintPipeline"}
    if (family, controlnet) not in names:
        raise InvalidRequest(f"validation does not support the model family {family!r}.")
    return getattr(diffusers, names[family, controlnet])


def _pipeline_vae(components: TrainComponents):
    """The VAE to hand the pipeline: the training one, except for SDXL with an fp32 VAE beside
    half-precision models. diffusers' SDXL inpaint pipelines cast a ``force_upcast`` VAE down to
    the latents' dtype after encoding and up again to decode; on an fp32 VAE that round trip
    rounds its weights (renders drift from call to call) and changes the training VAE. A
    half-precision copy (~170 MB) makes the round trip lossless and leaves training's alone."""
    vae = components.vae
    if components.family == "sdxl" and vae.dtype != components.dtype:
        log.info("validation: SDXL pipeline gets a %s copy of the VAE", components.dtype)
        return copy.deepcopy(vae).to(dtype=components.dtype)
    return vae


def build_validation_pipeline(components: TrainComponents, controlnet: bool,
                              multi: bool = False):
    """The inpaint pipeline around ``components``' models (no copy, no disk access); ``multi``
    wraps the ControlNet in a one-net ``MultiControlNetModel`` (the engine's own loop).

    Sampler: DPM++ 2M Karras built from the training scheduler's config (the deterministic
    sibling of inference's DPM++ 2M SDE Karras: a render depends on the seed only via its
    initial noise, so checkpoints are compared on equal terms).
    """
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler.from_config(
        components.noise_scheduler.config, use_karras_sigmas=True, algorithm_type="dpmsolver++")
    kwargs = {"vae": _pipeline_vae(components), "unet": components.unet, "scheduler": scheduler,
              "text_encoder": components.text_encoders[0], "tokenizer": components.tokenizers[0]}
    if components.family == "sdxl":
        kwargs.update(text_encoder_2=components.text_encoders[1],
                      tokenizer_2=components.tokenizers[1], add_watermarker=False)
    else:
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if controlnet:
        kwargs["controlnet"] = [components.canny_controlnet] if multi else \
            components.canny_controlnet
    pipe = _pipeline_class(components.family, controlnet)(**kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@contextlib.contextmanager
def eval_mode(models: Sequence) -> Iterator[None]:
    """Every module in eval mode (no LoRA dropout) inside; each module's own flag restored."""
    flags = [(m, m.training) for model in models if model is not None for m in model.modules()]
    for module, _ in flags:
        module.training = False
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


# ---- LoRA switching ----------------------------------------------------------------------------
def _tuner_layers(model) -> list:
    """``[(module path, peft layer)]`` of ``model``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, BaseTunerLayer)]


def _adapter_parameters(model, scale: float) -> Optional[dict]:
    """``{"<module>.lora_A.weight": parameter, ...}`` of ``model``'s single active adapter, or
    ``None`` when it has several active adapters or one whose scale is not ``scale``."""
    params: dict = {}
    for name, layer in _tuner_layers(model):
        active = list(layer.active_adapters)
        if not active:
            continue
        if len(active) != 1 or not hasattr(layer, "lora_A") or active[0] not in layer.lora_A:
            return None
        adapter = active[0]
        if abs(float(layer.scaling[adapter]) - scale) > 1e-6 * max(1.0, scale):
            return None
        params[f"{name}.lora_A.weight"] = layer.lora_A[adapter].weight
        params[f"{name}.lora_B.weight"] = layer.lora_B[adapter].weight
    return params


def in_place_pairs(models: Sequence, path: Path, lora: Optional[KohyaLora] = None
                   ) -> Optional[list]:
    """``[(parameter, file tensor)]`` when the file fits the models' active adapters exactly
    (same modules, shapes and ``alpha/rank``), else ``None``.

    ``models`` = ``[unet, text_encoder(, text_encoder_2)]``; ``lora``: the file's content
    already in memory (e.g. training's snapshot of it), else the file is read.
    """
    lora = lora if lora is not None else load_kohya_lora(path)
    states = [lora.unet, *lora.text_encoders]
    if len(states) > len(models):
        return None
    pairs = []
    for model, state in zip(models, states + [{}] * (len(models) - len(states))):
        params = _adapter_parameters(model, lora.alpha / lora.rank)
        state = state_for_model(state, model) if state else {}
        if params is None or set(params) != set(state):
            return None
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(params[key].shape):
                return None
            pairs.append((params[key], tensor))
    return pairs if pairs else None


@contextlib.contextmanager
def _tensors_copied(pairs: Sequence) -> Iterator[None]:
    """Copy each file tensor into its parameter inside the block; restore the old values after."""
    saved = [param.detach().clone() for param, _ in pairs]
    try:
        with torch.no_grad():
            for param, tensor in pairs:
                param.copy_(tensor.to(device=param.device, dtype=param.dtype))
        yield
    finally:
        with torch.no_grad():
            for (param, _), old in zip(pairs, saved):
                param.copy_(old)


def _active_adapters(models: Sequence) -> list:
    """Per model: the active adapter names of its first peft layer (``None`` without peft)."""
    out = []
    for model in models:
        layers = _tuner_layers(model)
        out.append(list(layers[0][1].active_adapters) if layers else None)
    return out


@contextlib.contextmanager
def _adapter_loaded(pipe, models: Sequence, path: Path, name: str) -> Iterator[None]:
    """``load_lora_weights`` + ``set_adapters`` inside; delete/unload and restore flags after."""
    had_peft = any(_tuner_layers(m) for m in models)
    grads = [{n: p.requires_grad for n, p in m.named_parameters()} for m in models]
    active = _active_adapters(models)
    pipe.load_lora_weights(str(path), adapter_name=name)
    try:
        pipe.set_adapters([name], adapter_weights=[1.0])
        yield
    finally:
        if had_peft:
            pipe.delete_adapters(name)
            for model, names in zip(models, active):
                for _, layer in _tuner_layers(model):
                    if names:
                        layer.set_adapter(names)
        else:
            pipe.unload_lora_weights()
        for model, flags in zip(models, grads):
            for param_name, param in model.named_parameters():
                if param_name in flags:
                    param.requires_grad_(flags[param_name])


@contextlib.contextmanager
def lora_applied(pipe, models: Sequence, path: Path, adapter_name: str,
                 lora: Optional[KohyaLora] = None) -> Iterator[str]:
    """Apply the LoRA file ``path`` to ``models`` (``[unet, text_encoder(s)]`` of ``pipe``)
    inside the block; yields the way used (``"in-place"`` or ``"adapter"``, see module doc).
    ``lora``: the file's content in memory (see :func:`in_place_pairs`)."""
    pairs = in_place_pairs(models, path, lora)
    if pairs is not None:
        log.debug("LoRA %s copied into the resident adapter (%d tensors)", path.name, len(pairs))
        with _tensors_copied(pairs):
            yield IN_PLACE
    else:
        log.debug("LoRA %s loaded as adapter %s", path.name, adapter_name)
        with _adapter_loaded(pipe, models, path, adapter_name):
            yield ADAPTER


class MergedLora:
    """The UNet's resident LoRA (already holding a checkpoint: see :func:`lora_applied`)
    merged into its base weights for the duration of :meth:`applied`.

    Inside, each LoRA layer's base weight is ``W₀ + ΔW`` (peft's ``get_delta_weight``: scale ×
    B·A, summed in fp32, rounded once to the weight's dtype), written **into the same tensor**
    (a CUDA graph that reads it stays valid), and the layer is marked merged (peft's
    ``merged_adapters``), so its forward is the base layer alone. On exit ``W₀`` is copied back
    (bit-identical; no ``W + ΔW − ΔW`` drift) and the mark removed. ``W₀`` is copied once, at
    the first merge, and kept for the object's lifetime (one renderer: every checkpoint)."""

    def __init__(self) -> None:
        self._pristine: dict = {}

    @contextlib.contextmanager
    def applied(self, model) -> Iterator[None]:
        layers = [(layer, list(layer.active_adapters)[0]) for _, layer in _tuner_layers(model)
                  if len(layer.active_adapters) == 1 and not layer.merged
                  and list(layer.active_adapters)[0] in getattr(layer, "lora_A", {})]
        done: list = []
        try:
            with torch.no_grad():
                for layer, adapter in layers:
                    weight = layer.get_base_layer().weight
                    pristine = self._pristine.setdefault(id(weight), weight.detach().clone())
                    delta = layer.get_delta_weight(adapter)
                    weight.copy_(pristine.float() + delta.float())
                    layer.merged_adapters.append(adapter)
                    done.append((layer, adapter, weight, pristine))
            yield
        finally:
            with torch.no_grad():
                for layer, adapter, weight, pristine in done:
                    layer.merged_adapters.remove(adapter)
                    weight.copy_(pristine)
