"""The portrait pipeline's masks (SPEC 2.5, 2.6, 2.7.3), built from the face backend's part masks.

Conventions: images ``(H, W, 3)`` uint8 RGB at the working resolution (the 512-px crop); binary
masks ``(H, W)`` uint8 0/255; soft masks ``(H, W)`` float32 in [0, 1]. Sizes are pixels at the
working resolution:

* "dilate / erode *n*" grows / shrinks a mask by *n* px: a disc-shaped structuring element of
  radius *n* (``(2n+1) × (2n+1)`` ellipse), so the distance moved is *n* in every direction. The
  reference implementation uses square ``n × n`` kernels, which move a border by only *n/2* —
  our masks reach twice as far for the same SPEC number (SPEC's wording "dilated by …").
* "blur *n*" is a normalised box filter of ``n × n`` px (the reference's ``cv2.blur``): a
  transition band *n* px wide centred on the mask's edge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import InvalidRequest
from ..face.types import Face

logger = logging.getLogger(__name__)

#: face parts of the first diffusion mask and of the face mask (SPEC 2.6; BiSeNet 1-5, 10-13).
FIRST_PARTS: tuple[str, ...] = ("skin", "brows", "eyes", "nose", "mouth", "lips")
#: the first diffusion mask also covers the ears (the paper extends the mask to include them).
FIRST_MASK_PARTS: tuple[str, ...] = FIRST_PARTS + ("ears",)
#: face fusion before the first diffusion (SPEC 2.5) and after it (2.7.2: without the nose).
FUSION_BEFORE: tuple[str, ...] = FIRST_PARTS
FUSION_AFTER: tuple[str, ...] = ("skin", "brows", "eyes", "mouth", "lips")
#: colour shift after the first diffusion (2.7.1) and after the second (2.7.4).
SHIFT_FIRST: tuple[str, ...] = FIRST_PARTS
SHIFT_LAST: tuple[str, ...] = ("skin", "brows", "eyes", "nose")

#: SPEC 2.6: dilation (and closing) radius of the first mask, as a fraction of the face width.
FIRST_DILATION = 0.1
#: SPEC 2.7.3: the face border ring = dilate 32 − erode 16 (px).
RING_OUTER, RING_INNER = 32, 16
#: SPEC 2.5: the fusion blend mask is dilated 8, eroded 16, blurred 8 (px).
FUSION_DILATE, FUSION_ERODE, FUSION_BLUR = 8, 16, 8


# ---- primitives ----------------------------------------------------------------------------
def disc(radius: int) -> np.ndarray:
    """``(2r+1, 2r+1)`` uint8 elliptical structuring element of radius ``r`` px."""
    radius = max(int(radius), 0)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` (``(H, W)`` uint8) grown by ``radius`` px."""
    return cv2.dilate(mask, disc(radius)) if radius > 0 else mask.copy()


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` (``(H, W)`` uint8) shrunk by ``radius`` px (the image border does not erode)."""
    return cv2.erode(mask, disc(radius)) if radius > 0 else mask.copy()


def box_blur(mask: np.ndarray, size: int) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: ``mask`` (uint8 0..255 or float 0..1) box-blurred over
    ``size × size`` px. Exactly 0 where the box holds no set pixel (round-off is cleared)."""
    values = mask.astype(np.float32) / 255.0 if mask.dtype == np.uint8 else mask.astype(np.float32)
    if size <= 1:
        return np.clip(values, 0.0, 1.0)
    soft = cv2.blur(values, (int(size), int(size)), borderType=cv2.BORDER_REPLICATE)
    reach = cv2.dilate((values > 0).astype(np.uint8), np.ones((int(size), int(size)), np.uint8),
                       borderType=cv2.BORDER_REPLICATE)  # same window as the box filter
    return np.where(reach > 0, np.clip(soft, 0.0, 1.0), 0.0).astype(np.float32)


def _check_image(image: np.ndarray, label: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidRequest(f"{label}: expected an (H, W, 3) uint8 RGB image, got shape "
                             f"{image.shape} dtype {image.dtype}")
    return image


# ---- masks ---------------------------------------------------------------------------------
def face_parts_mask(image: np.ndarray, face: Face, backend: Any,
                    parts: Sequence[str]) -> np.ndarray:
    """Union of the named face ``parts`` of ``face`` in ``image``, ``(H, W)`` uint8 0/255 (the
    backend's ``part_masks``, checked and binarised)."""
    image = _check_image(image, "image")
    mask = np.asarray(backend.part_masks(image, face, tuple(parts)))
    if mask.shape != image.shape[:2]:
        raise InvalidRequest(f"part mask {mask.shape} does not match the image {image.shape[:2]}")
    return np.where(mask > 127, 255, 0).astype(np.uint8)


def first_diffusion_mask(image: np.ndarray, face: Face, backend: Any) -> np.ndarray:
    """SPEC 2.6 inpainting mask, ``(H, W)`` uint8 0/255.

    The face parts (``FIRST_PARTS`` + ears), morphologically closed and then dilated, both with a
    disc of radius ``face_width / 10`` (``face.box`` width, px).
    """
    parts = face_parts_mask(image, face, backend, FIRST_MASK_PARTS)
    radius = max(1, int(round(face.box.width * FIRST_DILATION)))
    closed = cv2.morphologyEx(parts, cv2.MORPH_CLOSE, disc(radius))
    return dilate(closed, radius)


@dataclass(frozen=True)
class SecondDiffusionMask:
    """SPEC 2.7.3 mask and its ingredients, each ``(H, W)`` uint8 0/255."""

    #: what the second diffusion repaints: ``ring ∪ eyes ∪ lips`` (``ring`` without the mouth fix).
    mask: np.ndarray
    #: the face (``FIRST_PARTS``) the ring is built from.
    face: np.ndarray
    #: ``dilate(face, 32) − erode(face, 16)``.
    ring: np.ndarray
    eyes: np.ndarray
    lips: np.ndarray


def scaled_px(value: int, scale: float) -> int:
    """A SPEC pixel constant (meant at the 512 working size) at ``scale`` × 512 (≥ 1)."""
    return max(1, int(round(value * scale)))


def second_diffusion_mask_parts(image: np.ndarray, face: Face, backend: Any,
                                mouth: bool = True, scale: float = 1.0) -> SecondDiffusionMask:
    """The second diffusion's mask with its parts (see :func:`second_diffusion_mask`)."""
    face_mask = face_parts_mask(image, face, backend, FIRST_PARTS)
    ring = cv2.subtract(dilate(face_mask, scaled_px(RING_OUTER, scale)),
                        erode(face_mask, scaled_px(RING_INNER, scale)))
    eyes = face_parts_mask(image, face, backend, ("eyes",))
    lips = face_parts_mask(image, face, backend, ("lips",))
    mask = cv2.bitwise_or(ring, cv2.bitwise_or(eyes, lips)) if mouth else ring.copy()
    return SecondDiffusionMask(mask=mask, face=face_mask, ring=ring, eyes=eyes, lips=lips)


def second_diffusion_mask(image: np.ndarray, face: Face, backend: Any,
                          mouth: bool = True, scale: float = 1.0) -> np.ndarray:
    """SPEC 2.7.3 inpainting mask, ``(H, W)`` uint8 0/255: the face border ring
    ``dilate(face, 32) − erode(face, 16)`` (face = ``FIRST_PARTS``), ∪ eyes ∪ lips when
    ``mouth`` (the "mouth mask" option, default on). ``scale`` = working short side / 512
    (the ring widths are pixels at 512)."""
    return second_diffusion_mask_parts(image, face, backend, mouth, scale).mask


def fusion_blend_mask(template: np.ndarray, fused: np.ndarray, face_t: Face, face_f: Face,
                      backend: Any, ratio: float, parts: Sequence[str] = FUSION_BEFORE, *,
                      blur: bool = True, scale: float = 1.0) -> np.ndarray:
    """SPEC 2.5 weight of the fused image, ``(H, W)`` float32 in [0, 1].

    ``(parts of template ∧ parts of fused)`` dilated 8 then eroded 16, times ``ratio``; the
    fused face's eyes at 1.0; the template's lips at 0 (they stay from the template); then a
    box blur of 8 (``blur=False`` returns the sharp map, for inspection and tests).

    Args:
        template, fused: ``(H, W, 3)`` uint8 RGB of one size (before / after face fusion).
        face_t, face_f: the face in each (often the same detection).
        ratio: fusion strength 0..1 (SPEC 2.1: 0.5 before and after).
        parts: ``FUSION_BEFORE`` or ``FUSION_AFTER``.
        scale: working short side / 512 (the 8 / 16 / 8 px are meant at 512).
    """
    template, fused = _check_image(template, "template"), _check_image(fused, "fused")
    if template.shape != fused.shape:
        raise InvalidRequest(f"template {template.shape} and fused {fused.shape} differ in size")
    if not 0.0 <= float(ratio) <= 1.0:
        raise InvalidRequest(f"face fusion ratio must be within 0..1, got {ratio}")
    both = cv2.bitwise_and(face_parts_mask(template, face_t, backend, parts),
                           face_parts_mask(fused, face_f, backend, parts))
    core = erode(dilate(both, scaled_px(FUSION_DILATE, scale)), scaled_px(FUSION_ERODE, scale))
    weight = np.where(core > 0, np.float32(ratio), np.float32(0.0)).astype(np.float32)
    weight[face_parts_mask(fused, face_f, backend, ("eyes",)) > 0] = 1.0
    weight[face_parts_mask(template, face_t, backend, ("lips",)) > 0] = 0.0
    return box_blur(weight, scaled_px(FUSION_BLUR, scale)) if blur else weight


def blend(input: np.ndarray, fused: np.ndarray, mask_float: np.ndarray) -> np.ndarray:
    """``fused·m + input·(1−m)`` rounded to ``(H, W, 3)`` uint8; pixels with ``m == 0`` are
    ``input``'s bytes exactly. ``mask_float``: ``(H, W)`` float in [0, 1]."""
    input, fused = _check_image(input, "input"), _check_image(fused, "fused")
    m = np.asarray(mask_float, dtype=np.float32)
    if input.shape != fused.shape or m.shape != input.shape[:2]:
        raise InvalidRequest(f"blend: input {input.shape}, fused {fused.shape} and mask "
                             f"{m.shape} must agree")
    m = np.clip(m, 0.0, 1.0)[:, :, None]
    mixed = np.rint(fused.astype(np.float32) * m + input.astype(np.float32) * (1.0 - m))
    return np.where(m > 0, np.clip(mixed, 0, 255).astype(np.uint8), input)
