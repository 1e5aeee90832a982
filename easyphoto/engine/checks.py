"""Input checks of the diffusion engines: control units, generation settings, inpaint arrays."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..errors import InvalidRequest
from .base import CONTROL_KINDS, ControlUnit, Generation, check_image_mask
from .samplers import check_sampler

#: Most ControlNet units one call may carry (MultiControlNet).
MAX_CONTROL_UNITS = 4


def finite(value, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{what} must be a number, got {value!r}.") from None
    if not (math.isfinite(number) and low <= number <= high):
        raise InvalidRequest(f"{what} must be a finite number in [{low}, {high}], got {value!r}.")
    return number


def check_units(controls: Sequence[ControlUnit], kinds: Sequence[str] = CONTROL_KINDS) -> None:
    """Each unit: a known ``kind`` (of ``kinds``), an (H, W, 3) uint8 image, weight ≥ 0,
    0 ≤ start ≤ end ≤ 1; at most :data:`MAX_CONTROL_UNITS` units."""
    if len(controls) > MAX_CONTROL_UNITS:
        raise InvalidRequest(f"{len(controls)} ControlNet units; at most {MAX_CONTROL_UNITS}.")
    for unit in controls:
        kind = getattr(unit, "kind", None)
        if kind not in kinds:
            raise InvalidRequest(f"unknown control kind {kind!r}; one of {tuple(kinds)}.")
        image = getattr(unit, "image", None)
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            shape = getattr(image, "shape", None)
            raise InvalidRequest(f"control {kind}: image must be (H, W, 3) uint8, got {shape} "
                                 f"{getattr(image, 'dtype', type(image).__name__)}.")
        finite(unit.weight, f"control {kind} weight", 0.0)
        start = finite(unit.start, f"control {kind} start")
        end = finite(unit.end, f"control {kind} end")
        if not 0.0 <= start <= end <= 1.0:
            raise InvalidRequest(f"control {kind}: need 0 ≤ start ≤ end ≤ 1, got {start}, "
                                 f"{end}.")


def integer(value, what: str, low: int, high: int = 2 ** 64 - 1) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or not low <= value <= high:
        raise InvalidRequest(f"{what} must be an integer in [{low}, {high}], got {value!r}.")
    return int(value)


def check_generation(generation: Generation) -> None:
    """Steps ≥ 1 (integer), cfg ≥ 0, a known sampler, an integer seed, string prompts."""
    if not isinstance(generation.prompt, str) or not isinstance(generation.negative_prompt, str):
        raise InvalidRequest("prompt and negative prompt must be strings.")
    integer(generation.steps, "steps", 1)
    finite(generation.cfg, "CFG scale", 0.0)
    check_sampler(generation.sampler)
    integer(generation.seed, "seed (negative = random)", -(2 ** 63))


def inpaint_mask(image: np.ndarray, mask: np.ndarray, generation: Generation) -> np.ndarray:
    """Validate an inpaint call's arrays; the mask as (H, W) uint8 (a bool mask → 0/255)."""
    if not isinstance(image, np.ndarray) or not isinstance(mask, np.ndarray):
        raise InvalidRequest("image and mask must be numpy arrays.")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise InvalidRequest(f"mask must be (H, W) uint8 (255 = repaint), got {mask.shape} "
                             f"{mask.dtype}.")
    check_units(generation.controls)
    try:
        check_image_mask(image, mask, generation.controls)
    except ValueError as error:
        raise InvalidRequest(str(error)) from error
    check_generation(generation)
    return mask


def active_units(controls: Sequence[ControlUnit]) -> list:
    """The units that act: weight > 0 and a non-empty [start, end) window (the others add
    exactly zero to the UNet's residuals, so dropping them changes no output bit)."""
    return [unit for unit in controls if unit.weight > 0 and unit.end > unit.start]
