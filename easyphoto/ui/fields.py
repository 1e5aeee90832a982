"""Controls built from a request dataclass's ``fields_info()``, values collected by name.

The parameters come only from :mod:`easyphoto.params`: a field's type, default, bounds,
choices, help and group decide its control. ``bool`` → checkbox; choices → dropdown; a number
with a small range → slider (its step always lands on the default); any other number →
number box; an optional number (``None`` = the model family's default) → a text box where
empty means "default"; text → text box. :func:`collect` turns the UI's values back into a
request, with readable messages for what cannot be converted.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any

import gradio as gr

from ..errors import InvalidRequest
from .slots import Slots

_WORDS = MappingProxyType({"cfg": "CFG", "lr": "LR", "rl": "RL", "id": "ID", "lora": "LoRA",
                           "sdxl": "SDXL", "adam": "Adam", "eps": "ε"})
#: Widest integer range shown as a slider.
MAX_INT_SLIDER = 200
#: Largest float bound shown as a slider.
MAX_FLOAT_SLIDER = 30.0
#: Text fields longer than this (e.g. prompts) get a multi-line box.
LONG_TEXT = 200


def label_of(name: str) -> str:
    """``"validation_cfg"`` → ``"Validation CFG"``."""
    words = [_WORDS.get(word, word) for word in name.split("_")]
    return " ".join([words[0][:1].upper() + words[0][1:]] + words[1:])


def elem_id(prefix: str, name: str) -> str:
    return f"easyphoto_{prefix}_{name}"


def slider_step(info: dict) -> float | None:
    """The slider step for a numeric field, or ``None`` when it should be a number box."""
    low, high, default, kind = info.get("min"), info.get("max"), info.get("default"), info["type"]
    if low is None or high is None or default is None or info.get("optional"):
        return None
    if kind is int:
        return 1 if high - low <= MAX_INT_SLIDER else None
    if kind is not float or low < 0 or high > MAX_FLOAT_SLIDER:
        return None
    step = 0.5 if high - low > 2 else 0.05
    on_grid = math.isclose((default - low) / step, round((default - low) / step), abs_tol=1e-9)
    return step if on_grid else None


def build_control(info: dict, prefix: str, placeholder: str = "") -> Any:
    """One gradio control for one field (see the module doc)."""
    name, kind, default = info["name"], info["type"], info["default"]
    common = {"label": label_of(name), "info": info.get("help") or None,
              "elem_id": elem_id(prefix, name)}
    if kind is bool:
        return gr.Checkbox(value=bool(default), **common)
    if info.get("choices"):
        return gr.Dropdown(choices=list(info["choices"]), value=default, **common)
    if kind in (int, float) and info.get("optional"):
        return gr.Textbox(value="" if default is None else str(default), max_lines=1,
                          placeholder=placeholder or "empty = the model's default", **common)
    if kind in (int, float):
        step = slider_step(info)
        if step is not None:
            return gr.Slider(minimum=info["min"], maximum=info["max"], step=step, value=default,
                             **common)
        return gr.Number(value=default, precision=0 if kind is int else None, **common)
    if kind is str:
        lines = 2 if (info.get("max") or 0) > LONG_TEXT else 1
        return gr.Textbox(value=default or "", placeholder=placeholder, lines=lines,
                          max_lines=lines * 3 if lines > 1 else 1, **common)
    raise TypeError(f"no UI control for field {name!r} of type {kind!r}")


def build(request_cls: Any, prefix: str, group: str, *, skip: Collection[str] = (),
          placeholders: Mapping[str, str] | None = None) -> Slots:
    """Controls for the fields of ``group`` ("basic" or "advanced"), in declaration order."""
    placeholders = placeholders or {}
    controls = {}
    for info in request_cls.fields_info():
        if info["name"] in skip or info.get("group", "basic") != group:
            continue
        controls[info["name"]] = build_control(info, prefix, placeholders.get(info["name"], ""))
    return Slots(controls)


def _number(name: str, kind: type, value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = float(text)
        except ValueError:
            raise InvalidRequest(f"{label_of(name)}: {text!r} is not a number") from None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind is int and float(value).is_integer():
            return int(value)
        return float(value) if kind is float else value
    return value


def convert(info: dict, value: Any) -> Any:
    """One UI value as the field's type (range checks are the request's own)."""
    kind = info["type"]
    if value is None:
        return None if info.get("optional") else info["default"]
    if kind in (int, float):
        converted = _number(info["name"], kind, value)
        if converted is None and not info.get("optional"):
            raise InvalidRequest(f"{label_of(info['name'])} needs a value")
        return converted
    if kind is str:
        return str(value).strip()
    return value


def collect(request_cls: Any, values: Mapping[str, Any], **fixed: Any) -> Any:
    """A ``request_cls`` from the UI ``values`` of its fields (other keys ignored) + ``fixed``.

    Fields with no value in either keep their default. Not validated here: the service does.
    """
    kwargs = {}
    for info in request_cls.fields_info():
        name = info["name"]
        if name in fixed:
            kwargs[name] = fixed[name]
        elif name in values:
            kwargs[name] = convert(info, values[name])
    names = {f.name for f in dataclasses.fields(request_cls)}
    unknown = sorted(set(fixed) - names)
    if unknown:
        raise TypeError(f"{request_cls.__name__} has no field(s) {', '.join(unknown)}")
    return request_cls(**kwargs)
