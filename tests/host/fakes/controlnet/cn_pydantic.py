"""``external_code`` of sd-webui-controlnet v1.1.448+: ``ControlNetUnit`` is a pydantic (v1 API)
model — ``enabled`` defaults to False, ``resize_mode`` is converted from its string value,
module / model / weight / guidance are validated at construction, extra fields are ignored."""

from typing import Any

from cn_common import MODELS, MODULES, ResizeMode, refreshes, resize_mode_from_value  # noqa: F401
from pydantic.v1 import BaseModel, Field, root_validator, validator


class ControlNetUnit(BaseModel):
    class Config:
        arbitrary_types_allowed = True
        extra = "ignore"

    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = Field(1.0, ge=0.0, le=2.0)
    image: Any | None = None
    resize_mode: ResizeMode = ResizeMode.INNER_FIT
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    pixel_perfect: bool = False
    control_mode: str = "Balanced"
    save_detected_map: bool = True

    @validator("module", always=True, pre=True, allow_reuse=True)
    def check_module(cls, value):
        if value not in MODULES:
            raise ValueError(f"module({value}) not found in supported modules.")
        return value

    @validator("model", always=True, pre=True, allow_reuse=True)
    def check_model(cls, value):
        if value not in MODELS:
            raise ValueError(f"model({value}) not found in supported models.")
        return value

    @validator("resize_mode", always=True, pre=True, allow_reuse=True)
    def check_resize_mode(cls, value):
        if isinstance(value, str):
            return ResizeMode(value)
        assert isinstance(value, ResizeMode)
        return value

    @root_validator(allow_reuse=True)
    def guidance_check(cls, values):
        if values.get("guidance_start", 0) > values.get("guidance_end", 1):
            raise ValueError("guidance_start > guidance_end")
        return values


def get_models(update=False):
    if update:
        refreshes.append("get_models")
    return list(MODELS)


def get_max_models_num():
    from modules import shared

    return shared.opts.data.get("control_net_unit_count", 3)
