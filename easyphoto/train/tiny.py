"""The ``tiny-random`` preset: SD1.5- and SDXL-shaped model sets with random weights.

**These models produce noise.** They exist for smoke tests and CI: they have the module tree,
the tensor ranks and the plumbing of the real architectures (UNet with cross-attention down /
mid / up blocks and conv ``proj_in``/``proj_out`` like SD1.5, an 8× VAE, CLIP text encoders,
ControlNets derived from the UNet), built from configs in code, with no file download, in well
under a second on a CPU. Use them to test training loops, LoRA files, pipelines and masks — never
to judge image quality.

Shapes (SD1.5 preset): image 64×64 RGB ↔ latent (4, 8, 8); text (77 tokens) → (77, 32) hidden
states; UNet blocks (32, 64) channels, one resnet per block. SDXL preset: two text encoders
(hidden 32 each → cross-attention 64, pooled projection 32), ``text_time`` added conditioning.

Everything is deterministic for a given ``seed``; the global torch RNG is left untouched.
The tokenizer is a byte-level BPE with no merges (one token per character, plus
``<|startoftext|>`` / ``<|endoftext|>``), written to a temporary folder and loaded from files.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence, Union

import torch

logger = logging.getLogger(__name__)

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_TOKENS = 77
#: Image side (px) the tiny pipelines generate by default (latent side × VAE factor 8).
TINY_IMAGE_SIZE = 64


@dataclass(frozen=True)
class TinyComponents:
    """A tiny random model set. ``family`` is ``"sd15"`` or ``"sdxl"``.

    ``text_encoder_2`` / ``tokenizer_2`` are set for SDXL only. ``controlnets`` maps a name
    (e.g. ``"canny"``) to a ``ControlNetModel`` derived from ``unet``.
    """

    family: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    controlnets: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments for ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``."""
        kwargs = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
                  "tokenizer": self.tokenizer, "scheduler": self.scheduler}
        if self.family == "sdxl":
            kwargs.update(text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
                          add_watermarker=False)
        else:
            kwargs.update(safety_checker=None, feature_extractor=None,
                          requires_safety_checker=False)
        return kwargs


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE: byte b → one unicode character.

    Printable Latin-1 bytes stand for themselves; every other byte is shifted above 255.
    """
    keep = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    symbols, shift = [], 0
    for byte in range(256):
        if byte in keep:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shift))
            shift += 1
    return symbols


def write_tiny_tokenizer_files(folder: Union[str, os.PathLike]) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` of the tiny tokenizer.

    Vocabulary (514 ids): each byte symbol, then each byte symbol + ``</w>`` (end of word), then
    ``<|startoftext|>`` and ``<|endoftext|>``. No merges. Returns ``folder``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_TOKENS,
              "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def build_tiny_tokenizer():
    """A ``CLIPTokenizer`` (77 tokens, 514-id vocabulary) built from generated files, offline."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="easyphoto-tiny-tok-") as tmp:
        write_tiny_tokenizer_files(tmp)
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def _seeded(seed: int, name: str) -> int:
    """A per-component seed, so adding a component never changes the others' weights."""
    return zlib.crc32(f"{seed}:{name}".encode())


def _text_encoder(tokenizer, seed: int, name: str, projection_dim: Optional[int] = None):
    """A 2-layer CLIP text encoder, hidden 32, 4 heads: ids (B, 77) → (B, 77, 32)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, hidden_act="quick_gelu",
        projection_dim=projection_dim or 32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(_seeded(seed, name))
    model_cls = CLIPTextModelWithProjection if projection_dim else CLIPTextModel
    return model_cls(config).eval()


def _vae(seed: int, scaling_factor: float):
    """An 8× AutoencoderKL: image (B, 3, H, W) in [-1, 1] ↔ latent (B, 4, H/8, W/8)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(_seeded(seed, "vae"))
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32), norm_num_groups=8,
        sample_size=TINY_IMAGE_SIZE, scaling_factor=scaling_factor).eval()


def _scheduler():
    """DDIM with the SD1.5/SDXL training noise schedule (scaled-linear β 0.00085 → 0.012)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def _unet_sd15(seed: int):
    """SD1.5-shaped UNet: latent (B, 4, 8, 8), text (B, 77, 32) → noise (B, 4, 8, 8)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(_seeded(seed, "unet"))
    return UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 8, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        attention_head_dim=4, norm_num_groups=32, use_linear_projection=False).eval()


