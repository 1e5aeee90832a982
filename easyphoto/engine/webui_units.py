"""Host-independent pieces of the WebUI adapter: no ``modules.*`` import here.

Everything in this module is a pure function (or a frozen record) that receives what it needs
from the host as arguments — ControlNet's ``ControlNetUnit`` class, the host's scheduler labels,
a version string — so it can be tested without a WebUI and reasoned about on its own:

* version parsing (WebUI git tags, ControlNet's ``version_flag``) with :mod:`packaging.version`
  (``1.2.0`` is newer than ``1.1.455``; no per-component comparisons);
* sampler names: our combined names (``"DPM++ 2M SDE Karras"``) split into sampler + scheduler
  for WebUI 1.9+ (:func:`split_sampler`);
* ControlNet units for the three API generations (A1111 ControlNet dataclass v1.1.416–447,
  pydantic v1.1.448+, Forge's ``lib_controlnet`` dataclass): keyword arguments filtered to the
  fields the class declares, ``enabled=True`` always explicit, ``resize_mode`` as the string
  ``"Just Resize"`` (:func:`build_unit`), and the full-length ``script_args`` list with the units
  in ControlNet's ``args_from:args_to`` slice (:func:`script_args_for`);
* model names ``"<stem> [<hash>]"`` (:func:`match_model_name`);
* checkpoint family from a safetensors header, never loading tensors (:func:`checkpoint_family`);
* LoRA names and prompt tags (:func:`stable_lora_stem`, :func:`with_lora_tags`);
* ``--api-auth`` credentials (:func:`parse_api_auth`).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from packaging.version import InvalidVersion, Version

from ..errors import EasyPhotoError, InvalidRequest

#: The oldest sd-webui-controlnet whose ``external_code.ControlNetUnit`` takes every field we set.
MIN_CONTROLNET = Version("1.1.200")
#: Before this ControlNet version the unit-count setting was ``control_net_max_models_num``.
UNIT_COUNT_KEY_FROM = Version("1.1.400")
#: From this version ControlNet writes one ``ControlNet <i>`` infotext entry per unit it applied.
INFOTEXT_FROM = Version("1.1.300")
FORGE, SD_WEBUI_CONTROLNET = "forge", "sd-webui-controlnet"
#: Fields every unit class must declare (the rest are set only where declared).
REQUIRED_UNIT_FIELDS = frozenset({"enabled", "module", "model", "weight", "image", "resize_mode",
                                  "guidance_start", "guidance_end"})
RESIZE_MODE = "Just Resize"
#: ControlNet weight range (the pydantic unit rejects anything outside it).
MAX_UNIT_WEIGHT = 2.0
#: Family names returned by :func:`checkpoint_family`.
SD15, SD2, SDXL, SDXL_REFINER, UNKNOWN = "sd15", "sd2", "sdxl", "sdxl_refiner", "unknown"
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{6,}\]\s*$")
_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?")
_CROSS_ATTN_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_CONTEXT_DIMS = {768: SD15, 1024: SD2, 2048: SDXL}


class ControlNetError(EasyPhotoError):
    """ControlNet is missing, too old, mis-configured or refused a unit."""

    http_status = 503


# ---- versions ------------------------------------------------------------------------------
def parse_webui_version(tag: str | None) -> Version | None:
    """The A1111 version in a ``git_tag()`` string: ``"v1.10.1"`` → 1.10.1, ``"v1.6.0-2-gabc"``
    → 1.6.0, ``"1.6.0"`` (CHANGELOG fallback) → 1.6.0, Forge's ``"f2.0.1v1.10.1-…"`` → 1.10.1;
    ``None`` when there is none (``"<none>"``, a bare commit hash)."""
    text = (tag or "").strip()
    if text[:1] in ("f", "F") and "v" in text[1:]:
        text = text[text.index("v", 1):]
    match = _VERSION.match(text)
    if not match:
        return None
    major, minor, patch = match.groups()
    return Version(f"{major}.{minor}.{patch or 0}")


def parse_controlnet_version(flag: str | None) -> Version | None:
    """ControlNet's ``version_flag`` (``"v1.1.455"``) as a Version; ``None`` if unparseable."""
    match = re.search(r"\d+(?:\.\d+)+", flag or "")
    try:
        return Version(match.group(0)) if match else None
    except InvalidVersion:
        return None


# ---- samplers ------------------------------------------------------------------------------
def split_sampler(name: str, scheduler_labels: Sequence[str]) -> tuple[str, str | None]:
    """``(sampler, scheduler)`` for a combined name on a host with separate schedulers (1.9+):
    ``"DPM++ 2M SDE Karras"`` → ``("DPM++ 2M SDE", "Karras")``, ``"Euler a"`` →
    ``("Euler a", "Automatic")``. Without ``scheduler_labels`` (≤ 1.8): ``(name, None)``."""
    if not scheduler_labels:
        return name, None
    for label in sorted(scheduler_labels, key=len, reverse=True):
        suffix = " " + label
        if label.lower() != "automatic" and name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], label
    automatic = next((label for label in scheduler_labels if label.lower() == "automatic"), None)
    return name, automatic


