"""Load the diffusion models of a training run (:class:`TrainComponents`), offline.

``base_model`` may be:

* ``"tiny-random"`` — the random tiny preset of :mod:`easyphoto.train.tiny` (produces noise;
  for tests and smoke runs), with its canny ControlNet;
* a diffusers folder (``model_index.json``) — ``from_pretrained(..., local_files_only=True)``;
  a ``controlnet-canny/`` subfolder, when present, is the validation ControlNet;
* a single-file ``.safetensors`` checkpoint (the WebUI kind) — see
  :mod:`easyphoto.train.single_file` (shipped configs, no hub) and
  :mod:`easyphoto.train.clip_tokenizer` (tokenizers found or derived offline);
* a registry role of kind ``checkpoint`` (e.g. ``"sd15_v15"``), or ``""`` for the family's
  default role ``sd15_base`` / ``sdxl_base``, through :meth:`ModelStore.require`.

Everything is loaded frozen (``requires_grad=False``, eval mode) onto ``device``. Weights are
``dtype`` (fp32 on CPU; on GPU fp16/bf16 from :func:`weight_dtype`). The VAE stays fp32 on CPU,
and on GPU too for SDXL in fp16 unless its config says it is fp16-safe (``force_upcast`` false,
as the fp16-fix VAE's is): the stock SDXL VAE overflows in fp16.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from types import MappingProxyType
from typing import Optional, Union

import torch

from ..errors import ModelUnavailable
from .components import TrainComponents
from .single_file import (
    FAMILY_NAMES,
    CheckpointError,
    check_family,
    checkpoint_family,
    controlnet_from_file,
    load_single_file,
    read_safetensors_header,
    refuse_pickle,
)

logger = logging.getLogger(__name__)

TINY = "tiny-random"
DEFAULT_ROLES = MappingProxyType({"sd15": "sd15_base", "sdxl": "sdxl_base"})
CANNY_ROLES = MappingProxyType({"sd15": "controlnet_sd15_canny", "sdxl": "controlnet_sdxl_canny"})
VAE_ROLES = MappingProxyType({"sd15": "vae_sd15", "sdxl": "vae_sdxl"})
#: Subfolders whose files identify a diffusers folder's weights (hashed for ``base_id``).
HASHED_SUBFOLDERS = ("unet", "vae", "text_encoder", "text_encoder_2")
_CHUNK = 8 << 20


def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """``device`` as a ``torch.device``; default CUDA when available, else CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def weight_dtype(mixed_precision: str, device: Union[str, torch.device]) -> torch.dtype:
    """Frozen-weight dtype: fp32 on CPU or for ``"no"``; fp16 / bf16 on GPU (bf16 falls back
    to fp16 on GPUs without bf16)."""
    if resolve_device(device).type != "cuda" or mixed_precision == "no":
        return torch.float32
    if mixed_precision == "bf16":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        logger.warning("this GPU has no bf16: using fp16 mixed precision")
    return torch.float16


def sha256_prefix(paths: list[Path], length: int = 12) -> str:
    """First ``length`` hex digits of the sha256 of one file, or of (name, digest) pairs of
    several; streamed in 8 MiB chunks."""
    digests = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda h=handle: h.read(_CHUNK), b""):
                digest.update(chunk)
        digests.append(digest.hexdigest())
    if len(digests) == 1:
        return digests[0][:length]
    outer = hashlib.sha256()
    for path, hexdigest in zip(paths, digests):
        outer.update(f"{path.parent.name}/{path.name}:{hexdigest}\n".encode())
    return outer.hexdigest()[:length]


def _store(models_dir, store):
    if store is not None:
        return store
    from ..paths import models_root
    from ..weights import ModelStore

    return ModelStore(models_root(models_dir))


