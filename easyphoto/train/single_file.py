"""Single-file checkpoints (the WebUI kind): header checks and offline loading into diffusers.

Only ``.safetensors`` is read: pickle-based formats (``.ckpt``, ``.pt``, ``.pth``, ``.bin``)
are refused, because unpickling a user's file can run arbitrary code. The family (SD1.5 or
SDXL) is read from the tensor names in the header, without loading any tensor.

Loading goes through diffusers' single-file converters with the configs EasyPhoto ships in
``models/configs/<family>/`` (written from the published architecture hyper-parameters; their
parameter counts are checked in the tests), so nothing is fetched from a hub. This path is thin
on purpose: without real weights it cannot be exercised end to end here (see the tests).
"""

from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path
from types import MappingProxyType
from typing import Optional

import torch

from ..errors import InvalidRequest

logger = logging.getLogger(__name__)

#: Shipped diffusers-style configs: ``<CONFIGS_DIR>/<family>/<component>/config.json``.
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "models" / "configs"
PICKLE_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"})
FAMILY_NAMES = MappingProxyType({"sd15": "SD1.5", "sdxl": "SDXL"})
#: A safetensors header larger than this (bytes) is treated as corrupt.
MAX_HEADER_BYTES = 100_000_000
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
SDXL_TE2 = "conditioner.embedders.1."
VAE_PREFIX = "first_stage_model."


class CheckpointError(InvalidRequest):
    """A checkpoint file is unusable: wrong format, wrong family, not a full SD model."""


def refuse_pickle(path: Path) -> None:
    """Raise :class:`CheckpointError` for pickle-based checkpoint names (never opened)."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path.name} is a pickle-based checkpoint ({path.suffix}); EasyPhoto never unpickles "
            "model files because that can run arbitrary code. Convert it to .safetensors (for "
            "example with the WebUI's Checkpoint Merger, format 'safetensors') and use that file.")


def read_safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file: ``{name: {"dtype", "shape", "data_offsets"}}``
    plus optional ``"__metadata__"``. Reads only the header bytes."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        ok = 2 <= length <= min(MAX_HEADER_BYTES, size - 8)
        raw = handle.read(length) if ok else b""
    try:
        header = json.loads(raw.decode("utf-8")) if ok else None
    except (UnicodeDecodeError, ValueError):
        header = None
    if not isinstance(header, dict):
        pickled = head[:2] == b"PK" or head[:1] == b"\x80"
        hint = " It looks like a PyTorch pickle/zip file." if pickled else ""
        raise CheckpointError(f"{path} is not a valid .safetensors file.{hint} Use a "
                              ".safetensors Stable Diffusion checkpoint.")
    return header


def checkpoint_family(path: Path, header: dict) -> str:
    """``"sd15"`` or ``"sdxl"`` from the header's tensor names; :class:`CheckpointError` for
    SD2.x, the SDXL refiner, inpainting models and files that are not full SD checkpoints."""
    keys = [key for key in header if key != "__metadata__"]
    if any(key.startswith(SDXL_TE2) for key in keys):
        family = "sdxl"
    elif any(key.startswith("conditioner.embedders.0.model.") for key in keys):
        raise CheckpointError(f"{path.name} is an SDXL refiner; train on an SDXL base model.")
    elif any(key.startswith("cond_stage_model.model.") for key in keys):
        raise CheckpointError(f"{path.name} is a Stable Diffusion 2.x checkpoint; EasyPhoto "
                              "trains SD1.5 and SDXL models only.")
    elif any(key.startswith("cond_stage_model.transformer.") for key in keys):
        family = "sd15"
    else:
        raise CheckpointError(f"{path.name} is not a full Stable Diffusion checkpoint (no text "
                              "encoder weights); a LoRA, VAE or ControlNet file cannot be the "
                              "base.")
    shape = header.get(UNET_IN, {}).get("shape")
    if not shape:
        raise CheckpointError(f"{path.name} has no UNet weights ({UNET_IN}).")
    if shape[1] != 4:
        raise CheckpointError(f"{path.name} has a {shape[1]}-channel UNet input (an inpainting or "
                              "other special model); train on the family's base model.")
    return family


def check_family(path: Path, found: str, sdxl: bool) -> None:
    """:class:`CheckpointError` when the checkpoint's family is not the one requested."""
    wanted = "sdxl" if sdxl else "sd15"
    if found != wanted:
        flag = "turn SDXL on (--sdxl)" if found == "sdxl" else "turn SDXL off"
        raise CheckpointError(
            f"{path.name} is an {FAMILY_NAMES[found]} model but {FAMILY_NAMES[wanted]} training "
            f"was requested: {flag}, or choose an {FAMILY_NAMES[wanted]} checkpoint.")


