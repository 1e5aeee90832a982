"""The diffusion engine seam: one protocol, identical inputs for every engine (DESIGN.md).

Control images are prepared by our own code (``easyphoto.infer.controls``) so every engine
sees the same conditioning. Images are RGB ``uint8`` arrays ``(H, W, 3)``; masks ``(H, W)``
``uint8`` 0..255 (255 = repaint). ``size`` is ``(width, height)`` in pixels, multiples of 8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

#: Control kinds an engine understands (SPEC §0 ControlNets).
CONTROL_KINDS = ("canny", "openpose", "color", "tile")


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit: a prepared control ``image`` (RGB uint8, the size of the
    generation), its ``weight`` and the fraction of the sampling it acts in."""

    kind: str
    image: np.ndarray = field(repr=False)
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in CONTROL_KINDS:
            raise ValueError(f"unknown control kind {self.kind!r}; one of {CONTROL_KINDS}")
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(f"control {self.kind}: need 0 ≤ start ≤ end ≤ 1")


@dataclass(frozen=True)
class LoraRef:
    """A LoRA to apply: a file path (standalone) or a host LoRA name (WebUI), at ``weight``."""

    path: str
    weight: float = 1.0


@dataclass(frozen=True)
class Generation:
    """Sampling settings shared by inpaint and txt2img."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "DPM++ 2M SDE Karras"
    seed: int = 0
    controls: Sequence[ControlUnit] = ()
    loras: Sequence[LoraRef] = ()


@runtime_checkable
class DiffusionEngine(Protocol):
    """What the portrait pipeline needs from a diffusion backend."""

    def inpaint(self, image: np.ndarray, mask: np.ndarray, strength: float,
                generation: Generation, mask_blur: int = 8) -> np.ndarray:
        """Repaint ``mask`` of ``image`` (same size out); pixels the blurred mask does not reach
        are returned unchanged (composited back)."""

    def txt2img(self, size: tuple[int, int], generation: Generation,
                family: str = "sdxl") -> np.ndarray:
        """A new image of ``size`` (used for text→template, SPEC 2.9)."""

    def available_controls(self) -> Sequence[str]:
        """Control kinds this engine can apply right now (models present)."""

    def unload(self) -> None:
        """Release resident models."""


def check_image_mask(image: np.ndarray, mask: np.ndarray, controls: Sequence[ControlUnit]) -> None:
    """Shared input check: shapes agree, sizes are multiples of 8, dtypes are uint8."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match image {image.shape[:2]}")
    height, width = image.shape[:2]
    if width % 8 or height % 8:
        raise ValueError(f"size {width}×{height} must be a multiple of 8")
    for unit in controls:
        if unit.image.shape[:2] != (height, width):
            raise ValueError(f"control {unit.kind} is {unit.image.shape[:2]}, image is "
                             f"{(height, width)}")