def _resolve_base(base_model: str, family: str, store) -> Path:
    """The path of ``base_model``: a file/folder, or a registry role (``""`` = default)."""
    name = base_model.strip()
    if not name:
        return store.require(DEFAULT_ROLES[family])
    path = Path(name).expanduser()
    if path.exists():
        return path
    roles = {spec.role: spec for spec in store.specs()}
    if name in roles and roles[name].kind == "checkpoint":
        return store.require(name)
    raise ModelUnavailable(
        f"Base model {name!r} was not found: give an existing .safetensors checkpoint, a "
        f"diffusers folder (with model_index.json), a registry checkpoint role, '{TINY}', or "
        f"leave it empty for the {FAMILY_NAMES[family]} default ({DEFAULT_ROLES[family]}).")


def _load_tiny(family: str, seed: int, with_canny: bool) -> dict:
    """The tiny preset as loader parts (canny ControlNet derived from its UNet)."""
    from diffusers import DDPMScheduler

    from . import tiny

    if family == "sd15":
        parts = tiny.build_tiny_sd15(seed, controlnets=("canny",) if with_canny else ())
        canny = parts.controlnets.get("canny")
        encoders, tokenizers = [parts.text_encoder], [parts.tokenizer]
    else:
        parts = tiny.build_tiny_sdxl(seed)
        with torch.random.fork_rng(devices=[]):
            canny = tiny._controlnet(parts.unet, seed, "canny") if with_canny else None
        encoders = [parts.text_encoder, parts.text_encoder_2]
        tokenizers = [parts.tokenizer, parts.tokenizer_2]
    return {"unet": parts.unet, "vae": parts.vae, "text_encoders": encoders,
            "tokenizers": tokenizers, "canny": canny, "base_id": TINY,
            "scheduler": DDPMScheduler.from_config(parts.scheduler.config)}


def _folder_family(folder: Path) -> str:
    return "sdxl" if (folder / "text_encoder_2").is_dir() else "sd15"


def _load_folder(folder: Path, family: str, dtype: torch.dtype, with_canny: bool, store) -> dict:
    """A diffusers folder, files only. Its canny ControlNet: ``controlnet-canny/`` or registry."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDPMScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    check_family(folder, _folder_family(folder), family == "sdxl")
    local = {"local_files_only": True}
    parts = {"unet": UNet2DConditionModel.from_pretrained(folder, subfolder="unet",
                                                          torch_dtype=dtype, **local),
             "vae": AutoencoderKL.from_pretrained(folder, subfolder="vae", **local),
             "scheduler": DDPMScheduler.from_pretrained(folder, subfolder="scheduler", **local)}
    subs = [("", CLIPTextModel)] + ([("_2", CLIPTextModelWithProjection)]
                                    if family == "sdxl" else [])
    parts["text_encoders"] = [cls.from_pretrained(folder, subfolder=f"text_encoder{s}",
                                                  dtype=dtype, **local) for s, cls in subs]
    parts["tokenizers"] = [CLIPTokenizer.from_pretrained(folder, subfolder=f"tokenizer{s}", **local)
                           for s, _ in subs]
    canny_folder = folder / "controlnet-canny"
    if not with_canny:
        parts["canny"] = None
    elif (canny_folder / "config.json").is_file():
        parts["canny"] = ControlNetModel.from_pretrained(canny_folder, torch_dtype=dtype, **local)
    else:
        parts["canny"] = _registry_canny(family, dtype, store)
    weights = sorted(p for sub in HASHED_SUBFOLDERS if (folder / sub).is_dir()
                     for p in (folder / sub).iterdir() if p.suffix in (".safetensors", ".bin"))
    parts["base_id"] = sha256_prefix(weights or [folder / "model_index.json"])
    return parts


def _registry_canny(family: str, dtype: torch.dtype, store):
    """The registry's canny ControlNet of ``family`` (:class:`ModelUnavailable` if missing)."""
    return controlnet_from_file(store.require(CANNY_ROLES[family]), family, dtype)