def configs_for(family: str) -> Path:
    """The shipped config folder of ``family`` (``unet/``, ``vae/``, ``text_encoder*/``...)."""
    folder = CONFIGS_DIR / family
    if not (folder / "unet" / "config.json").is_file():
        raise CheckpointError(f"EasyPhoto's model configs are missing from {folder}; reinstall.")
    return folder


def load_single_file(path: Path, family: str, dtype: torch.dtype, vae_path: Optional[Path]):
    """UNet and text encoder(s) in ``dtype`` and the VAE of a single-file checkpoint, on the CPU.

    ``vae_path``: a VAE-only safetensors file, used when the checkpoint has no VAE weights.
    Returns ``(unet, vae, [text_encoder, (text_encoder_2)])``. The whole file is read into
    memory once (≈ 2 GB SD1.5 fp16, 7 GB SDXL) and shared by the converters.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    config = str(configs_for(family))
    state = load_file(str(path))
    common = {"config": config, "local_files_only": True, "torch_dtype": dtype}
    unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **common)
    if not any(key.startswith(VAE_PREFIX) for key in state):
        if vae_path is None:
            raise CheckpointError(f"{path.name} has no VAE weights and no separate VAE is "
                                  "available.")
        logger.info("%s has no VAE; using %s", path.name, vae_path)
        state.update({key if key.startswith(VAE_PREFIX) else VAE_PREFIX + key: value
                      for key, value in load_file(str(vae_path)).items()})
    # the VAE stays in the file's precision here; the caller picks its dtype (fp16 overflow)
    vae = AutoencoderKL.from_single_file(state, subfolder="vae", config=config,
                                         local_files_only=True)
    encoders = _text_encoders(state, family, config, dtype)
    del state
    return unet, vae, encoders


def _text_encoders(state: dict, family: str, config: str, dtype: torch.dtype) -> list:
    """CLIP text encoder(s) of a single-file state (transformers classes, configs shipped)."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    classes = [("text_encoder", CLIPTextModel)]
    if family == "sdxl":
        classes.append(("text_encoder_2", CLIPTextModelWithProjection))
    return [create_diffusers_clip_model_from_ldm(cls, state, subfolder=sub, config=config,
                                                 torch_dtype=dtype, local_files_only=True)
            for sub, cls in classes]


def controlnet_from_file(path: Path, family: str, dtype: torch.dtype):
    """A ControlNet from a single file: diffusers-keyed ``.safetensors`` (config derived from
    its tensor names, e.g. SDXL "mid"/"small" variants) or original-keyed (shipped config).

    A ``.pth`` is read with ``torch.load(weights_only=True)`` (tensors only, no code); this is
    meant for the registry's ControlNet files, never for a user's base checkpoint.
    """
    from diffusers import ControlNetModel

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    folder = configs_for(family)
    if "time_embedding.linear_1.weight" not in state:
        return ControlNetModel.from_single_file(state, config=str(folder), subfolder="controlnet",
                                                local_files_only=True, torch_dtype=dtype)
    config = _controlnet_config(ControlNetModel.load_config(str(folder / "controlnet")), state)
    net = ControlNetModel.from_config(config)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"ControlNet {path.name} does not match a {FAMILY_NAMES[family]} "
                              f"ControlNet (missing {missing[:3]}, unexpected {unexpected[:3]}).")
    return net.to(dtype)


def _controlnet_config(config: dict, state: dict) -> dict:
    """Fit the shipped ControlNet config's transformer depth per down block to ``state``."""
    pattern = re.compile(r"^down_blocks\.(\d+)\.attentions\.0\.transformer_blocks\.(\d+)\.")
    depth = [0] * len(config["down_block_types"])
    for key in state:
        match = pattern.match(key)
        if match:
            block, layer = int(match.group(1)), int(match.group(2))
            depth[block] = max(depth[block], layer + 1)
    config = dict(config)
    config["down_block_types"] = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth]
    config["transformer_layers_per_block"] = [max(d, 1) for d in depth]
    return config
