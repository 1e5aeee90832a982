"""Forge's ``lib_controlnet.external_code``: a dataclass, ``enabled=True``, module ``"None"``,
no ``low_vram`` field, no ``get_models`` (names come from ``global_state``)."""

from dataclasses import dataclass
from typing import Any

from cn_common import ResizeMode, resize_mode_from_value  # noqa: F401


@dataclass
class ControlNetUnit:
    input_mode: str = "simple"
    use_preview_as_input: bool = False
    generated_image: Any | None = None
    mask_image: Any | None = None
    hr_option: str = "Both"
    enabled: bool = True
    module: str = "None"
    model: str = "None"
    weight: float = 1.0
    image: Any | None = None
    image_fg: Any | None = None
    resize_mode: ResizeMode | int | str = ResizeMode.INNER_FIT
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: int | str = "Balanced"
    save_detected_map: bool = True
