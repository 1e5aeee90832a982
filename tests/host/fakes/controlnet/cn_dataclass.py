"""``external_code`` of sd-webui-controlnet v1.1.416–447: ``ControlNetUnit`` is a dataclass
(``enabled`` defaults to True; unknown keyword arguments raise TypeError)."""

from dataclasses import dataclass
from typing import Any

import fake_host_config as C
from cn_common import MODELS, ResizeMode, refreshes, resize_mode_from_value  # noqa: F401


@dataclass
class ControlNetUnit:
    enabled: bool = True
    module: str | None = None
    model: str | None = None
    weight: float = 1.0
    image: Any | None = None
    resize_mode: ResizeMode | int | str = ResizeMode.INNER_FIT
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: int | str = "Balanced"
    save_detected_map: bool = True


def get_models(update=False):
    if update:
        refreshes.append("get_models")
    return list(MODELS)


def get_max_models_num():
    from modules import shared

    key = "control_net_unit_count" if C.CONTROLNET_UNIT_KEY_NEW else "control_net_max_models_num"
    return shared.opts.data.get(key, 3)
