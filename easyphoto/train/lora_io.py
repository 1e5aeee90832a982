"""LoRA files: peft state dicts ↔ kohya-named safetensors, and checkpoint fusion (SPEC 1.3–1.4).

File format (what the WebUI's built-in Lora, ComfyUI and diffusers ``load_lora_weights`` read)::

    lora_unet_<diffusers module path, "." → "_">.lora_down.weight   (rank, in[, 1, 1])
    lora_unet_<...>.lora_up.weight                                  (out, rank[, 1, 1])
    lora_unet_<...>.alpha                                           () scalar, float32
    lora_te_<CLIP module path>...     SD1.5 text encoder
    lora_te1_<...> / lora_te2_<...>   SDXL text encoders 1 and 2

UNet names use the diffusers module tree (``down_blocks_0_attentions_0_...``), which all three
loaders accept for SD1.5 and SDXL. Text-encoder names always start ``text_model_`` (the
transformers 4 layout the hosts use), whatever the installed transformers does.

In memory ("peft style") a state maps ``<module path>.lora_A.weight`` (= lora_down) and
``<module path>.lora_B.weight`` (= lora_up) to tensors, as ``peft.get_peft_model_state_dict``
returns them; a ``base_model.model.`` prefix is accepted and dropped. The effective update of a
module is ``(alpha / rank) · up @ down``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import torch

from easyphoto import __version__
from easyphoto.errors import InvalidRequest

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
StateDict = Mapping[str, torch.Tensor]

UNET_PREFIX = "lora_unet"
TE_PREFIXES = MappingProxyType({"sd15": ("lora_te",), "sdxl": ("lora_te1", "lora_te2")})
BASE_MODEL_VERSION = MappingProxyType({"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"})
TEXT_MODEL = "text_model."
_PEFT_TO_KOHYA = MappingProxyType({"lora_A": "lora_down", "lora_B": "lora_up"})
_KOHYA_TO_PEFT = MappingProxyType({v: k for k, v in _PEFT_TO_KOHYA.items()})
#: Module-name segments that contain "_" (so a kohya name can be split back unambiguously).
_COMPOUND_SEGMENTS = frozenset({
    "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v",
    "to_out", "proj_in", "proj_out", "conv_in", "conv_out", "conv_shortcut", "time_emb_proj",
    "time_embedding", "linear_1", "linear_2", "add_embedding", "text_model", "self_attn",
    "q_proj", "k_proj", "v_proj", "out_proj", "final_layer_norm", "text_projection"})
_RESERVED_METADATA = frozenset({"lora_adapter_metadata", "format"})
_KOHYA_KEY = re.compile(r"^(lora_unet|lora_te1|lora_te2|lora_te)_(.+)\.(lora_down\.weight|"
                        r"lora_up\.weight|alpha)$")


class LoraFileError(InvalidRequest):
    """A LoRA file is missing, unreadable, or not in the kohya layout this module writes."""


@dataclass(frozen=True)
class LoraTargets:
    """peft ``target_modules`` (module-name suffixes) for the UNet and the text encoder(s)."""

    unet: tuple[str, ...]
    text_encoder: tuple[str, ...]


class KohyaLora(NamedTuple):
    """A loaded LoRA file: peft-style states, rank, alpha and the file's string metadata.

    ``text_encoders`` has one state for SD1.5 and two (te1, te2) for SDXL; text-encoder keys
    start with ``text_model.`` (see :func:`state_for_model`).
    """

    unet: dict
    text_encoders: list
    rank: int
    alpha: float
    metadata: dict


def lora_target_modules(family: str) -> LoraTargets:
    """SPEC 1.3 targets: UNet attention + feed-forward + proj in/out; CLIP attention + MLP."""
    _check_family(family)
    return LoraTargets(
        unet=("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
              "proj_in", "proj_out"),
        text_encoder=("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"))


def _check_family(family: str) -> None:
    if family not in TE_PREFIXES:
        raise InvalidRequest(f"Unknown model family {family!r}: use one of {sorted(TE_PREFIXES)}.")


def kohya_name(prefix: str, module_path: str) -> str:
    """``("lora_unet", "mid_block.attentions.0.proj_in")`` →
    ``lora_unet_mid_block_attentions_0_proj_in`` (checked to map back to the same path)."""
    name = f"{prefix}_{module_path.replace('.', '_')}"
    if module_path_from_kohya(name, prefix) != module_path:
        raise InvalidRequest(f"The module path {module_path!r} has a segment with '_' that a kohya "
                             "name cannot encode unambiguously; add it to _COMPOUND_SEGMENTS.")
    return name


def module_path_from_kohya(name: str, prefix: str) -> str:
    """Inverse of :func:`kohya_name`: rejoin '_'-split parts into known compound segments."""
    parts = name[len(prefix) + 1:].split("_")
    segments, i = [], 0
    while i < len(parts):
        for width in (3, 2, 1):
            candidate = "_".join(parts[i:i + width])
            if width == 1 or (i + width <= len(parts) and candidate in _COMPOUND_SEGMENTS):
                segments.append(candidate)
                i += width
                break
    return ".".join(segments)


def _normalise_peft_key(key: str, text_encoder: bool) -> tuple[str, str]:
    """``base_model.model.<m>.lora_A.weight`` → (``<m>``, ``"lora_A"``).

    Text-encoder paths get a leading ``text_model.`` when they lack it (transformers ≥ 5)."""
    key = key.removeprefix("base_model.model.")
    module, dot, rest = key.rpartition(".lora_")
    if not dot or rest not in ("A.weight", "B.weight"):
        raise InvalidRequest(f"Unsupported LoRA key {key!r}: only lora_A/lora_B weights are saved "
                             "(no DoRA, no LoRA bias).")
    if text_encoder and not module.startswith(TEXT_MODEL):
        module = TEXT_MODEL + module
    return module, "lora_" + rest[0]


def _to_kohya(state: StateDict, prefix: str, rank: int, text_encoder: bool) -> dict:
    """peft state → kohya tensors (without alphas). Checks pairs and rank: down (rank, in...)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        module, part = _normalise_peft_key(key, text_encoder)
        if part == "lora_A" and tensor.shape[0] != rank:
            raise InvalidRequest(f"{key} has rank {tensor.shape[0]}, expected {rank}.")
        kohya_key = f"{kohya_name(prefix, module)}.{_PEFT_TO_KOHYA[part]}.weight"
        if kohya_key in out:
            raise InvalidRequest(f"Two LoRA keys map to {kohya_key}.")
        out[kohya_key] = tensor.detach()
    for key in out:
        partner = key.replace(".lora_down.", ".lora_up.") if ".lora_down." in key else \
            key.replace(".lora_up.", ".lora_down.")
        if partner not in out:
            raise InvalidRequest(f"LoRA key {key} has no matching {partner}.")
    return out


