"""Colour matching between face regions (SPEC 2.7 "colour shift").

Reinhard et al.'s statistics transfer in CIE L*a*b*: every channel of the source is shifted and
scaled so that its mean and standard deviation over a region equal the target's over its region.
Computed on OpenCV's 8-bit Lab encoding (L, a, b each in 0..255), as the reference does.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import InvalidRequest

#: standard deviations below this (8-bit Lab units) are treated as flat: only the mean moves.
_FLAT_STD = 1e-3


def _check_rgb(image: np.ndarray, label: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidRequest(f"{label}: expected an (H, W, 3) uint8 RGB image, "
                             f"got shape {image.shape} dtype {image.dtype}")
    return image


def _check_mask(mask: np.ndarray | None, shape: tuple[int, int], label: str) -> np.ndarray | None:
    """``mask`` as ``(H, W)`` uint8, or ``None`` when absent or empty (= the whole image)."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise InvalidRequest(f"{label}: mask shape {mask.shape} differs from the image's {shape}")
    return mask if mask.any() else None


def lab_stats(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation, each ``(3,)`` float64, of the 8-bit Lab channels of an RGB
    ``image``, weighted by ``mask`` (``(H, W)`` 0..255; ``None`` or all zero → whole image)."""
    image = _check_rgb(image, "image")
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)
    mask = _check_mask(mask, image.shape[:2], "mask")
    if mask is None:
        mean, std = cv2.meanStdDev(lab)
        return mean.reshape(3), std.reshape(3)
    inside = mask > 0
    pixels = lab[inside].astype(np.float64)
    weights = mask[inside].astype(np.float64)[:, None]
    mean = (pixels * weights).sum(axis=0) / weights.sum()
    std = np.sqrt((((pixels - mean) ** 2) * weights).sum(axis=0) / weights.sum())
    return mean, std


def lab_colour_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
                        target_mask: np.ndarray | None = None) -> np.ndarray:
    """Reinhard colour transfer of ``source`` toward ``target`` in Lab (SPEC 2.7).

    Per Lab channel: ``(x − μs) · (σt / σs) + μt``, clipped to [0, 255], where ``μs, σs`` are the
    source's statistics over ``mask`` and ``μt, σt`` the target's over ``target_mask``
    (default: ``mask``, which then needs ``target`` of the source's size).

    Args:
        source: ``(H, W, 3)`` uint8 RGB image to recolour.
        target: ``(H', W', 3)`` uint8 RGB image whose colours are wanted.
        mask: ``(H, W)`` uint8 0..255 region of ``source`` the statistics come from (soft masks
            weight pixels by ``mask / 255``); ``None`` or empty → the whole image.
        target_mask: ``(H', W')`` region of ``target``; ``None`` → ``mask``.

    Returns:
        ``(H, W, 3)`` uint8 RGB: every pixel of ``source`` transformed (blend with a mask
        afterwards to limit the change to a region).
    """
    source = _check_rgb(source, "source")
    target = _check_rgb(target, "target")
    if target_mask is None and mask is not None and target.shape[:2] != source.shape[:2]:
        raise InvalidRequest("lab_colour_transfer: source and target differ in size; "
                             "pass target_mask for the target's region")
    mean_s, std_s = lab_stats(source, mask)
    mean_t, std_t = lab_stats(target, mask if target_mask is None else target_mask)
    scale = np.where(std_s > _FLAT_STD, std_t / np.maximum(std_s, _FLAT_STD), 1.0)
    lab = cv2.cvtColor(source, cv2.COLOR_RGB2LAB).astype(np.float32)
    lab = (lab - mean_s.astype(np.float32)) * scale.astype(np.float32) + mean_t.astype(np.float32)
    lab = np.clip(np.rint(lab), 0, 255).astype(np.uint8)
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
