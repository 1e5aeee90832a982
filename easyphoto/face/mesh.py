"""Face-part polygons from the 478-point MediaPipe face mesh, and their rasterisation.

The lite backend has no face-parsing network; it builds the BiSeNet-style part masks of SPEC §0
(``skin``, ``brows``, ``eyes``, ``ears``, ``nose``, ``mouth``, ``lips``) from the face mesh
(MediaPipe 0.10.x, ``refine_landmarks=True``: 468 mesh points + 10 iris points), or, when the
mesh finds no face, from the 5 detector landmarks (:func:`part_polygons_from_landmarks`).

Index loops below are ordered contours of the canonical mesh topology (they equal the edge sets
``FACEMESH_*`` of ``mediapipe.python.solutions.face_mesh_connections`` chained into loops; the
tests check that). "image-left" is the side with the smaller x in a non-mirrored photo, i.e. the
subject's right. Part definitions (the mesh has no hairline, ears or neck):

* ``eyes``: the two eyelid-margin loops; ``brows``: the two brow bands (lower + upper edge);
* ``nose``: bridge from between the eyes, sides, alar wings, down to the subnasale;
* ``lips``: outer lip contour minus the inner (mouth opening) contour;
* ``mouth``: the inner contour — the opening between the lips (teeth, tongue), BiSeNet class 11;
* ``skin``: the face oval (mid-forehead to chin, cheek to cheek) minus brows, eyes, nose, mouth
  and lips, as BiSeNet's class 1 excludes the other parts;
* ``ears``: the mesh has none: each ear is approximated by the band just outside the face oval on
  its side, between eye height (oval point 127 / 356) and mouth height (58 / 288), obtained by
  pushing that stretch of the oval outward from the oval's centre by :data:`EAR_REACH`.

All points are ``(x, y)`` float pixels; masks are ``(H, W)`` uint8 0/255.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from ..errors import InvalidRequest
from .types import FACE_PARTS, PART_INDICES

# ---- canonical mesh contours (indices into the 478 points) --------------------------------
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109)
EYE_IMAGE_LEFT = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
EYE_IMAGE_RIGHT = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388,
                   466)
#: brow bands: lower edge (outer → inner) followed by the upper edge (inner → outer).
BROW_IMAGE_LEFT = (46, 53, 52, 65, 55, 107, 66, 105, 63, 70)
BROW_IMAGE_RIGHT = (276, 283, 282, 295, 285, 336, 296, 334, 293, 300)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39,
              40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81,
              80, 191)
NOSE_OUTLINE = (168, 193, 245, 188, 114, 217, 198, 209, 49, 64, 98, 97, 2, 326, 327, 294, 279,
                429, 420, 437, 343, 412, 465, 417)
#: stretches of the oval between eye height and mouth height, image-left / image-right side.
EAR_SPAN_IMAGE_LEFT = (127, 234, 93, 132, 58)
EAR_SPAN_IMAGE_RIGHT = (356, 454, 323, 361, 288)
#: how far the ear band reaches outside the oval, as a fraction of the centre→oval distance.
EAR_REACH = 0.22
#: mesh points standing for the detector's 5 landmarks (iris centres, nose tip, mouth corners).
FIVE_POINTS = (468, 473, 4, 61, 291)

#: parts that are cut out of the skin region.
_NOT_SKIN = ("brows", "eyes", "nose", "mouth", "lips")

Polygons = dict[str, list[np.ndarray]]


def check_parts(parts: Sequence[str]) -> tuple[str, ...]:
    """The requested part names, validated against ``FACE_PARTS`` (order kept, no duplicates)."""
    if isinstance(parts, str):
        parts = (parts,)
    unknown = [p for p in parts if p not in PART_INDICES]
    if unknown:
        raise InvalidRequest(f"unknown face part(s) {unknown}; known parts: {list(FACE_PARTS)}")
    return tuple(dict.fromkeys(parts))


def _ear_band(points: np.ndarray, span: tuple[int, ...], centre: np.ndarray) -> np.ndarray:
    inner = points[list(span)]
    outer = centre + (inner - centre) * (1.0 + EAR_REACH)
    return np.concatenate([inner, outer[::-1]])


def part_polygons_from_mesh(points: np.ndarray) -> Polygons:
    """Polygons (lists of ``(N, 2)`` float arrays) of every part but ``skin`` from mesh points.

    ``points``: ``(478, 2)`` (or ``(468, 2)``) mesh points in pixels. ``lips`` holds the outer
    contour only; :func:`rasterise_parts` removes the mouth opening from it.
    """
    pts = np.asarray(points, dtype=np.float64)
    oval = pts[list(FACE_OVAL)]
    centre = oval.mean(axis=0)
    return {
        "oval": [oval],
        "eyes": [pts[list(EYE_IMAGE_LEFT)], pts[list(EYE_IMAGE_RIGHT)]],
        "brows": [pts[list(BROW_IMAGE_LEFT)], pts[list(BROW_IMAGE_RIGHT)]],
        "nose": [pts[list(NOSE_OUTLINE)]],
        "lips": [pts[list(LIPS_OUTER)]],
        "mouth": [pts[list(LIPS_INNER)]],
        "ears": [_ear_band(pts, EAR_SPAN_IMAGE_LEFT, centre),
                 _ear_band(pts, EAR_SPAN_IMAGE_RIGHT, centre)],
    }


def _ellipse(centre: np.ndarray, axes: tuple[float, float], angle: float) -> np.ndarray:
    """``(72, 2)`` float points of an ellipse; ``angle`` in degrees, semi-axes in pixels."""
    t = np.deg2rad(np.arange(0, 360, 5))
    a, b = axes
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    x, y = a * np.cos(t), b * np.sin(t)
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], axis=1)


def part_polygons_from_landmarks(landmarks: np.ndarray) -> Polygons:
    """Geometric stand-in for :func:`part_polygons_from_mesh` built from the 5 landmarks.

    Each part is an ellipse (nose: a pentagon) placed in the frame of the face: ``u`` along the
    eyes, ``v`` perpendicular, downward; sizes are fractions of the eye distance ``d``. Coarse —
    used only when the face mesh finds no face.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_l, eye_r, nose, mouth_l, mouth_r = lm
    d = max(float(np.linalg.norm(eye_r - eye_l)), 1.0)
    u = (eye_r - eye_l) / d
    v = np.array([-u[1], u[0]])
    angle = math.degrees(math.atan2(u[1], u[0]))
    eye_mid, mouth_mid = (eye_l + eye_r) / 2, (mouth_l + mouth_r) / 2
    mouth_w = max(float(np.linalg.norm(mouth_r - mouth_l)), 0.3 * d)
    drop = max(float(np.dot(mouth_mid - eye_mid, v)), 0.5 * d)
    oval_centre = eye_mid + v * (0.35 * drop)
    oval = _ellipse(oval_centre, (1.0 * d, 0.6 * drop + 0.85 * d), angle)
    ear_y = eye_mid + v * (0.5 * drop)
    return {
        "oval": [oval],
        "eyes": [_ellipse(p, (0.22 * d, 0.11 * d), angle) for p in (eye_l, eye_r)],
        "brows": [_ellipse(p - v * 0.32 * d, (0.3 * d, 0.07 * d), angle) for p in (eye_l, eye_r)],
        "nose": [np.stack([eye_mid - u * 0.1 * d, eye_mid + u * 0.1 * d,
                           nose + u * 0.22 * d + v * 0.05 * d, nose + v * 0.12 * d,
                           nose - u * 0.22 * d + v * 0.05 * d])],
        "lips": [_ellipse(mouth_mid, (0.55 * mouth_w, 0.22 * d), angle)],
        "mouth": [_ellipse(mouth_mid, (0.42 * mouth_w, 0.05 * d), angle)],
        "ears": [_ellipse(ear_y + side * u * 1.05 * d, (0.18 * d, 0.4 * drop), angle)
                 for side in (-1.0, 1.0)],
    }


