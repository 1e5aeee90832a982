"""What every fake ControlNet generation shares: resize modes, the model list, preprocessors."""

import enum


class ResizeMode(enum.Enum):
    RESIZE = "Just Resize"
    INNER_FIT = "Crop and Resize"
    OUTER_FIT = "Resize and Fill"


#: Model names as ControlNet lists them: "<file stem> [<hash>]" (mutable: tests remove some).
MODELS = ["None", "control_v11p_sd15_canny [d14c016b]", "control_v11p_sd15_openpose [cab727d4]",
          "control_v11f1e_sd15_tile [a371b31b]", "control_sd15_random_color [3dfd2cb9]"]
MODULES = ("none", "canny", "openpose", "tile_resample")
refreshes = []


def resize_mode_from_value(value):
    if isinstance(value, str):
        return ResizeMode(value)
    if isinstance(value, int):
        return list(ResizeMode)[value]
    return value
