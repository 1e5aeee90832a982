"""ControlNet inputs (SPEC 2.6 / 2.7.3) on real portrait crops with the lite face backend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from easyphoto.errors import InvalidRequest
from easyphoto.face.lite import LiteBackend
from easyphoto.infer import controls
from easyphoto.infer.controls import (
    L_EYE,
    L_SHOULDER,
    NECK,
    NOSE,
    R_EYE,
    R_SHOULDER,
    canny,
    color_layout,
    keypoint_colour,
    openpose,
    tile,
)

WHITE = (255, 255, 255)
from infer_helpers import working_crop


@pytest.fixture(scope="module")
def backend():
    lite = LiteBackend()
    yield lite
    lite.unload()




@pytest.fixture(scope="module")
def obama(backend, rgb):
    crop, faces = working_crop(backend, rgb("obama.jpg"))
    assert len(faces) == 1
    return crop, faces[0]


def disc_pixels(image, centre, radius):
    """The pixels of ``image`` within ``radius`` of ``centre`` (x, y), as an ``(N, 3)`` array."""
    ys, xs = np.mgrid[:image.shape[0], :image.shape[1]]
    cx, cy = (int(round(v)) for v in centre)
    return image[(xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2]


def count_colour(pixels, colour):
    return int(np.all(pixels == np.array(colour, np.uint8), axis=-1).sum())


# ---- canny, colour layout, tile -----------------------------------------------------------
def test_canny_is_opencv_canny_100_200_in_three_channels(obama):
    crop, _ = obama
    edges = canny(crop)
    expected = cv2.Canny(crop, 100, 200)
    assert edges.shape == crop.shape and edges.dtype == np.uint8
    assert np.array_equal(edges, np.repeat(expected[:, :, None], 3, axis=2))
    assert set(np.unique(edges)) == {0, 255} and 0.01 < (edges[:, :, 0] > 0).mean() < 0.5


@pytest.mark.parametrize("size", [(480, 480), (512, 480), (500, 333)])
def test_colour_layout_is_24px_blocks_of_the_cubic_downscale(obama, size):
    crop, _ = obama
    image = np.ascontiguousarray(crop[:size[0], :size[1]])
    layout = color_layout(image)
    assert layout.shape == image.shape and layout.dtype == np.uint8
    rows, cols = -(-size[0] // 24), -(-size[1] // 24)
    small = layout[::24, ::24]
    assert small.shape[:2] == (rows, cols)
    blocks = np.repeat(np.repeat(small, 24, axis=0), 24, axis=1)[:size[0], :size[1]]
    assert np.array_equal(layout, blocks)  # piecewise constant on 24 × 24 blocks
    if size[0] % 24 == 0 and size[1] % 24 == 0:  # no padding: exactly OpenCV's ÷24 bicubic
        assert np.array_equal(small, cv2.resize(image, (cols, rows),
                                                interpolation=cv2.INTER_CUBIC))
    # the block means of the layout are the cubic ÷24 samples, which (OpenCV's bicubic does not
    # low-pass) are the photo around each block's centre: px 24·i + 10 … 24·i + 13
    full_rows, full_cols = size[0] // 24, size[1] // 24
    means = layout[:full_rows * 24, :full_cols * 24].reshape(
        full_rows, 24, full_cols, 24, 3).mean(axis=(1, 3))
    assert np.array_equal(means, small[:full_rows, :full_cols].astype(float))
    centres = image[:full_rows * 24, :full_cols * 24].reshape(
        full_rows, 24, full_cols, 24, 3)[:, 10:14, :, 10:14].mean(axis=(1, 3))
    error = np.abs(centres - means)
    assert np.median(error) < 2 and error.mean() < 4, (np.median(error), error.mean())


def test_tile_is_the_image_itself(obama):
    crop, _ = obama
    out = tile(crop)
    assert np.array_equal(out, crop) and out is not crop
    with pytest.raises(InvalidRequest):
        tile(crop[:, :, 0])


def test_colours_are_the_openpose_hue_wheel():
    assert keypoint_colour(0) == (255, 0, 0) and keypoint_colour(1) == (255, 85, 0)
    assert keypoint_colour(9) == (0, 255, 255) and keypoint_colour(12) == (0, 0, 255)
    assert keypoint_colour(14) == (170, 0, 255) and keypoint_colour(17) == (255, 0, 85)
    assert len({keypoint_colour(k) for k in range(18)}) == 18


# ---- openpose rendered from landmarks -----------------------------------------------------
def test_openpose_from_landmarks_and_mesh(obama, backend):
    crop, face = obama
    control, source = openpose(crop, [face], backend=backend)
    assert source == controls.SOURCE_LANDMARKS == "landmarks"
    assert control.shape == crop.shape and control.dtype == np.uint8
    lm = face.landmarks
    body = controls.landmark_body(face, backend.face_mesh(crop, face))
    for k, point in ((NOSE, lm[2]), (R_EYE, lm[0]), (L_EYE, lm[1]), (NECK, body[NECK]),
                     (R_SHOULDER, body[R_SHOULDER]), (L_SHOULDER, body[L_SHOULDER])):
        pixels = disc_pixels(control, point, 4)
        # the keypoint's own colour fills its disc (the centre of nose / eyes may carry a white
        # face dot on top, as in OpenPose's own renderings)
        assert count_colour(pixels, keypoint_colour(k)) >= 10, k
        assert count_colour(pixels, keypoint_colour(k)) + count_colour(pixels, WHITE) >= 0.8 * len(
            pixels), k
    dots = controls.face_dots_from_mesh(backend.face_mesh(crop, face))
    assert dots.shape == (70, 2)
    for x, y in dots:  # every face dot is drawn white, on top
        assert tuple(control[int(round(y)), int(round(x))]) == WHITE
    assert (control.sum(axis=2) > 0).mean() < 0.1  # a sparse skeleton on black
    assert not control[:20].any()  # nothing above the head


def test_openpose_without_a_mesh_uses_the_five_points(obama):
    crop, face = obama
    control, source = openpose(crop, [face], backend=None, with_shoulders=False)
    assert source == "landmarks"
    for x, y in face.landmarks:
        assert tuple(control[int(round(y)), int(round(x))]) == WHITE
    assert count_colour(disc_pixels(control, face.landmarks[2], 4), keypoint_colour(NOSE)) >= 10
    assert count_colour(control.reshape(-1, 3), keypoint_colour(NECK)) == 0  # no neck drawn


def test_two_faces_give_two_skeletons(backend, rgb):
    group = rgb("t1.jpg")
    crop = group[80:500, 200:650]  # the 2nd and 3rd person of six, at a 512 px short side
    crop = cv2.resize(crop, (548, 512), interpolation=cv2.INTER_LANCZOS4)
    faces = backend.detect(crop)
    assert len(faces) == 2
    control, source = openpose(crop, faces, backend=backend)
    assert source == "landmarks"
    for face in faces:
        for k, point in ((NOSE, face.landmarks[2]), (R_EYE, face.landmarks[0]),
                         (L_EYE, face.landmarks[1])):
            pixels = disc_pixels(control, point, 4)  # small faces: dense white face dots on top
            own, white = count_colour(pixels, keypoint_colour(k)), count_colour(pixels, WHITE)
            assert own >= 3 and own + white >= 0.7 * len(pixels), (k, own, white)
    necks = np.all(control == np.array(keypoint_colour(NECK), np.uint8), axis=2)
    count, _ = cv2.connectedComponents(necks.astype(np.uint8))
    assert count - 1 == 2  # one neck per skeleton


def test_openpose_with_no_face_is_black(obama):
    crop, _ = obama
    control, source = openpose(crop, [], backend=None)
    assert source == "landmarks" and not control.any()


class FakeDetector:
    """Stands in for the OpenPose body network: returns one fixed person."""

    def __init__(self, people):
        self.people, self.calls = people, 0

    def detect(self, image):
        self.calls += 1
        return self.people


def test_openpose_renders_detected_bodies_and_reports_the_detector(obama, backend):
    crop, face = obama
    person = np.full((18, 3), np.nan)
    person[NOSE], person[NECK] = (240, 200, 0.9), (240, 330, 0.9)
    person[R_SHOULDER] = (120, 335, 0.8)
    fake = FakeDetector([person])
    control, source = openpose(crop, [face], backend=backend, detector=fake)
    assert source == controls.SOURCE_DETECTOR == "openpose-detector" and fake.calls == 1
    assert count_colour(disc_pixels(control, (120, 335), 4), keypoint_colour(R_SHOULDER)) >= 30
    assert count_colour(control.reshape(-1, 3), keypoint_colour(L_SHOULDER)) == 0  # not detected
    nobody = FakeDetector([])
    _, source = openpose(crop, [face], backend=backend, detector=nobody)
    assert source == "landmarks" and nobody.calls == 1  # the network found nobody: fallback