def _fill(canvas_shape: tuple[int, int], polygons: list[np.ndarray],
          origin: tuple[int, int]) -> np.ndarray:
    """Rasterise ``polygons`` (image pixels) into a canvas whose top-left is ``origin``."""
    canvas = np.zeros(canvas_shape, np.uint8)
    shift = 4  # sub-pixel vertices: coordinates in 1/16 px
    offset = np.array(origin, dtype=np.float64) + 0.5  # pixel centres sit at integer + 0.5
    contours = [np.round((p - offset) * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
                for p in polygons]
    cv2.fillPoly(canvas, contours, 255, lineType=cv2.LINE_8, shift=shift)
    return canvas


def rasterise_parts(polygons: Polygons, parts: Sequence[str],
                    image_shape: tuple[int, int]) -> np.ndarray:
    """Union of ``parts`` as a full-size ``(H, W)`` uint8 0/255 mask.

    ``polygons`` come from :func:`part_polygons_from_mesh` or ``..._from_landmarks``; ``lips``
    excludes the mouth opening, ``skin`` is the oval minus brows, eyes, nose, mouth and lips,
    ``ears`` excludes the oval. Only the polygons' bounding rectangle is rasterised.
    """
    height, width = image_shape
    full = np.zeros((height, width), np.uint8)
    every = np.concatenate([p for group in polygons.values() for p in group])
    x0, y0 = np.floor(every.min(axis=0)).astype(int)
    x1, y1 = np.ceil(every.max(axis=0)).astype(int) + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        return full
    shape, origin = (y1 - y0, x1 - x0), (x0, y0)
    layers = {name: _fill(shape, group, origin) for name, group in polygons.items()}
    layers["lips"] = cv2.subtract(layers["lips"], layers["mouth"])
    layers["ears"] = cv2.subtract(layers["ears"], layers["oval"])
    cut = np.zeros(shape, np.uint8)
    for name in _NOT_SKIN:
        cut = cv2.bitwise_or(cut, layers[name])
    layers["skin"] = cv2.subtract(layers["oval"], cut)
    out = np.zeros(shape, np.uint8)
    for name in check_parts(parts):
        out = cv2.bitwise_or(out, layers[name])
    full[y0:y1, x0:x1] = out
    return full


def five_point_error(mesh_points: np.ndarray, landmarks: np.ndarray) -> float:
    """Mean distance (px) between the mesh's 5-landmark analogues and detector ``landmarks``,
    divided by the detector's eye distance (dimensionless; ~0.1 for the same face)."""
    mesh5 = np.asarray(mesh_points, dtype=np.float64)[list(FIVE_POINTS)]
    lm = np.asarray(landmarks, dtype=np.float64)
    d = max(float(np.linalg.norm(lm[1] - lm[0])), 1.0)
    return float(np.linalg.norm(mesh5 - lm, axis=1).mean() / d)