# ---- ControlNet units ----------------------------------------------------------------------
@dataclass(frozen=True)
class ControlNetApi:
    """ControlNet as found in the running host: its ``external_code`` module, ``global_state``
    (Forge), its script object (the one in the img2img/txt2img runner), flavour and version."""

    external_code: Any
    script: Any
    flavour: str = SD_WEBUI_CONTROLNET
    version: Version | None = None
    global_state: Any = None

    @property
    def unit_class(self) -> Any:
        return self.external_code.ControlNetUnit

    @property
    def none_module(self) -> str:
        """The "no preprocessor" module name: ``"none"``; Forge: ``"None"``."""
        return "None" if self.flavour == FORGE else "none"

    @property
    def unit_count_setting(self) -> tuple[str, str]:
        """``(settings key, label)`` of the "how many units" option of this version."""
        if self.flavour != FORGE and self.version is not None \
                and self.version < UNIT_COUNT_KEY_FROM:
            return "control_net_max_models_num", "Multi ControlNet: Max models amount"
        return "control_net_unit_count", "Multi-ControlNet: ControlNet unit number"

    @property
    def writes_infotext(self) -> bool:
        """Whether applied units show up as ``ControlNet <i>`` generation parameters."""
        return self.flavour == FORGE or self.version is None or self.version >= INFOTEXT_FROM

    def model_names(self, refresh: bool = False) -> list[str]:
        """Every model name ControlNet accepts (``"<stem> [<hash>]"``), refreshed on request."""
        if self.flavour == FORGE:
            state = self.global_state
            if refresh and hasattr(state, "update_controlnet_filenames"):
                state.update_controlnet_filenames()
            return list(state.get_all_controlnet_names())
        return list(self.external_code.get_models(update=refresh))


def unit_fields(unit_class: Any) -> frozenset[str]:
    """The keyword names ``unit_class`` accepts: dataclass fields, pydantic fields (v1
    ``__fields__`` / v2 ``model_fields``) or, for a plain class, its ``__init__`` parameters."""
    if dataclasses.is_dataclass(unit_class):
        return frozenset(f.name for f in dataclasses.fields(unit_class) if f.init)
    fields = getattr(unit_class, "model_fields", None) or getattr(unit_class, "__fields__", None)
    if isinstance(fields, dict) and fields:
        return frozenset(fields)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(name for name, p in inspect.signature(unit_class).parameters.items()
                     if p.kind in kinds)


def check_unit_class(api: ControlNetApi) -> frozenset[str]:
    """The unit class's fields; :class:`ControlNetError` when the version is too old."""
    fields = unit_fields(api.unit_class)
    missing = REQUIRED_UNIT_FIELDS - fields
    old = api.flavour != FORGE and api.version is not None and api.version < MIN_CONTROLNET
    if missing or old:
        found = f"v{api.version}" if api.version else "this version"
        raise ControlNetError(
            f"The installed ControlNet extension ({found}) is too old for EasyPhoto (its units "
            f"lack {', '.join(sorted(missing)) or 'the current API'}): update sd-webui-controlnet "
            f"to v{MIN_CONTROLNET} or newer (Extensions → Check for updates) and restart.")
    return fields


def build_unit(api: ControlNetApi, *, kind: str, model: str, image: np.ndarray, weight: float,
               start: float, end: float) -> Any:
    """One enabled unit with a prepared control ``image`` ((H, W, 3) uint8, no preprocessor).

    Only fields the class declares are passed (the dataclass generations raise TypeError on
    unknown ones); ``enabled`` is explicit (the pydantic generation defaults it to False).
    A unit the class rejects (pydantic validation) becomes :class:`ControlNetError`."""
    if not 0.0 <= float(weight) <= MAX_UNIT_WEIGHT:
        raise InvalidRequest(f"control {kind}: ControlNet weights must be in [0, "
                             f"{MAX_UNIT_WEIGHT:g}], got {weight}.")
    fields = check_unit_class(api)
    values = {"enabled": True, "module": api.none_module, "model": model,
              "weight": float(weight), "image": np.ascontiguousarray(image),
              "resize_mode": RESIZE_MODE, "guidance_start": float(start),
              "guidance_end": float(end), "pixel_perfect": False, "low_vram": False,
              "save_detected_map": False}
    try:
        return api.unit_class(**{key: value for key, value in values.items() if key in fields})
    except (TypeError, ValueError) as error:
        raise ControlNetError(f"ControlNet refused the {kind} unit (model {model!r}): "
                              f"{error}") from error


def disabled_unit(api: ControlNetApi) -> Any:
    """A unit that does nothing, for the slots EasyPhoto does not use."""
    fields = unit_fields(api.unit_class)
    return api.unit_class(**({"enabled": False} if "enabled" in fields else {}))


