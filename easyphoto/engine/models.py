"""Resident models of the diffusers engine: base models, ControlNets and LoRA adapters.

* :class:`ModelSet` — one family's base UNet / VAE / text encoder(s) / tokenizer(s), its
  ControlNets by kind, its samplers (:class:`~easyphoto.engine.samplers.SamplerBank`) and its
  LoRA adapters (:class:`LoraAdapters`). Loaded once; every pipeline of the engine is built
  around these modules, so nothing is reloaded per call.
* :class:`ResidentModels` — loads a family's set on first use through
  :func:`easyphoto.train.loading.load_components` (``tiny-random``, a diffusers folder, a
  single-file ``.safetensors`` checkpoint or a registry role) and each ControlNet kind on first
  use: from the tiny preset, from ``<diffusers folder>/controlnet-<kind>/``, or from the
  registry role (``controlnet_sd15_canny`` …) through the single-file loader.
* :class:`~easyphoto.engine.loras.LoraAdapters` (:mod:`easyphoto.engine.loras`) — each LoRA
  file becomes a named peft adapter once; a call's (LoRA, weight) pairs are set and fused into
  the base weights while they stay unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import InvalidRequest
from ..train.loading import frozen_module
from .base import CONTROL_KINDS
from .loras import LORA_CACHE_LIMIT, LoraAdapters
from .samplers import SamplerBank

logger = logging.getLogger(__name__)

TINY = "tiny-random"
FAMILIES = ("sd15", "sdxl")
#: Registry role of each ControlNet kind, per family (SPEC §0). SDXL has no colour/tile nets.
CONTROLNET_ROLES: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "sd15": MappingProxyType({kind: f"controlnet_sd15_{kind}" for kind in CONTROL_KINDS}),
    "sdxl": MappingProxyType({"canny": "controlnet_sdxl_canny",
                              "openpose": "controlnet_sdxl_openpose"}),
})


def check_kind(family: str, kind: str) -> str:
    """The registry role of ControlNet ``kind`` for ``family``; :class:`InvalidRequest` when
    the family has no such ControlNet (SDXL: canny and openpose only)."""
    roles = CONTROLNET_ROLES[family]
    if kind not in roles:
        raise InvalidRequest(f"there is no {kind} ControlNet for {family}; {family} supports "
                             f"{', '.join(roles)}.")
    return roles[kind]


@dataclass
class ModelSet:
    """One family's resident models. ``text_encoders`` / ``tokenizers``: one entry for SD1.5,
    two for SDXL. ``controlnets`` maps a kind to its loaded ``ControlNetModel``."""

    family: str
    unet: Any
    vae: Any
    text_encoders: list
    tokenizers: list
    dtype: torch.dtype
    base_id: str
    samplers: SamplerBank
    loras: LoraAdapters
    controlnets: dict = field(default_factory=dict)

    def pipeline_kwargs(self, scheduler) -> dict:
        """Constructor arguments of a diffusers SD1.5 / SDXL pipeline around these modules."""
        kwargs = {"vae": self.vae, "unet": self.unet, "scheduler": scheduler,
                  "text_encoder": self.text_encoders[0], "tokenizer": self.tokenizers[0]}
        if self.family == "sdxl":
            kwargs.update(text_encoder_2=self.text_encoders[1], tokenizer_2=self.tokenizers[1],
                          add_watermarker=False)
        else:
            kwargs.update(safety_checker=None, feature_extractor=None,
                          requires_safety_checker=False)
        return kwargs


class ResidentModels:
    """Loads each family's :class:`ModelSet` and each ControlNet kind once, on first use.

    ``sources``: base model per family (``""`` = the registry default role). ``device``: where
    the modules live (the CPU when the engine offloads); ``target``: where they run (decides
    the VAE dtype). ``store``: a :class:`~easyphoto.weights.ModelStore` or ``None`` (made on
    ``models_dir`` when a registry model is first needed). ``fuse_loras``: see
    :class:`~easyphoto.engine.loras.LoraAdapters`.
    """

    def __init__(self, sources: Mapping[str, str], *, device: torch.device,
                 target: torch.device, dtype: torch.dtype, models_dir=None, store=None,
                 lora_limit: int = LORA_CACHE_LIMIT, seed: int = 0,
                 fuse_loras: bool = True) -> None:
        self.sources = dict(sources)
        self.device, self.target, self.dtype = device, target, dtype
        self.models_dir, self._store = models_dir, store
        self.lora_limit, self.seed, self.fuse_loras = lora_limit, seed, fuse_loras
        self._sets: dict[str, ModelSet] = {}

    def store(self):
        """The model store (created on first use)."""
        if self._store is None:
            from ..paths import models_root
            from ..weights import ModelStore

            self._store = ModelStore(models_root(self.models_dir))
        return self._store

    def is_loaded(self, family: str) -> bool:
        """Whether the family's base model is resident."""
        return family in self._sets

    def get(self, family: str) -> ModelSet:
        """The family's model set, loading the base model the first time."""
        if family not in self._sets:
            self._sets[family] = self._load(family)
        return self._sets[family]

    def _load(self, family: str) -> ModelSet:
        from ..train import loading

        source = self.sources[family]
        parts = loading.load_components(
            source, sdxl=family == "sdxl", models_dir=self.models_dir, device=self.device,
            dtype=self.dtype, with_canny=False,
            store=None if source.strip() == TINY else self.store(), seed=self.seed)
        vae_dtype = loading._vae_dtype(parts.vae, family, self.dtype, self.target)
        return ModelSet(
            family=family, unet=parts.unet, vae=frozen_module(parts.vae, self.device, vae_dtype),
            text_encoders=list(parts.text_encoders), tokenizers=list(parts.tokenizers),
            dtype=self.dtype, base_id=parts.base_id,
            samplers=SamplerBank(parts.noise_scheduler.config),
            loras=LoraAdapters(self.lora_limit, fuse=self.fuse_loras))

    def controlnets(self, family: str, kinds: Sequence[str]) -> list:
        """The ControlNets of ``kinds`` (in order), each loaded once."""
        models = self.get(family)
        for kind in dict.fromkeys(kinds):
            if kind not in models.controlnets:
                started = time.monotonic()
                net = self._load_controlnet(family, kind)
                models.controlnets[kind] = frozen_module(net, self.device, self.dtype)
                logger.info("%s ControlNet %s loaded in %.2f s", family, kind,
                            time.monotonic() - started)
        return [models.controlnets[kind] for kind in kinds]

    def _load_controlnet(self, family: str, kind: str):
        """One ControlNet: tiny preset, diffusers folder subfolder, or registry role."""
        role = check_kind(family, kind)
        source = self.sources[family].strip()
        if source == TINY:
            return _tiny_controlnet(family, kind, self.seed)
        folder = Path(source).expanduser() / f"controlnet-{kind}"
        if source and (folder / "config.json").is_file():
            from diffusers import ControlNetModel

            return ControlNetModel.from_pretrained(folder, torch_dtype=self.dtype,
                                                   local_files_only=True)
        from ..train.single_file import controlnet_from_file

        return controlnet_from_file(self.store().require(role), family, self.dtype)

    def available_controls(self, family: str) -> tuple[str, ...]:
        """Kinds usable now: loaded, in the tiny preset, in the base folder or in the store."""
        roles = CONTROLNET_ROLES[family]
        source = self.sources[family].strip()
        if source == TINY:
            return tuple(roles)
        loaded = self._sets[family].controlnets if family in self._sets else {}
        folder = Path(source).expanduser() if source else None

        def present(kind: str) -> bool:
            if kind in loaded:
                return True
            if folder is not None and (folder / f"controlnet-{kind}" / "config.json").is_file():
                return True
            return self.store().is_present(roles[kind])

        return tuple(kind for kind in roles if present(kind))

    def release(self) -> None:
        """Forget every model set (the caller frees device memory)."""
        for models in self._sets.values():
            models.loras.forget()
            models.controlnets.clear()
        self._sets.clear()


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> np.ndarray:
    """VAE-decode ``latents`` (B, C, h, w) in the VAE's dtype → (B, 8h, 8w, 3) uint8."""
    config = vae.config
    latents = latents.to(dtype=vae.dtype)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, latents.shape[1], 1, 1)
        mean_t = torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(shape)
        std_t = torch.tensor(std, dtype=latents.dtype, device=latents.device).view(shape)
        latents = latents * std_t / config.scaling_factor + mean_t
    else:
        latents = latents / config.scaling_factor + (getattr(config, "shift_factor", None) or 0)
    pixels = vae.decode(latents, return_dict=False)[0]
    pixels = (pixels / 2 + 0.5).clamp(0, 1).float().cpu().permute(0, 2, 3, 1).numpy()
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def _tiny_controlnet(family: str, kind: str, seed: int):
    """The tiny preset's ControlNet ``kind`` (derived from a fresh tiny UNet of ``seed``)."""
    from ..train import tiny

    if family == "sd15":
        return tiny.build_tiny_sd15(seed, controlnets=(kind,)).controlnets[kind]
    with torch.random.fork_rng(devices=[]):
        return tiny._controlnet(tiny.build_tiny_sdxl(seed).unet, seed, kind)

