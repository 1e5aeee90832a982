"""The backends' result memo (repeated detections / meshes of the same pixels) and the
detector's OpenCV input blob, on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from easyphoto.face import retina
from easyphoto.face.lite import LiteBackend
from easyphoto.face.memo import ResultMemo, image_key


def test_memo_is_an_lru_keyed_by_pixels_and_extra_key():
    memo, calls = ResultMemo(size=2), []

    def answer(value):
        return lambda: calls.append(value) or value

    a, b, c = (np.full((4, 4, 3), v, np.uint8) for v in (1, 2, 3))
    assert memo.get("q", a, 0, answer("a")) == "a"
    assert memo.get("q", a.copy(), 0, answer("again")) == "a"  # same bytes, other array
    assert memo.get("q", a, 1, answer("a1")) == "a1"  # another extra key
    assert memo.get("other", a, 0, answer("o")) == "o"  # another question
    assert len(memo) == 2 and calls == ["a", "a1", "o"]
    memo.get("q", b, 0, answer("b"))
    memo.get("q", c, 0, answer("c"))
    assert memo.get("q", a, 1, answer("a1 again")) == "a1 again"  # evicted, recomputed
    assert memo.hits == 1 and memo.misses == 6


def test_image_key_sees_one_changed_pixel_and_the_shape():
    image = np.zeros((8, 8, 3), np.uint8)
    changed = image.copy()
    changed[7, 7, 2] = 1
    assert image_key(image) != image_key(changed)
    assert image_key(image) != image_key(image.reshape(16, 4, 3))
    assert image_key(image[:, ::-1]) == image_key(np.ascontiguousarray(image[:, ::-1]))


def test_lite_detect_repeats_come_from_the_memo(rgb, monkeypatch):
    backend = LiteBackend()
    image = rgb("obama.jpg")
    first = backend.detect(image)
    runs = []
    real = retina.detect
    monkeypatch.setattr(retina, "detect", lambda *a, **k: runs.append(1) or real(*a, **k))
    again = backend.detect(image.copy())
    assert runs == [] and backend.memo.hits >= 1
    assert [f.to_dict() for f in again] == [f.to_dict() for f in first]
    again.clear()  # the caller's list is its own
    assert len(backend.detect(image)) == len(first) == 1
    with pytest.raises(ValueError):  # handed-out landmarks cannot corrupt the memo
        first[0].landmarks[0, 0] = 0
    touched = image.copy()
    touched[0, 0] ^= 1
    backend.detect(touched)  # one pixel differs: detected again
    assert runs == [1]
    backend.score_threshold = 0.99  # another setting: detected again
    backend.detect(image)
    assert runs == [1, 1]
    backend.unload()
    assert len(backend.memo) == 0


def test_lite_part_masks_reuse_one_face_mesh(rgb, monkeypatch):
    pytest.importorskip("mediapipe")
    backend = LiteBackend()
    image = rgb("obama.jpg")
    face = backend.detect(image)[0]
    meshes = []
    real = backend._face_mesh_points
    monkeypatch.setattr(backend, "_face_mesh_points",
                        lambda *a: meshes.append(1) or real(*a))
    skin = backend.part_masks(image, face, ["skin"])
    eyes = backend.part_masks(image, face, ["eyes"])
    assert meshes == [1]
    assert skin.any() and eyes.any() and not np.array_equal(skin, eyes)
    points = backend.face_mesh(image, face)
    assert points is not None and points.shape == (478, 2) and not points.flags.writeable


@pytest.mark.parametrize("max_side", [1280, 640, 160])
@pytest.mark.parametrize("name", ["obama.jpg", "t1.jpg"])
def test_network_input_equals_the_numpy_definition(rgb, name, max_side):
    """The OpenCV blob (pad with the mean colour, swap, subtract) equals the definition:
    BGR float minus the mean, zero-padded right/bottom to multiples of 32."""
    image = rgb(name)
    blob, scale = retina.network_input(image, max_side)
    height, width = image.shape[:2]
    factor = min(1.0, max_side / max(height, width))
    if factor < 1.0:
        import cv2

        image = cv2.resize(image, (max(1, round(width * factor)), max(1, round(height * factor))),
                           interpolation=cv2.INTER_AREA)
    rows, cols = image.shape[:2]
    expected = np.zeros((1, 3, -(-rows // 32) * 32, -(-cols // 32) * 32), np.float32)
    expected[0, :, :rows, :cols] = (image[:, :, ::-1].astype(np.float32)
                                    - np.float32(retina.BGR_MEAN)).transpose(2, 0, 1)
    assert blob.dtype == np.float32 and blob.shape == expected.shape
    assert np.array_equal(blob, expected)
    assert scale == (cols / width, rows / height)
