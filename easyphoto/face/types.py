"""Value types and the backend protocol of the face layer.

Conventions used everywhere in ``easyphoto.face``:

* images are ``numpy.ndarray`` of shape ``(H, W, 3)``, dtype ``uint8``, **RGB** order;
* masks are ``(H, W)`` ``uint8`` arrays, 0 = outside, 255 = inside (soft masks use 0..255);
* coordinates are ``(x, y)`` pixels, floats, origin at the top-left corner;
* the 5 landmarks are, in this order: the eye on the image's left, the eye on the image's right,
  the nose tip, the mouth corner on the image's left, the mouth corner on the image's right
  (the RetinaFace / insightface order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

#: Face-part names understood by ``FaceBackend.part_masks`` and the BiSeNet class indices they
#: stand for in SPEC §0 (1 skin, 2/3 brows, 4/5 eyes, 7/8 ears, 10 nose, 11 mouth, 12/13 lips).
PART_INDICES: dict[str, tuple[int, ...]] = {
    "skin": (1,),
    "brows": (2, 3),
    "eyes": (4, 5),
    "ears": (7, 8),
    "nose": (10,),
    "mouth": (11,),
    "lips": (12, 13),
}
FACE_PARTS: tuple[str, ...] = tuple(PART_INDICES)


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``[x0, x1) × [y0, y1)`` in pixels."""

    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return max(0.0, self.width) * max(0.0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x0 + self.x1) / 2.0, (self.y0 + self.y1) / 2.0)

    def scaled(self, r: float, clip: tuple[int, int] | None = None) -> "Box":
        """``box×r``: grow about the centre so each side moves out by ``(r-1)/2`` of the size.

        ``clip`` = ``(width, height)`` of the image to clip to.
        """
        dx, dy = self.width * (r - 1) / 2.0, self.height * (r - 1) / 2.0
        box = Box(self.x0 - dx, self.y0 - dy, self.x1 + dx, self.y1 + dy)
        return box.clipped(*clip) if clip is not None else box

    def clipped(self, width: int, height: int) -> "Box":
        return Box(
            min(max(self.x0, 0.0), float(width)),
            min(max(self.y0, 0.0), float(height)),
            min(max(self.x1, 0.0), float(width)),
            min(max(self.y1, 0.0), float(height)),
        )

    def to_int(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` rounded outward to whole pixels (a slice covers the box)."""
        return (math.floor(self.x0), math.floor(self.y0), math.ceil(self.x1), math.ceil(self.y1))

    def to_list(self) -> list[float]:
        return [round(self.x0, 2), round(self.y0, 2), round(self.x1, 2), round(self.y1, 2)]


@dataclass(frozen=True)
class Face:
    """One detected face."""

    box: Box
    #: ``(5, 2)`` float32: left eye, right eye, nose, left mouth corner, right mouth corner.
    landmarks: np.ndarray = field(repr=False)
    score: float = 1.0

    @property
    def roll_degrees(self) -> float:
        """``|atan((y_le − y_re) / (x_le − x_re))|`` in degrees (SPEC 1.2 step 3)."""
        (xl, yl), (xr, yr) = self.landmarks[0], self.landmarks[1]
        if xl == xr:
            return 90.0
        return abs(math.degrees(math.atan((yl - yr) / (xl - xr))))

    @property
    def angle_score(self) -> float:
        """``(90 − roll) / 90``: 1 for level eyes, 0 for a face on its side."""
        return (90.0 - self.roll_degrees) / 90.0

    def to_dict(self) -> dict:
        return {
            "box": self.box.to_list(),
            "landmarks": np.round(np.asarray(self.landmarks, dtype=float), 2).tolist(),
            "score": round(float(self.score), 4),
        }


@runtime_checkable
class FaceBackend(Protocol):
    """What every face backend (``lite``, ``full``) provides. All images RGB uint8 HWC."""

    #: ``"lite"`` or ``"full"``.
    name: str
    #: ``similarity(a, b) >= same_person_threshold`` ⇔ "same person" for this backend's recogniser.
    same_person_threshold: float

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces sorted left → right by ``box.x0``."""

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """Identity embedding (1-D float32) of ``face`` in ``image``."""

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Higher = more alike; compare with ``same_person_threshold`` only."""

    def part_masks(self, image: np.ndarray, face: Face, parts: Sequence[str]) -> np.ndarray:
        """Union of the named parts (see ``FACE_PARTS``) as a full-size ``(H, W)`` uint8 mask."""

    def saliency(self, image: np.ndarray) -> np.ndarray:
        """Portrait/salient-object mask, ``(H, W)`` uint8 0..255."""

    def fuse(self, template: np.ndarray, source: np.ndarray, ratio: float) -> np.ndarray:
        """Face fusion: the template's face takes the identity of ``source``'s face at ``ratio``."""

    def retouch(self, image: np.ndarray) -> np.ndarray:
        """Skin retouching of the whole image."""

    def super_resolve(self, image: np.ndarray) -> np.ndarray | None:
        """Portrait enhancement / SR; ``None`` when this backend has none."""

    def unload(self) -> None:
        """Release every loaded model."""
