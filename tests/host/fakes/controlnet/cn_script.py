"""The ControlNet always-on script (loaded by file path, like the host loads extension
scripts: not importable by name). Its module globals hold ``external_code`` (and
``controlnet_version`` / Forge's ``global_state``), where the adapter looks them up.

``process`` reads the units in its ``args_from:args_to`` slice, ignores disabled ones, checks
them as the real extension would before applying them, writes one ``ControlNet <i>``
generation parameter per applied unit and keeps the units on ``p`` for the test."""

import importlib
import types

import fake_host_config as C
import numpy as np
from modules import scripts

external_code = importlib.import_module(C.CONTROLNET_MODULE)
if C.FORGE:
    global_state = importlib.import_module("cn_forge_state")
else:
    controlnet_version = types.SimpleNamespace(version_flag=C.CONTROLNET_VERSION)


def _names():
    if C.FORGE:
        return global_state.get_all_controlnet_names()
    return external_code.get_models()


class Script(scripts.Script):
    def title(self):
        return "ControlNet"

    def process(self, p, *args):
        if C.FORGE and any(arg is None for arg in args):
            raise TypeError("Forge ControlNet: every unit slot needs a ControlNetUnit")
        units = [a for a in args if isinstance(a, external_code.ControlNetUnit) and a.enabled]
        for index, unit in enumerate(units):
            if unit.model not in _names():
                raise RuntimeError(f"model not found: {unit.model}")
            image = unit.image
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3):
                raise ValueError("controlnet is enabled but no input image is given")
            mode = external_code.resize_mode_from_value(unit.resize_mode)
            p.extra_generation_params[f"ControlNet {index}"] = (
                f"Module: {unit.module}, Model: {unit.model}, Weight: {unit.weight}, "
                f"Resize Mode: {mode.value}, Guidance: ({unit.guidance_start}, "
                f"{unit.guidance_end})")
        p.cn_units = units
