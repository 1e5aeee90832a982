"""Backend-independent geometry: similarity transforms from landmarks, align-and-paste.

Shapes: points are ``(N, 2)`` float arrays of ``(x, y)``; a transform is a ``(2, 3)`` float64
affine matrix ``M`` with ``dst ≈ M @ [x, y, 1]``.
"""

from __future__ import annotations

import cv2
import numpy as np

from .types import Box, Face


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) ``src → dst``.

    Closed-form Umeyama solution; ``src`` and ``dst`` are ``(N, 2)`` with ``N ≥ 2``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (N, 2) point sets with N >= 2, got {src.shape} and {dst.shape}")
    mean_s, mean_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mean_s, dst - mean_d
    var_s = (s ** 2).sum() / len(src)
    if var_s == 0:
        raise ValueError("source points are all identical")
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    scale = (sigma * sign).sum() / var_s
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_d - scale * rotation @ mean_s
    return matrix


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` affine matrix to ``(N, 2)`` points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def box_mask(shape: tuple[int, int], box: Box) -> np.ndarray:
    """``(H, W)`` uint8 mask, 255 inside ``box`` (clipped to the image)."""
    height, width = shape
    x0, y0, x1, y1 = box.clipped(width, height).to_int()
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def crop(image: np.ndarray, box: Box) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop ``box`` (clipped to the image); returns the crop and its top-left offset."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box.clipped(width, height).to_int()
    return image[y0:y1, x0:x1].copy(), (x0, y0)


def align_and_paste(template: np.ndarray, template_face: Face, source: np.ndarray,
                    source_face: Face, crop_ratio: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """SPEC 2.4 "replaced image": the source face, warped onto the template face, pasted in.

    Crops ``source`` at ``source_face.box × crop_ratio``, estimates the similarity transform
    mapping the source's 5 landmarks onto the template's, warps the crop and its box mask into
    template space and pastes where the warped mask is set.

    Returns ``(pasted_image, mask)``, both at the template's size.
    """
    height, width = template.shape[:2]
    region, (ox, oy) = crop(source, source_face.box.scaled(crop_ratio))
    if region.size == 0:
        raise ValueError("the source face box lies outside the source image")
    src_points = np.asarray(source_face.landmarks, dtype=np.float64) - (ox, oy)
    matrix = estimate_similarity(src_points, template_face.landmarks)
    warped = cv2.warpAffine(region, matrix, (width, height), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    region_mask = np.full(region.shape[:2], 255, np.uint8)
    mask = cv2.warpAffine(region_mask, matrix, (width, height), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    pasted = template.copy()
    pasted[mask > 0] = warped[mask > 0]
    return pasted, mask
