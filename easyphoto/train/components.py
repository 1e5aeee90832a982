"""The diffusion models a training run needs, loaded once and shared by training and validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class TrainComponents:
    """Models of one base checkpoint, on ``device``; frozen except for the LoRA layers training adds.

    ``text_encoders`` / ``tokenizers`` have one entry for SD1.5 and two for SDXL.
    ``canny_controlnet`` is the validation ControlNet (SPEC 1.4, paper), ``None`` when absent.
    ``base_id`` identifies the base model in ``meta.json`` (file sha256 prefix, or "tiny-random").
    """

    family: str
    unet: Any
    vae: Any
    text_encoders: list
    tokenizers: list
    noise_scheduler: Any
    device: Any
    dtype: Any
    base_id: str
    canny_controlnet: Optional[Any] = None
    notes: list = field(default_factory=list)
