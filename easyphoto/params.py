"""Request dataclasses: the one source of truth for every user-visible parameter.

``TrainRequest`` (SPEC §1) and ``InferRequest`` (SPEC §2) carry each parameter with its
reference default, its range or choices and a help text, as dataclass field metadata (see
:func:`param`). The CLI flags (``easyphoto.cli.requests``), the HTTP API models and the UI
controls are all derived from these fields; nothing else restates a default.

A value of ``None`` on a family-dependent field (``rank``, ``resolution``...) means "the
default of the chosen model family" (SD1.5 or SDXL); :meth:`TrainRequest.resolved` fills it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Mapping, Optional, Sequence

from .errors import InvalidRequest

#: Fixed training caption (SPEC 1.2 step 8, constant).
CAPTION = "easyphoto_face, easyphoto, 1person"
SAMPLERS = ("DPM++ 2M SDE Karras", "DPM++ 2M Karras", "Euler a", "Euler", "DDIM", "UniPC")
FACE_BACKENDS = ("auto", "lite", "full")
MAX_PEOPLE = 5
#: The random-weight preset for smoke tests and CI (its images are noise).
TINY_RANDOM = "tiny-random"
NO_USER = "none"


def param(default: Any = dataclasses.MISSING, help: str = "", *, min: Optional[float] = None,
          max: Optional[float] = None, choices: Optional[Sequence[Any]] = None,
          group: str = "basic", flag: Optional[str] = None, required: bool = False) -> Any:
    """A dataclass field carrying its UI/CLI/API description.

    ``min``/``max`` are inclusive bounds (numbers, or lengths for strings and lists);
    ``group`` is "basic" or "advanced" (the UI's sections); ``flag`` overrides the CLI flag
    (default: the field name in kebab-case); ``required`` fields have no default.
    """
    meta = {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None,
            "group": group, "flag": flag, "required": required}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


def _base_type(hint: Any) -> Any:
    """``Optional[int]`` → ``int``; ``list[str]`` stays ``list[str]``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Union and len(args) == 1:
        return args[0]
    return hint


def _check_value(name: str, hint: Any, meta: dict, value: Any) -> Any:
    """Coerce and range-check one value; raises InvalidRequest naming the parameter."""
    base = _base_type(hint)
    if value is None:
        if base is not hint:  # Optional
            return None
        raise InvalidRequest(f"parameter '{name}' is required")
    if typing.get_origin(base) is list:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise InvalidRequest(f"parameter '{name}' must be a list, got {type(value).__name__}")
        value = [str(v) for v in value]
        size = len(value)
    elif base is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(f"parameter '{name}' must be true or false, got {value!r}")
        size = None
    elif base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"parameter '{name}' must be a number, got {value!r}")
        if base is int and not float(value).is_integer():
            raise InvalidRequest(f"parameter '{name}' must be a whole number, got {value!r}")
        if not math.isfinite(value):
            raise InvalidRequest(f"parameter '{name}' must be finite, got {value!r}")
        value = base(value)
        size = value
    else:
        if not isinstance(value, str):
            raise InvalidRequest(f"parameter '{name}' must be text, got {type(value).__name__}")
        size = len(value)
    _check_bounds(name, meta, value, size)
    return value


def _check_bounds(name: str, meta: dict, value: Any, size: Any) -> None:
    choices, low, high = meta.get("choices"), meta.get("min"), meta.get("max")
    if choices and value not in choices:
        raise InvalidRequest(f"parameter '{name}' must be one of {', '.join(map(str, choices))}; "
                             f"got {value!r}")
    what = "length" if isinstance(value, (str, list)) else "value"
    if low is not None and size is not None and size < low:
        raise InvalidRequest(f"parameter '{name}' {what} must be ≥ {low}; got {size!r}")
    if high is not None and size is not None and size > high:
        raise InvalidRequest(f"parameter '{name}' {what} must be ≤ {high}; got {size!r}")