def save_kohya_lora(path: PathLike, unet_lora_state: Optional[StateDict],
                    te_lora_states: Sequence[Optional[StateDict]], rank: int, alpha: float,
                    metadata: Optional[Mapping[str, object]] = None, family: str = "sd15") -> Path:
    """Write peft-style LoRA states as one kohya-named safetensors file (atomically).

    ``te_lora_states``: ``[]`` or ``[te]`` for SD1.5, ``[]`` or ``[te1, te2]`` for SDXL (an entry
    may be ``None``/empty). Every module gets an ``.alpha`` scalar = ``alpha``. ``metadata`` is
    added as strings (non-strings JSON-encoded) next to ``ss_network_module``, ``ss_network_dim``,
    ``ss_network_alpha``, ``ss_base_model_version`` and ``easyphoto_version``. Returns ``path``.
    """
    tensors = {key: tensor.to("cpu").contiguous() for key, tensor in
               kohya_tensors(unet_lora_state, te_lora_states, rank, alpha, family).items()}
    meta = _build_metadata(family, int(rank), alpha, metadata or {})
    _write_safetensors(path, tensors, meta)
    logger.info("saved LoRA %s: %d modules, rank %d, alpha %s", path,
                sum(k.endswith(".alpha") for k in tensors), rank, alpha)
    return Path(path)


def kohya_tensors(unet_lora_state: Optional[StateDict],
                  te_lora_states: Sequence[Optional[StateDict]], rank: int, alpha: float,
                  family: str = "sd15") -> dict:
    """The tensors :func:`save_kohya_lora` writes (kohya keys, an ``.alpha`` per module), on
    the states' own device."""
    _check_family(family)
    prefixes = TE_PREFIXES[family]
    if len(te_lora_states) not in (0, len(prefixes)):
        raise InvalidRequest(f"{family} has {len(prefixes)} text encoder(s); got "
                             f"{len(te_lora_states)} text-encoder LoRA states.")
    if int(rank) != rank or rank < 1 or not (math.isfinite(alpha) and alpha > 0):
        raise InvalidRequest(f"LoRA rank must be a positive integer and alpha positive; got "
                             f"rank={rank!r}, alpha={alpha!r}.")
    tensors = _to_kohya(unet_lora_state or {}, UNET_PREFIX, rank, text_encoder=False)
    for prefix, state in zip(prefixes, te_lora_states):
        tensors.update(_to_kohya(state or {}, prefix, rank, text_encoder=True))
    if not tensors:
        raise InvalidRequest("There are no LoRA weights to save.")
    for key in [k for k in tensors if k.endswith(".lora_down.weight")]:
        tensors[key.removesuffix("lora_down.weight") + "alpha"] = torch.tensor(float(alpha))
    return tensors


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _build_metadata(family: str, rank: int, alpha: float,
                    extra: Mapping[str, object]) -> dict[str, str]:
    """String metadata: ours plus the caller's (which may not contradict ours)."""
    ours = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank),
            "ss_network_alpha": _number(alpha), "ss_base_model_version": BASE_MODEL_VERSION[family],
            "easyphoto_version": __version__}
    meta = {}
    for key, value in extra.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        if key in _RESERVED_METADATA or (key in ours and ours[key] != text):
            raise InvalidRequest(f"Metadata key {key!r} is reserved (value {text!r}).")
        meta[str(key)] = text
    meta.update(ours)
    return meta


