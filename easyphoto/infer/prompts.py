"""Prompts: the portrait prompt (SPEC 2.1), WebUI-style infotext, and text → template (SPEC 2.9).

* :func:`portrait_prompt` assembles ``easyphoto_face, easyphoto, 1person, {additional},
  {DEFAULT_POSITIVE}`` and ``{additional_negative}, {DEFAULT_NEGATIVE}``. LoRAs are not written
  into the prompt: they travel as ``Generation.loras`` (an engine that needs the
  ``<lora:NAME:W>`` syntax, the WebUI's, adds it); :func:`lora_tags` renders them for the
  infotext only.
* :func:`infotext` writes the parameters the way Stable Diffusion WebUI stores them in a PNG's
  ``parameters`` text chunk (prompt line, ``Negative prompt:`` line, ``Key: value, ...`` line).
* :class:`TemplateChoices` + :func:`template_prompt` build a template prompt from the choice
  lists (portrait ratio, gender, cloth colour, cloth, pose, place, season, time of day, weather)
  and free text; :func:`text_to_template` renders it with the engine's SDXL txt2img.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..engine.base import Generation, LoraRef
from ..errors import InvalidRequest
from ..params import CAPTION

logger = logging.getLogger(__name__)

#: Positive prompt tail: a clean, realistic portrait (ours; constant).
DEFAULT_POSITIVE = ("realistic photo portrait, natural skin texture, detailed eyes, clear face, "
                    "soft natural light, sharp focus, high quality")
#: Negative prompt tail: nsfw, glasses, earrings, bags under the eyes, low quality (constant).
DEFAULT_NEGATIVE = ("nsfw, naked, glasses, eyeglasses, sunglasses, earrings, bags under the eyes, "
                    "dark circles, wrinkles, blurry, lowres, low quality, worst quality, "
                    "jpeg artifacts, deformed face, bad anatomy, watermark, text")

# ---- SPEC 2.9 choice lists ("" = not specified) ---------------------------------------------
PORTRAIT_RATIOS = MappingProxyType({"upper-body": "upper body portrait photo",
                                    "headshot": "close-up headshot photo"})
GENDERS = ("woman", "man", "girl", "boy", "person")
CLOTH_COLOURS = ("", "white", "black", "grey", "red", "blue", "navy", "green", "yellow", "pink",
                 "purple", "brown", "beige")
CLOTHES = ("", "shirt", "t-shirt", "suit", "dress", "sweater", "hoodie", "jacket", "coat",
           "blouse", "uniform", "traditional clothes")
POSES = ("", "standing", "sitting", "walking", "leaning against a wall", "arms crossed",
         "looking at the viewer", "looking aside", "smiling")
PLACES = ("", "photo studio", "park", "beach", "city street", "cafe", "library", "office",
          "forest", "mountains", "garden", "at home")
SEASONS = ("", "spring", "summer", "autumn", "winter")
TIMES_OF_DAY = ("", "morning", "noon", "afternoon", "golden hour", "sunset", "night")
WEATHERS = ("", "sunny", "cloudy", "overcast", "rainy", "snowy", "foggy")
#: SDXL resolutions (width, height) by orientation (SPEC 2.9, e.g. 1344×768).
TEMPLATE_SIZES = MappingProxyType({"portrait": (768, 1344), "landscape": (1344, 768),
                                   "square": (1024, 1024)})
#: Text → template sampling (SPEC 2.9, constants).
TEMPLATE_STEPS, TEMPLATE_CFG, TEMPLATE_SAMPLER = 30, 7.0, "DPM++ 2M SDE Karras"
TEMPLATE_NEGATIVE = "multiple people, cropped head, face out of frame, " + DEFAULT_NEGATIVE
MAX_FREE_TEXT = 1000


def join_prompt(*parts: str) -> str:
    """Comma-join the non-empty, stripped parts."""
    return ", ".join(p.strip().strip(",").strip() for p in parts if p and p.strip(" ,"))


def portrait_prompt(additional: str = "", additional_negative: str = "") -> tuple[str, str]:
    """``(positive, negative)`` of SPEC 2.1 without LoRA tags (see the module doc)."""
    return (join_prompt(CAPTION, additional, DEFAULT_POSITIVE),
            join_prompt(additional_negative, DEFAULT_NEGATIVE))


def lora_tags(loras: Sequence[LoraRef], names: Optional[Sequence[str]] = None) -> str:
    """``<lora:NAME:W>`` tags for display; ``names`` replaces the file stems (e.g. user ids)."""
    labels = list(names) if names is not None else [_stem(ref.path) for ref in loras]
    return ", ".join(f"<lora:{label}:{lora.weight:g}>" for label, lora in zip(labels, loras))


def _stem(path: str) -> str:
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def _infotext_value(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        value = ", ".join(map(str, value))
    text = str(value).replace("\n", " ")
    return f'"{text}"' if ("," in text or ":" in text or '"' in text) else text


def infotext(positive: str, negative: str, settings: Mapping[str, Any]) -> str:
    """WebUI "infotext": ``positive\\nNegative prompt: negative\\nKey: value, Key: value``.

    Keys are written as given (WebUI uses ``Steps``, ``Sampler``, ``CFG scale``, ``Seed``,
    ``Size``...); values with commas or colons are double-quoted, as WebUI does.
    """
    line = ", ".join(f"{key}: {_infotext_value(v)}" for key, v in settings.items()
                     if v is not None and v != "")
    return f"{positive}\nNegative prompt: {negative}\n{line}"


# ---- SPEC 2.9: text → template --------------------------------------------------------------
@dataclass(frozen=True)
class TemplateChoices:
    """The text → template form: one value per choice list (``""`` = not specified)."""

    portrait_ratio: str = "upper-body"
    gender: str = "woman"
    cloth_colour: str = ""
    cloth: str = ""
    pose: str = ""
    place: str = ""
    season: str = ""
    time_of_day: str = ""
    weather: str = ""
    free_text: str = ""
    orientation: str = "portrait"

    def validate(self) -> "TemplateChoices":
        """Every choice from its list; free text ≤ 1000 characters. Raises InvalidRequest."""
        lists = {"portrait_ratio": tuple(PORTRAIT_RATIOS), "gender": GENDERS,
                 "cloth_colour": CLOTH_COLOURS, "cloth": CLOTHES, "pose": POSES, "place": PLACES,
                 "season": SEASONS, "time_of_day": TIMES_OF_DAY, "weather": WEATHERS,
                 "orientation": tuple(TEMPLATE_SIZES)}
        for name, allowed in lists.items():
            value = getattr(self, name)
            if value not in allowed:
                shown = ", ".join(repr(a) for a in allowed)
                raise InvalidRequest(f"template {name.replace('_', ' ')} {value!r} is not one of "
                                     f"{shown}")
        if len(self.free_text) > MAX_FREE_TEXT:
            raise InvalidRequest(f"template free text is {len(self.free_text)} characters; the "
                                 f"limit is {MAX_FREE_TEXT}")
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TemplateChoices":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidRequest(f"unknown template choice(s): {', '.join(unknown)}")
        return cls(**{k: str(v) for k, v in data.items()}).validate()


def template_prompt(choices: TemplateChoices) -> tuple[str, str]:
    """``(positive, negative)`` for an SDXL template of one person (SPEC 2.9)."""
    choices.validate()
    outfit = join_prompt(" ".join(p for p in (choices.cloth_colour, choices.cloth) if p))
    subject = f"a {choices.gender}" + (f" wearing a {outfit}" if outfit else "")
    place = choices.place
    if place and place != "at home":
        place = f"in a {place}"
    scene = join_prompt(choices.season, choices.time_of_day, choices.weather)
    positive = join_prompt(f"{PORTRAIT_RATIOS[choices.portrait_ratio]} of {subject}", choices.pose,
                     place, scene, choices.free_text, "one person, face visible, photorealistic, "
                     "detailed, 8k photo")
    return positive, TEMPLATE_NEGATIVE


def template_size(orientation: str = "portrait", tiny: bool = False) -> tuple[int, int]:
    """``(width, height)``: an SDXL resolution; ``tiny`` = the tiny-random preset's (÷8, floored
    to multiples of 16: its models are 8× smaller)."""
    if orientation not in TEMPLATE_SIZES:
        raise InvalidRequest(f"orientation must be one of {', '.join(TEMPLATE_SIZES)}")
    width, height = TEMPLATE_SIZES[orientation]
    if tiny:
        return max(16, width // 8 // 16 * 16), max(16, height // 8 // 16 * 16)
    return width, height


def text_to_template(engine: Any, choices: TemplateChoices, seed: int,
                     size: Optional[tuple[int, int]] = None, tiny: bool = False) -> np.ndarray:
    """Render a template with the engine's SDXL txt2img: 30 steps, cfg 7, DPM++ 2M SDE Karras.

    Returns an ``(H, W, 3)`` uint8 RGB image of ``size`` (default: :func:`template_size` of the
    choices' orientation), ready for the normal SD1.5 pipeline (SPEC 2.9).
    """
    positive, negative = template_prompt(choices)
    width, height = size or template_size(choices.orientation, tiny)
    logger.info("text → template %dx%d, seed %d: %s", width, height, seed, positive)
    generation = Generation(prompt=positive, negative_prompt=negative, steps=TEMPLATE_STEPS,
                            cfg=TEMPLATE_CFG, sampler=TEMPLATE_SAMPLER, seed=int(seed))
    image = np.asarray(engine.txt2img((width, height), generation, family="sdxl"))
    if image.shape != (height, width, 3) or image.dtype != np.uint8:
        raise RuntimeError(f"txt2img returned {image.shape} {image.dtype}, expected "
                           f"({height}, {width}, 3) uint8")
    return image