def _load_file(path: Path, family: str, dtype: torch.dtype, with_canny: bool, store) -> dict:
    """A single-file ``.safetensors`` checkpoint (header checked before anything is loaded)."""
    from diffusers import DDPMScheduler

    from .clip_tokenizer import clip_tokenizers
    from .single_file import configs_for

    refuse_pickle(path)
    header = read_safetensors_header(path)
    check_family(path, checkpoint_family(path, header), family == "sdxl")
    count = 2 if family == "sdxl" else 1
    tokenizers = clip_tokenizers(count, store)  # before the slow part: fail fast
    vae_role = VAE_ROLES[family]
    vae_path = store.path(vae_role) if store.is_present(vae_role) else None
    unet, vae, encoders = load_single_file(path, family, dtype, vae_path)
    return {"unet": unet, "vae": vae, "text_encoders": encoders, "tokenizers": tokenizers,
            "scheduler": DDPMScheduler.from_pretrained(configs_for(family), subfolder="scheduler"),
            "canny": _registry_canny(family, dtype, store) if with_canny else None,
            "base_id": sha256_prefix([path])}


def _vae_dtype(vae, family: str, dtype: torch.dtype, device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.float32
    if family == "sdxl" and dtype == torch.float16 and vae.config.get("force_upcast", True):
        return torch.float32
    return dtype


def frozen_module(module, device: torch.device, dtype: torch.dtype):
    """Freeze ``module`` and move it (dtype only when it differs: diffusers warns on casts)."""
    module.requires_grad_(False)
    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype=dtype)
    return module.eval()


def load_components(base_model: str, sdxl: bool, models_dir=None, device=None, dtype=None,
                    with_canny: bool = True, *, mixed_precision: Optional[str] = None,
                    store=None, seed: int = 0) -> TrainComponents:
    """Load the base model's UNet, VAE, text encoder(s), tokenizer(s), training noise scheduler
    and (``with_canny``) canny ControlNet, frozen, on ``device``.

    ``dtype``: weight dtype; default ``weight_dtype(mixed_precision)`` when that is given
    (``TrainRequest.mixed_precision``), else fp32 on CPU and fp16 on CUDA. Training autocasts
    to this dtype.
    ``store``: a :class:`~easyphoto.weights.ModelStore` (default: one on ``models_dir``).
    ``seed``: weights of the tiny preset. Raises :class:`ModelUnavailable` (missing model or
    tokenizer) or :class:`~easyphoto.train.single_file.CheckpointError` (unusable file).
    """
    started = time.monotonic()
    family = "sdxl" if sdxl else "sd15"
    device = resolve_device(device)
    if dtype is None:
        dtype = weight_dtype(mixed_precision or "fp16", device)
    if base_model.strip() == TINY:
        parts = _load_tiny(family, seed, with_canny)
    else:
        store = _store(models_dir, store)
        path = _resolve_base(base_model, family, store)
        if path.is_dir():
            if not (path / "model_index.json").is_file():
                raise CheckpointError(f"{path} is a folder without model_index.json: not a "
                                      "diffusers model folder.")
            parts = _load_folder(path, family, dtype, with_canny, store)
        else:
            parts = _load_file(path, family, dtype, with_canny, store)
    vae_dtype = _vae_dtype(parts["vae"], family, dtype, device)
    canny = parts["canny"]
    components = TrainComponents(
        family=family, unet=frozen_module(parts["unet"], device, dtype),
        vae=frozen_module(parts["vae"], device, vae_dtype),
        text_encoders=[frozen_module(te, device, dtype) for te in parts["text_encoders"]],
        tokenizers=list(parts["tokenizers"]), noise_scheduler=parts["scheduler"], device=device,
        dtype=dtype, base_id=parts["base_id"],
        canny_controlnet=frozen_module(canny, device, dtype) if canny is not None else None)
    if base_model.strip() == TINY:
        components.notes.append("tiny-random preset: random weights, produces noise")
    logger.info("loaded %s %s on %s (%s, VAE %s) in %.1f s", FAMILY_NAMES[family],
                base_model or DEFAULT_ROLES[family], device, dtype, vae_dtype,
                time.monotonic() - started)
    return components