def _write_safetensors(path: PathLike, tensors: Mapping[str, torch.Tensor],
                       metadata: Mapping[str, str]) -> None:
    from safetensors.torch import save

    from easyphoto.store import atomic_write_bytes

    atomic_write_bytes(path, save(dict(tensors), metadata=dict(metadata)))


def read_kohya_file(path: PathLike) -> tuple[dict, dict]:
    """(kohya tensors, string metadata) of a LoRA file; :class:`LoraFileError` if unusable."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"LoRA file {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise LoraFileError(f"LoRA file {path} is not a readable safetensors file: "
                            f"{error}") from None
    bad = [key for key in tensors if not _KOHYA_KEY.match(key)]
    if bad or not tensors:
        raise LoraFileError(f"LoRA file {path} is not in kohya format (unexpected keys such as "
                            f"{bad[:3]}).")
    return tensors, metadata


def read_kohya_metadata(path: PathLike) -> dict:
    """The string metadata of a safetensors LoRA file, without reading its tensors."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise LoraFileError(f"LoRA file {path} is not a readable safetensors file: "
                            f"{error}") from None


def _file_family(path: PathLike, tensors: StateDict, metadata: Mapping[str, str]) -> str:
    """'sdxl' or 'sd15' from ``ss_base_model_version`` or, failing that, from the key prefixes."""
    version = metadata.get("ss_base_model_version", "")
    sdxl_keys = any(k.startswith(("lora_te1_", "lora_te2_")) for k in tensors)
    family = "sdxl" if version.startswith("sdxl") or (not version and sdxl_keys) else "sd15"
    if sdxl_keys != (family == "sdxl") and any(k.startswith("lora_te") for k in tensors):
        raise LoraFileError(f"LoRA file {path}: text-encoder keys do not match its base model "
                            f"version {version!r}.")
    return family


def load_kohya_lora(path: PathLike) -> KohyaLora:
    """Inverse of :func:`save_kohya_lora`: kohya file → peft-style states, rank, alpha, metadata.

    Rank and alpha must be the same for every module (else :class:`LoraFileError`); a file
    without ``.alpha`` tensors has alpha = rank (kohya's convention).
    """
    tensors, metadata = read_kohya_file(path)
    family = _file_family(path, tensors, metadata)
    prefixes = (UNET_PREFIX,) + TE_PREFIXES[family]
    states: dict[str, dict] = {prefix: {} for prefix in prefixes}
    ranks, alphas = set(), set()
    for key, tensor in tensors.items():
        prefix, _, kind = _KOHYA_KEY.match(key).groups()
        if prefix not in states:
            raise LoraFileError(f"LoRA file {path}: key {key} does not belong to a {family} model.")
        name = key.split(".", 1)[0]
        if kind == "alpha":
            alphas.add(float(tensor))
            continue
        part = _KOHYA_TO_PEFT[kind.split(".")[0]]
        states[prefix][f"{module_path_from_kohya(name, prefix)}.{part}.weight"] = tensor
        if part == "lora_A":
            ranks.add(int(tensor.shape[0]))
    if len(ranks) != 1 or len(alphas) > 1:
        raise LoraFileError(f"LoRA file {path} mixes ranks {sorted(ranks)} or alphas "
                            f"{sorted(alphas)}; one rank and one alpha are supported.")
    rank = ranks.pop()
    alpha = alphas.pop() if alphas else float(rank)
    return KohyaLora(states[UNET_PREFIX], [states[p] for p in prefixes[1:]], rank, alpha, metadata)


def state_for_model(state: StateDict, model: torch.nn.Module) -> dict:
    """Fit a text-encoder state's ``text_model.`` prefix to ``model``'s module tree.

    transformers ≥ 5 flattens ``CLIPTextModel`` (no ``text_model`` submodule): the prefix is
    dropped there, kept otherwise. UNet states pass through unchanged.
    """
    if hasattr(model, "text_model"):
        return dict(state)
    return {key.removeprefix(TEXT_MODEL): value for key, value in state.items()}