def unit_slots(script: Any) -> int:
    """How many unit slots ControlNet's script arguments have (``args_to - args_from``)."""
    if not isinstance(script.args_from, int) or not isinstance(script.args_to, int):
        raise ControlNetError(
            "ControlNet's script arguments are not set up yet (the WebUI has not built its "
            "img2img/txt2img interface): open the WebUI once, or call its API once, and retry.")
    return script.args_to - script.args_from


def script_args_for(scripts: Sequence[Any], cn_script: Any, units: Sequence[Any],
                    filler: Callable[[], Any]) -> list:
    """A full-length ``script_args`` list for a runner holding ``scripts``: ``None`` in every
    other script's slots, 0 at index 0 (no selectable script), ``units`` then ``filler()`` units
    in ControlNet's ``args_from:args_to`` slice. ``len(units)`` must fit the slots."""
    slots = unit_slots(cn_script)
    if len(units) > slots:
        raise ControlNetError(f"{len(units)} ControlNet units do not fit {slots} slot(s).")
    ends = [s.args_to for s in scripts if isinstance(getattr(s, "args_to", None), int)]
    args: list = [None] * max([cn_script.args_to, *ends])
    if cn_script.args_from > 0:
        args[0] = 0
    args[cn_script.args_from:cn_script.args_to] = [*units, *(filler() for _ in
                                                             range(slots - len(units)))]
    return args


# ---- model names ---------------------------------------------------------------------------
def model_stem(name: str) -> str:
    """``"control_v11p_sd15_canny [d14c016b]"`` → ``"control_v11p_sd15_canny"``."""
    return _HASH_SUFFIX.sub("", str(name)).strip()


def match_model_name(stem: str, names: Sequence[str]) -> str | None:
    """The entry of ``names`` for file stem ``stem`` (case-insensitive, hash ignored)."""
    wanted = stem.strip().lower()
    for name in names:
        if str(name).lower() == wanted:
            return str(name)
    for name in names:
        if model_stem(name).lower() == wanted:
            return str(name)
    return None


# ---- checkpoints ---------------------------------------------------------------------------
def _family_from_metadata(metadata: Any) -> str | None:
    architecture = str((metadata or {}).get("modelspec.architecture", "")).lower()
    if "stable-diffusion-xl" in architecture:
        return SDXL_REFINER if "refiner" in architecture else SDXL
    if "stable-diffusion-v2" in architecture:
        return SD2
    if "stable-diffusion-v1" in architecture:
        return SD15
    return None


def checkpoint_family(path: Any) -> str:
    """``"sd15"``, ``"sd2"``, ``"sdxl"``, ``"sdxl_refiner"`` or ``"unknown"`` for a checkpoint
    file, from its safetensors header only (metadata ``modelspec.architecture``, then tensor
    names, then the cross-attention width): no tensor is read, pickles are never opened."""
    from ..train.single_file import read_safetensors_header

    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return UNKNOWN
    try:
        header = read_safetensors_header(path)
    except (OSError, EasyPhotoError):
        return UNKNOWN
    family = _family_from_metadata(header.get("__metadata__"))
    if family:
        return family
    prefixes = (("conditioner.embedders.1.", SDXL), ("conditioner.embedders.0.model.",
                SDXL_REFINER), ("cond_stage_model.model.", SD2),
                ("cond_stage_model.transformer.", SD15))
    for prefix, found in prefixes:
        if any(key.startswith(prefix) for key in header):
            return found
    shape = (header.get(_CROSS_ATTN_KEY) or {}).get("shape") or [0, 0]
    return _CONTEXT_DIMS.get(shape[-1], UNKNOWN)


# ---- LoRA and auth -------------------------------------------------------------------------
def stable_lora_stem(path: Any) -> str:
    """The host Lora name of a user's LoRA: ``easyphoto_<user folder>`` for
    ``…/users/<key>/lora.safetensors``, else ``easyphoto_<file stem>`` (safe characters only);
    stable across retrainings, so ``<lora:NAME:W>`` keeps working."""
    path = Path(path)
    base = path.parent.name if path.name.lower() == "lora.safetensors" else path.stem
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("._") or "user"
    return f"easyphoto_{safe}"


def with_lora_tags(prompt: str, loras: Sequence[tuple[str, float]]) -> str:
    """``prompt`` followed by ``<lora:NAME:WEIGHT>`` for each ``(name, weight)``."""
    tags = ", ".join(f"<lora:{name}:{float(weight):g}>" for name, weight in loras)
    return ", ".join(part for part in (prompt.strip().rstrip(","), tags) if part)


def parse_api_auth(text: str | None) -> list[tuple[str, str]]:
    """``--api-auth "user:pass,user2:pass2"`` → ``[("user", "pass"), ("user2", "pass2")]``
    (a password may contain ``:``); malformed entries are an :class:`InvalidRequest`."""
    pairs = []
    for entry in (text or "").split(","):
        if not entry.strip():
            continue
        user, sep, password = entry.strip().partition(":")
        if not sep or not user:
            raise InvalidRequest("--api-auth must look like user:password[,user2:password2].")
        pairs.append((user, password))
    return pairs