class _Request:
    """Shared behaviour of the request dataclasses."""

    @classmethod
    def fields_info(cls) -> list[dict]:
        """Each field's name, type, default, help, bounds, choices and group (for UI/API/CLI)."""
        hints = typing.get_type_hints(cls)
        info = []
        for f in dataclasses.fields(cls):
            default = (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            info.append({"name": f.name, "type": _base_type(hints[f.name]), "default": default,
                         "optional": _base_type(hints[f.name]) is not hints[f.name], **f.metadata})
        return info

    @classmethod
    def from_dict(cls, data: dict) -> Any:
        """Build and validate from a mapping; unknown keys are an error naming them."""
        if not isinstance(data, dict):
            raise InvalidRequest(f"expected an object of parameters, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidRequest(f"unknown parameter(s) for {cls.__name__}: {', '.join(unknown)}")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.metadata.get("required") and f.name not in data]
        if missing:
            raise InvalidRequest(f"missing required parameter(s): {', '.join(missing)}")
        request = cls(**data)
        request.validate()
        return request

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> Any:
        """Check every field (type, range, choices) and cross-field rules; returns ``self``."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = _check_value(f.name, hints[f.name], f.metadata, getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self._validate_more()
        return self

    def _validate_more(self) -> None:
        pass


def _check_user_id(user_id: str, allow_none: bool) -> None:
    from .store import validate_user_id  # store imports nothing from params: no cycle

    if allow_none and user_id.lower() == NO_USER:
        return
    validate_user_id(user_id)


@dataclass
class TrainRequest(_Request):
    """Everything a training run takes (SPEC §1). ``None`` = the model family's default."""

    user_id: str = param("", "user id to create: 1-64 of letters, digits, _ - . (not 'none')",
                         min=1, max=64, required=True)
    base_model: str = param("", "SD checkpoint: a .safetensors file, a diffusers folder, a "
                            "registry role, or 'tiny-random' (a random model for smoke tests; "
                            "produces noise). Empty = the registry's SD1.5 (SDXL) base.",
                            flag="--base")
    sdxl: bool = param(False, "train an SDXL LoRA (rank 32, 1024 px, 600 steps by default)")
    overwrite: bool = param(False, "replace an existing user id of the same name")
    face_backend: str = param("auto", "face models: full (insightface + modelscope), lite "
                              "(PyPI-shipped models), auto (full when present)", choices=FACE_BACKENDS)
    skin_retouch: bool = param(True, "retouch skin in the training crops (SPEC 1.2 step 2)")
    max_photos: int = param(15, "keep at most this many photos, best identity score first",
                            min=1, max=50, group="advanced")
    enhance_small_photos: bool = param(True, "portrait-enhance crops smaller than 512 px "
                                       "(at most half of the photos)", group="advanced")
    resolution: Optional[int] = param(None, "training resolution in px (default 512; SDXL 1024; "
                                      "tiny-random 64)", min=64, max=2048, group="advanced")
    rank: Optional[int] = param(None, "LoRA rank (default 128; SDXL 32)", min=1, max=512,
                                group="advanced")
    network_alpha: Optional[int] = param(None, "LoRA alpha (default 64; SDXL 16)", min=1, max=512,
                                         group="advanced")
    steps_per_photo: int = param(200, "training steps per kept photo", min=1, max=10000)
    max_train_steps: Optional[int] = param(None, "upper bound on steps: min(photos × "
                                           "steps-per-photo, this); default 800 (SDXL 600)",
                                           min=1, max=100000)
    train_batch_size: int = param(1, "images per micro-batch", min=1, max=64, group="advanced")
    gradient_accumulation_steps: int = param(4, "micro-batches per optimiser step", min=1, max=64,
                                             group="advanced")
    learning_rate: float = param(1e-4, "UNet learning rate", min=1e-7, max=1e-2)
    text_encoder_lr_scale: float = param(0.5, "text-encoder lr = learning rate × this",
                                         min=0.0, max=1.0, group="advanced")
    lr_scheduler: str = param("constant", "learning-rate schedule", group="advanced",
                              choices=("constant", "constant_with_warmup", "cosine", "linear"))
    adam_beta1: float = param(0.9, "AdamW β1", min=0.0, max=0.9999, group="advanced")
    adam_beta2: float = param(0.999, "AdamW β2", min=0.0, max=0.99999, group="advanced")
    adam_weight_decay: float = param(1e-2, "AdamW weight decay", min=0.0, max=1.0, group="advanced")
    adam_epsilon: float = param(1e-8, "AdamW ε", min=1e-12, max=1e-4, group="advanced")
    max_grad_norm: float = param(1.0, "gradient clipping norm", min=0.0, max=100.0, group="advanced")
    mixed_precision: str = param("fp16", "mixed precision on GPU (CPU always uses fp32)",
                                 choices=("no", "fp16", "bf16"), group="advanced")
    random_flip: bool = param(True, "random horizontal flip augmentation", group="advanced")
    seed: int = param(42, "training seed", min=0, max=2**32 - 1, group="advanced")
    validation: bool = param(True, "validate checkpoints and fuse the best ones (SPEC 1.4)")
    validation_steps: int = param(100, "save and validate a checkpoint every this many steps "
                                  "(and always at the final step)", min=1, max=100000)
    fusion_top_k: int = param(10, "fuse the checkpoints of the top-k validation renders",
                              min=1, max=100, group="advanced")
    validation_strength: float = param(0.65, "validation inpaint denoising strength",
                                       min=0.0, max=1.0, group="advanced")
    validation_sample_steps: int = param(20, "validation sampling steps", min=1, max=150,
                                         group="advanced")
    validation_cfg: float = param(9.0, "validation CFG scale", min=1.0, max=30.0, group="advanced")
    validation_canny: bool = param(True, "canny ControlNet in validation (paper; the reference "
                                   "code dropped it)", group="advanced")
    keep_checkpoints: bool = param(False, "keep every intermediate LoRA checkpoint in the user's "
                                   "folder (large: ~150 MB each at rank 128)", group="advanced")
    enable_rl: bool = param(False, "DDPO identity reinforcement after the LoRA (SPEC 1.5)",
                            group="advanced")
    rl_time_limit_hours: float = param(1.0, "DDPO time limit in hours", min=1.0, max=12.0,
                                       group="advanced")

    #: Not a field: per-family defaults of the ``None`` fields (SPEC 1.3), keyed by ``sdxl``.
    family_defaults: ClassVar[Mapping[bool, Mapping[str, int]]] = MappingProxyType({
        False: MappingProxyType({"resolution": 512, "rank": 128, "network_alpha": 64,
                                 "max_train_steps": 800}),
        True: MappingProxyType({"resolution": 1024, "rank": 32, "network_alpha": 16,
                                "max_train_steps": 600}),
    })
    #: Defaults of the ``tiny-random`` preset (64 px models whose layers are 32-64 wide).
    tiny_defaults: ClassVar[Mapping[str, int]] = MappingProxyType({
        "resolution": 64, "rank": 4, "network_alpha": 2})

    def _validate_more(self) -> None:
        _check_user_id(self.user_id, allow_none=False)
        if self.enable_rl:
            raise InvalidRequest("DDPO reinforcement (enable_rl) is not available in this version "
                                 "yet; train without it")

    def resolved(self) -> "TrainRequest":
        """A copy with family defaults filled in for every ``None`` field."""
        defaults = dict(self.family_defaults[self.sdxl])
        if self.base_model == TINY_RANDOM:
            defaults.update(self.tiny_defaults)
        filled = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **filled)

    def train_steps(self, photos_kept: int) -> int:
        """``min(photos_kept × steps_per_photo, max_train_steps)`` (SPEC 1.3; photos *kept*)."""
        limit = self.resolved().max_train_steps
        return max(1, min(photos_kept * self.steps_per_photo, limit))


@dataclass
class InferRequest(_Request):
    """Everything one inference takes (SPEC §2), except the template images themselves."""

    user_ids: list[str] = param([], "one user id per template face, left to right; 'none' leaves "
                           "that face as it is", min=1, max=MAX_PEOPLE, flag="--user-id",
                           required=True)
    base_model: str = param("", "SD1.5 checkpoint (file, diffusers folder, registry role or "
                            "'tiny-random'); empty = the registry's SD1.5 base", flag="--base")
    face_backend: str = param("auto", "face models: full, lite or auto", choices=FACE_BACKENDS)
    additional_prompt: str = param("masterpiece, beauty", "added to the positive prompt",
                                   max=2000)
    additional_negative_prompt: str = param("", "added to the negative prompt", max=2000)
    seed: int = param(-1, "seed; -1 = random per template", min=-1, max=2**32 - 1)
    batch_size: int = param(1, "images per template", min=1, max=8)
    lora_weight: float = param(0.9, "user LoRA weight", min=0.0, max=2.0)
    style_lora: str = param("", "optional style LoRA (file or registry role; the reference "
                            "uses FilmVelvia3)", group="advanced")
    style_lora_weight: float = param(0.65, "style LoRA weight", min=0.0, max=2.0, group="advanced")
    sampler: str = param("DPM++ 2M SDE Karras", "sampler", choices=SAMPLERS, group="advanced")
    cfg_scale: float = param(7.0, "CFG scale", min=1.0, max=30.0, group="advanced")
    crop_face_preprocess: bool = param(True, "work on a box×3 crop around each face (SPEC 2.3)")
    apply_face_fusion_before: bool = param(True, "face fusion before the first diffusion")
    apply_face_fusion_after: bool = param(True, "face fusion after the first diffusion")
    face_fusion_ratio_before: float = param(0.5, "face fusion ratio before", min=0.0, max=1.0)
    face_fusion_ratio_after: float = param(0.5, "face fusion ratio after", min=0.0, max=1.0)
    first_diffusion_steps: int = param(50, "first diffusion steps", min=1, max=150,
                                       group="advanced")
    first_denoising_strength: float = param(0.45, "first diffusion denoising strength",
                                            min=0.0, max=1.0, group="advanced")
    second_diffusion_steps: int = param(20, "second diffusion steps", min=1, max=150,
                                        group="advanced")
    second_denoising_strength: float = param(0.30, "second diffusion denoising strength",
                                             min=0.0, max=1.0, group="advanced")
    canny_weight: float = param(0.50, "first diffusion canny ControlNet weight", min=0.0, max=2.0,
                                group="advanced")
    openpose_weight: float = param(0.50, "first diffusion openpose ControlNet weight",
                                   min=0.0, max=2.0, group="advanced")
    color_weight: float = param(0.85, "first diffusion colour-layout ControlNet weight",
                                min=0.0, max=2.0, group="advanced")
    second_canny_weight: float = param(1.0, "second diffusion canny weight", min=0.0, max=2.0,
                                       group="advanced")
    second_tile_weight: float = param(1.0, "second diffusion tile weight", min=0.0, max=2.0,
                                      group="advanced")
    mouth_mask: bool = param(True, "second diffusion also repaints eyes and lips", group="advanced")
    color_shift_first: bool = param(True, "LAB colour shift after the first diffusion")
    color_shift_last: bool = param(True, "LAB colour shift after the second diffusion")
    background_restore: bool = param(False, "repaint everything but the faces")
    background_restore_denoising_strength: float = param(0.35, "background restore denoising",
                                                         min=0.0, max=1.0, group="advanced")
    skin_retouching: bool = param(False, "retouch the skin of the result")
    super_resolution: bool = param(True, "portrait enhancement / super-resolution of the result")
    super_resolution_ratio: float = param(0.5, "blend ratio of the enhanced image", min=0.0,
                                          max=1.0, group="advanced")
    display_score: bool = param(False, "show the face similarity per person")

    def _validate_more(self) -> None:
        for user_id in self.user_ids:
            _check_user_id(user_id, allow_none=True)
        if all(u.lower() == NO_USER for u in self.user_ids):
            raise InvalidRequest("every user id is 'none': choose at least one trained user id")

    def people(self) -> list[str]:
        """User ids with trailing 'none's dropped (they only reduce the number of people)."""
        ids = list(self.user_ids)
        while ids and ids[-1].lower() == NO_USER:
            ids.pop()
        return ids