def _check_weights(weights: Sequence[float]) -> None:
    if not weights:
        raise InvalidRequest("LoRA fusion needs at least one checkpoint.")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise InvalidRequest(f"LoRA fusion weights must be finite and ≥ 0; got {list(weights)}.")
    if abs(math.fsum(weights) - 1.0) > 1e-6:
        raise InvalidRequest(f"LoRA fusion weights must sum to 1; they sum to "
                             f"{math.fsum(weights):.6g} ({list(weights)}).")


def _accumulate(total: dict, reference: dict, path: PathLike, tensors: StateDict,
                weight: float) -> None:
    """Add ``weight × tensors`` (float32) into ``total``; alphas must equal ``reference``'s."""
    if set(tensors) != set(reference):
        diff = sorted(set(tensors) ^ set(reference))
        raise InvalidRequest(f"LoRA checkpoint {path} has different modules from the first "
                             f"one (e.g. {diff[:3]}); all checkpoints must come from one run.")
    for key, tensor in tensors.items():
        if key.endswith(".alpha"):
            if not torch.equal(tensor, reference[key]):
                raise InvalidRequest(f"LoRA checkpoint {path} has alpha {float(tensor)} for {key} "
                                     f"but the first checkpoint has {float(reference[key])}; "
                                     "checkpoints with different alphas cannot be averaged.")
        elif tensor.shape != reference[key].shape:
            raise InvalidRequest(f"LoRA checkpoint {path}: {key} has shape {tuple(tensor.shape)},"
                                 f" the first checkpoint {tuple(reference[key].shape)}.")
        elif key in total:  # in place: no temporaries (a fused run sums ~10 × 150 MB)
            total[key].add_(tensor, alpha=weight)
        else:
            total[key] = tensor.to(torch.float32, copy=True).mul_(weight)


def weighted_average(paths_and_weights: Iterable[tuple[PathLike, float]],
                     in_memory: Optional[Mapping[Path, dict]] = None) -> dict:
    """SPEC 1.4 fusion: Σ wᵢ·checkpointᵢ, ``lora_up`` and ``lora_down`` averaged separately.

    (This is the reference's arithmetic; it is not the average of the products up @ down.)
    Weights must be ≥ 0 and sum to 1; ``.alpha`` must be equal across inputs and is kept.
    Sums run in float32, results take the first file's dtypes (on the CPU). Files are read
    one at a time; ``in_memory`` (path → the file's tensors, e.g. on the GPU, as
    :func:`kohya_tensors` makes them) spares reading those files.
    """
    items = [(Path(p), float(w)) for p, w in paths_and_weights]
    _check_weights([w for _, w in items])
    in_memory = in_memory or {}
    reference: dict = {}
    total: dict = {}
    for path, weight in items:
        tensors = in_memory[path] if path in in_memory else read_kohya_file(path)[0]
        reference = reference or tensors
        _accumulate(total, reference, path, tensors, weight)
    fused = {key: value.to(reference[key].dtype).cpu() for key, value in total.items()}
    fused.update({key: value for key, value in reference.items() if key.endswith(".alpha")})
    return fused


def fuse_checkpoints(paths: Sequence[PathLike], weights: Sequence[float],
                     out_path: PathLike, in_memory: Optional[Mapping[Path, dict]] = None) -> Path:
    """Write the weighted average of LoRA checkpoints (kohya keys + metadata) to ``out_path``.

    Metadata comes from the first file, plus ``easyphoto_fused_from`` (JSON list of
    ``{"file", "weight"}``); all inputs must share ``ss_base_model_version``. Same path twice =
    its weights add up (SPEC 1.4: a checkpoint chosen k times of 10 weighs k/10).
    ``in_memory``: see :func:`weighted_average` (the files' metadata is still read).
    """
    if len(paths) != len(weights):
        raise InvalidRequest(f"{len(paths)} LoRA checkpoints but {len(weights)} weights.")
    _check_weights([float(w) for w in weights])
    metas = [read_kohya_metadata(p) for p in dict.fromkeys(Path(p) for p in paths)]
    versions = {m.get("ss_base_model_version", "") for m in metas}
    if len(versions) > 1:
        raise InvalidRequest(f"LoRA checkpoints for different base models cannot be fused: "
                             f"{sorted(versions)}.")
    fused = weighted_average(zip(paths, weights), in_memory)
    meta = dict(metas[0], easyphoto_version=__version__, easyphoto_fused_from=json.dumps(
        [{"file": Path(p).name, "weight": float(w)} for p, w in zip(paths, weights)]))
    _write_safetensors(out_path, fused, meta)
    logger.info("fused %d LoRA checkpoints into %s", len(paths), out_path)
    return Path(out_path)
