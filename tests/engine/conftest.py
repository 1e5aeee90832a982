"""Fixtures shared by the engine tests: a 64×64 real face crop and a centre mask."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

#: Side of the tiny engines' test images (px).
SIZE = 64


@pytest.fixture(scope="module")
def face(rgb) -> np.ndarray:
    """A 64×64 crop of a real portrait around the face (RGB uint8)."""
    photo = rgb("astronaut.png")
    return cv2.resize(photo[20:240, 120:340], (SIZE, SIZE), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def mask() -> np.ndarray:
    """The centre 32×32 square of the 64×64 image."""
    return np.pad(np.full((SIZE // 2, SIZE // 2), 255, np.uint8), SIZE // 4)
