"""Colour shift (SPEC 2.7.1 and 2.7.4): pull a generated face's colours back to the template's.

Reinhard statistics transfer in Lab (:func:`easyphoto.face.colour.lab_colour_transfer`): the
per-channel mean and standard deviation of the ``box×1.1`` face region of ``image`` are mapped
onto those of the same region of ``reference`` (the original, pre-fusion template crop). The
recoloured image is blended in with the face-part mask blurred 32 (box filter, px), so only the
face changes and pixels where the blurred mask is 0 keep their bytes.

Ours vs the reference: the reference recolours only inside the ``box×1.1`` crop, so wherever the
blurred mask still has weight at the crop's edge the shift stops at a straight seam. We take the
statistics from the same region but apply the (per-pixel) transfer wherever the blurred mask
reaches, which removes the seam and is identical inside the region.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import cv2
import numpy as np

from ..errors import InvalidRequest
from ..face.colour import lab_colour_transfer
from ..face.types import Face
from .masks import SHIFT_FIRST, blend, box_blur, face_parts_mask

logger = logging.getLogger(__name__)

#: SPEC 2.7.1: statistics come from ``face.box × 1.1``.
SHIFT_BOX_RATIO = 1.1
#: SPEC 2.7.1: the face-part mask is blurred 32 (box filter, px).
SHIFT_BLUR = 32


def colour_shift(image: np.ndarray, reference: np.ndarray, face: Face, backend: Any,
                 parts: Sequence[str] = SHIFT_FIRST, *, box_ratio: float = SHIFT_BOX_RATIO,
                 blur: int = SHIFT_BLUR) -> np.ndarray:
    """Colour-shift the face of ``image`` toward ``reference`` (SPEC 2.7.1 / 2.7.4).

    Args:
        image: ``(H, W, 3)`` uint8 RGB, the diffusion output at the working resolution.
        reference: ``(H, W, 3)`` uint8 RGB, the template crop before fusion (same size).
        face: the face in ``image`` as detected (its raw box; ``box_ratio`` grows it).
        backend: face backend providing ``part_masks``.
        parts: ``SHIFT_FIRST`` after the first diffusion, ``SHIFT_LAST`` after the second.

    Returns:
        ``(H, W, 3)`` uint8 RGB: ``transfer(image)·m + image·(1−m)`` with ``m`` the part mask of
        ``image`` box-blurred over ``blur`` px; bytes where ``m == 0`` are ``image``'s exactly.
    """
    image, reference = np.asarray(image), np.asarray(reference)
    if image.shape != reference.shape:
        raise InvalidRequest(f"colour shift: image {image.shape} and reference "
                             f"{reference.shape} must have one size")
    height, width = image.shape[:2]
    x0, y0, x1, y1 = face.box.scaled(box_ratio, clip=(width, height)).to_int()
    if x1 <= x0 or y1 <= y0:
        logger.warning("colour shift: face box %s lies outside the image; skipped",
                       face.box.to_list())
        return image.copy()
    weight = box_blur(face_parts_mask(image, face, backend, parts), blur)
    if not weight.any():
        logger.warning("colour shift: no face parts %s found; skipped", list(parts))
        return image.copy()
    # the window: the face region (statistics) ∪ everything the blurred mask reaches (changes)
    mx, my, mw, mh = cv2.boundingRect((weight > 0).astype(np.uint8))
    wx0, wy0 = min(x0, mx), min(y0, my)
    wx1, wy1 = max(x1, mx + mw), max(y1, my + mh)
    region = np.zeros((wy1 - wy0, wx1 - wx0), np.uint8)
    region[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0] = 255
    window = (slice(wy0, wy1), slice(wx0, wx1))
    shifted = lab_colour_transfer(image[window], reference[window], mask=region,
                                  target_mask=region)
    out = image.copy()
    out[window] = blend(image[window], shifted, weight[window])
    return out