def _unet_sdxl(seed: int):
    """SDXL-shaped UNet: text (B, 77, 64) + pooled (B, 32) + 6 size/crop ids → noise."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(_seeded(seed, "unet"))
    return UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, transformer_layers_per_block=(1, 2),
        cross_attention_dim=64, attention_head_dim=(2, 4), norm_num_groups=32,
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32).eval()


def _controlnet(unet, seed: int, name: str):
    """A ControlNet copied from ``unet``. Its zero convolutions get random weights (std 0.1)
    and its hint encoder a variance-preserving init, so that in tests the control image
    visibly changes the output (the stock init would make the hint's effect ~1e-4)."""
    from diffusers import ControlNetModel

    torch.manual_seed(_seeded(seed, f"controlnet:{name}"))
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16))
    hint_convs = [m for m in net.controlnet_cond_embedding.modules()
                  if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in hint_convs:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block]:
            conv.weight.normal_(0.0, 0.1)
    return net.eval()


def build_tiny_sd15(seed: int = 0, controlnets: Sequence[str] = ()) -> TinyComponents:
    """The SD1.5-shaped tiny random set (see the module docstring). Produces noise.

    ``controlnets``: names of ControlNets to derive from the UNet (e.g. ``("canny",)``).
    """
    with torch.random.fork_rng(devices=[]):
        tokenizer = build_tiny_tokenizer()
        unet = _unet_sd15(seed)
        nets = {name: _controlnet(unet, seed, name) for name in controlnets}
        return TinyComponents(
            family="sd15", unet=unet, vae=_vae(seed, 0.18215),
            text_encoder=_text_encoder(tokenizer, seed, "text_encoder"),
            tokenizer=tokenizer, scheduler=_scheduler(), controlnets=MappingProxyType(nets))


def build_tiny_sdxl(seed: int = 0) -> TinyComponents:
    """The SDXL-shaped tiny random set: two text encoders, ``text_time`` conditioning."""
    with torch.random.fork_rng(devices=[]):
        tokenizer, tokenizer_2 = build_tiny_tokenizer(), build_tiny_tokenizer()
        return TinyComponents(
            family="sdxl", unet=_unet_sdxl(seed), vae=_vae(seed, 0.13025),
            text_encoder=_text_encoder(tokenizer, seed, "text_encoder"),
            text_encoder_2=_text_encoder(tokenizer_2, seed, "text_encoder_2", projection_dim=32),
            tokenizer=tokenizer, tokenizer_2=tokenizer_2, scheduler=_scheduler())


def tiny_pipeline(seed: int = 0, components: Optional[TinyComponents] = None):
    """A ``StableDiffusionPipeline`` (no safety checker) on the tiny SD1.5 set. Produces noise.

    ``pipe("x", num_inference_steps=2, output_type="np").images`` → (1, 64, 64, 3) floats in
    [0, 1].
    """
    from diffusers import StableDiffusionPipeline

    components = components or build_tiny_sd15(seed)
    pipe = StableDiffusionPipeline(**components.pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0, components: Optional[TinyComponents] = None):
    """A ``StableDiffusionXLPipeline`` on the tiny SDXL set (64×64 by default). Produces noise."""
    from diffusers import StableDiffusionXLPipeline

    components = components or build_tiny_sdxl(seed)
    pipe = StableDiffusionXLPipeline(**components.pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sd15(folder: Union[str, os.PathLike], seed: int = 0,
                   controlnets: Sequence[str] = ()) -> Path:
    """Write the tiny SD1.5 set as a diffusers folder (safetensors) and return its path.

    ``StableDiffusionPipeline.from_pretrained(folder)`` loads it offline. Each ControlNet goes to
    ``folder/controlnet-<name>/`` (loadable with ``ControlNetModel.from_pretrained``).
    """
    folder = Path(folder)
    components = build_tiny_sd15(seed, controlnets)
    tiny_pipeline(components=components).save_pretrained(folder, safe_serialization=True)
    # transformers ≥ 5 writes only tokenizer.json; vocab.json + merges.txt serve older versions
    write_tiny_tokenizer_files(folder / "tokenizer")
    for name, net in components.controlnets.items():
        net.save_pretrained(folder / f"controlnet-{name}", safe_serialization=True)
    logger.info("tiny-random SD1.5 set (noise only, for tests) written to %s", folder)
    return folder
