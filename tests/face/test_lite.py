"""The lite face backend on real photos (fetched from PyPI packages, see tests/assets.py)."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from easyphoto.errors import FaceNotFound, InvalidRequest
from easyphoto.face import mesh, retina
from easyphoto.face.geometry import align_and_paste, box_mask, crop
from easyphoto.face.lite import FACE_REGION_PARTS, LiteBackend
from easyphoto.face.types import FACE_PARTS, Face, FaceBackend


@pytest.fixture(scope="module")
def backend():
    lite = LiteBackend()
    yield lite
    lite.unload()


def the_face(backend: LiteBackend, image: np.ndarray) -> Face:
    faces = backend.detect(image)
    assert len(faces) == 1, [f.to_dict() for f in faces]
    return faces[0]


def contains(mask: np.ndarray, point) -> bool:
    x, y = (int(v) for v in np.floor(point))
    return bool(mask[y, x])


def distance_to(mask: np.ndarray, point) -> float:
    """Distance (px) from ``point`` to the nearest set pixel of ``mask``."""
    ys, xs = np.nonzero(mask)
    return float(np.min(np.hypot(xs + 0.5 - point[0], ys + 0.5 - point[1])))


def test_implements_the_protocol():
    lite = LiteBackend()
    assert isinstance(lite, FaceBackend)
    assert lite.name == "lite" and lite.same_person_threshold == pytest.approx(0.4)
    assert lite.capabilities["super_resolution"] is False
    assert lite.super_resolve(np.zeros((8, 8, 3), np.uint8)) is None


def test_group_photo_six_faces_left_to_right(backend, rgb):
    faces = backend.detect(rgb("t1.jpg"))
    assert len(faces) == 6, [f.to_dict() for f in faces]
    xs = [f.box.x0 for f in faces]
    assert all(a < b for a, b in zip(xs, xs[1:])), xs
    assert all(f.score >= backend.score_threshold for f in faces)


@pytest.mark.parametrize("name", ["t1.jpg", "obama.jpg", "biden.jpg", "astronaut.png",
                                  "obama2.jpg"])
def test_landmarks_inside_box_and_in_order(backend, rgb, name):
    for face in backend.detect(rgb(name)):
        lm, box = face.landmarks, face.box
        assert lm.shape == (5, 2) and lm.dtype == np.float32
        assert np.all((lm[:, 0] > box.x0) & (lm[:, 0] < box.x1)), (name, face.to_dict())
        assert np.all((lm[:, 1] > box.y0) & (lm[:, 1] < box.y1)), (name, face.to_dict())
        (lex, ley), (rex, rey), (nx, ny), (mlx, mly), (mrx, mry) = lm
        assert lex < rex and mlx < mrx, (name, face.to_dict())
        assert max(ley, rey) < ny < min(mly, mry), (name, face.to_dict())
        assert not np.all(lm == np.round(lm)), "landmarks should keep sub-pixel precision"


@pytest.mark.parametrize("name", ["coffee.png", "grass.png"])
def test_no_face_in_photos_without_people(backend, rgb, name):
    assert backend.detect(rgb(name)) == []


@pytest.mark.parametrize("shape", [(1, 1, 3), (10, 10, 3), (10, 10), (1, 500, 3)])
def test_tiny_images_have_no_faces(backend, shape):
    assert backend.detect(np.full(shape, 128, np.uint8)) == []


def test_grey_and_rgba_input(backend, rgb):
    image = rgb("obama.jpg")
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    assert len(backend.detect(grey)) == 1 and len(backend.detect(rgba)) == 1
    with pytest.raises(InvalidRequest):
        backend.detect(image.astype(np.float32))


def test_big_image_detected_with_scaled_box(backend, rgb):
    image = rgb("obama3.jpg")
    small = the_face(backend, image)
    big_image = cv2.resize(image, None, fx=2.0, fy=2.0, interpolation=cv2.INTER_LINEAR)
    big = the_face(backend, big_image)
    expected = np.array([small.box.x0, small.box.y0, small.box.x1, small.box.y1]) * 2
    got = np.array([big.box.x0, big.box.y0, big.box.x1, big.box.y1])
    assert np.abs(got - expected).max() < 0.05 * small.box.width * 2, (got, expected)
    err = np.linalg.norm(big.landmarks - small.landmarks * 2, axis=1).mean()
    assert err < 0.03 * small.box.width * 2, err


@pytest.mark.parametrize("name", ["obama.jpg", "biden.jpg"])
@pytest.mark.parametrize("longer_side", [1500, 3000])
def test_close_up_filling_the_frame_is_one_face(backend, rgb, name, longer_side):
    image = rgb(name)
    face = the_face(backend, image)
    close_up, _ = crop(image, face.box)
    scale = longer_side / max(close_up.shape[:2])
    close_up = cv2.resize(close_up, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    found = the_face(backend, close_up)  # not split into eyes / nose / mouth "faces"
    (lex, _), (rex, _), _, (mlx, _), (mrx, _) = found.landmarks
    assert lex < rex and mlx < mrx
    assert found.box.width > 0.7 * close_up.shape[1], (found.box, close_up.shape)


def test_coarse_pass_leaves_ordinary_photos_alone(backend, rgb):
    for name in ("obama.jpg", "t1.jpg", "32bit.png"):
        image = rgb(name)
        fine, _ = retina.run_scale(backend._retinaface(), image, backend.max_side,
                                   backend.score_threshold, backend.nms_threshold)
        faces = backend.detect(image)
        order = np.argsort(fine.boxes[:, 0])
        assert np.allclose([f.landmarks for f in faces], fine.points[order], atol=1e-3), name


def test_identity_same_person_and_different_person(backend, rgb):
    def embedding(name):
        image = rgb(name)
        vector = backend.embed(image, the_face(backend, image))
        assert vector.shape == (128,) and vector.dtype == np.float32
        return vector

    obama = embedding("obama.jpg")
    same = {n: backend.similarity(obama, embedding(n)) for n in ("obama2.jpg", "obama3.jpg")}
    other = backend.similarity(obama, embedding("biden.jpg"))
    threshold = backend.same_person_threshold
    for name, sim in same.items():
        assert sim >= threshold, f"obama vs {name}: dlib distance {1 - sim:.3f} (need <= 0.6)"
    assert other < threshold, f"obama vs biden: dlib distance {1 - other:.3f} (need > 0.6)"
    assert backend.similarity(obama, obama) == pytest.approx(1.0)


def test_align_and_paste_lands_on_template_landmarks(backend, rgb):
    source = rgb("obama.jpg")
    height, width = source.shape[:2]
    rotate = cv2.getRotationMatrix2D((width / 2, height / 2), 12.0, 0.8)
    template = cv2.warpAffine(source, rotate, (width, height), borderValue=(40, 40, 40))
    template_face, source_face = the_face(backend, template), the_face(backend, source)
    pasted, mask = align_and_paste(template, template_face, source, source_face)
    assert pasted.shape == template.shape and mask.shape == template.shape[:2]
    redetected = the_face(backend, pasted)
    errors = np.linalg.norm(redetected.landmarks - template_face.landmarks, axis=1)
    assert errors.mean() <= 3.0, f"landmark errors after align_and_paste (px): {errors}"


def test_part_masks_cover_their_landmarks(backend, rgb):
    image = rgb("obama.jpg")
    face = the_face(backend, image)
    masks = {p: backend.part_masks(image, face, [p]) for p in FACE_PARTS}
    for name, m in masks.items():
        assert m.shape == image.shape[:2] and m.dtype == np.uint8, name
        assert set(np.unique(m)) <= {0, 255} and m.any(), name
    eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks
    assert contains(masks["eyes"], eye_l) and contains(masks["eyes"], eye_r)
    assert contains(masks["nose"], nose)
    lips_and_mouth = masks["lips"] | masks["mouth"]
    for corner in (mouth_l, mouth_r):  # mouth corners lie on the lip border
        assert distance_to(lips_and_mouth, corner) <= 3.0, corner
    area = {n: int((m > 0).sum()) for n, m in masks.items()}
    assert not (masks["eyes"] & masks["lips"]).any()
    assert (masks["eyes"] & masks["nose"]).sum() / 255 < 0.05 * area["eyes"]
    assert area["skin"] > 10 * area["eyes"] and area["skin"] > area["nose"], area
    for part in ("eyes", "brows", "nose", "mouth", "lips"):
        assert not (masks["skin"] & masks[part]).any(), part
    union = backend.part_masks(image, face, ["eyes", "lips"])
    assert np.array_equal(union, masks["eyes"] | masks["lips"])
    # ears sit left and right of the face, outside the skin
    ys, xs = np.nonzero(masks["ears"])
    margin = 0.15 * face.box.width
    assert xs.min() < face.box.x0 + margin and xs.max() > face.box.x1 - margin, (xs.min(), xs.max())


def test_part_masks_per_face_in_group_photo(backend, rgb):
    image = rgb("t1.jpg")
    for face in backend.detect(image):
        eyes = backend.part_masks(image, face, ["eyes"])
        region = box_mask(image.shape[:2], face.box.scaled(1.2))
        assert eyes.any() and not (eyes & ~region).any(), face.to_dict()
        assert backend.face_mesh(image, face) is not None, face.to_dict()


def test_part_masks_fall_back_to_landmarks(backend, rgb, monkeypatch, caplog):
    image = rgb("obama.jpg")
    face = the_face(backend, image)
    monkeypatch.setattr(backend, "face_mesh", lambda *_: None)
    with caplog.at_level(logging.WARNING, logger="easyphoto.face.lite"):
        masks = {p: backend.part_masks(image, face, [p]) for p in FACE_PARTS}
    assert "approximated from the 5 landmarks" in caplog.text
    eye_l, eye_r, nose, mouth_l, mouth_r = face.landmarks
    assert contains(masks["eyes"], eye_l) and contains(masks["eyes"], eye_r)
    assert contains(masks["nose"], nose)
    assert not (masks["eyes"] & masks["lips"]).any() and masks["skin"].sum() > masks["eyes"].sum()


def test_part_masks_reject_unknown_part(backend, rgb):
    image = rgb("astronaut.png")
    with pytest.raises(InvalidRequest, match="hair"):
        backend.part_masks(image, the_face(backend, image), ["hair"])


def test_mesh_contours_match_mediapipe_topology():
    from mediapipe.python.solutions import face_mesh_connections as connections

    def edges(loop):
        return {frozenset(pair) for pair in zip(loop, loop[1:] + loop[:1])}

    def as_set(connection_set):
        return {frozenset(pair) for pair in connection_set}

    assert edges(mesh.FACE_OVAL) == as_set(connections.FACEMESH_FACE_OVAL)
    assert edges(mesh.EYE_IMAGE_LEFT) == as_set(connections.FACEMESH_RIGHT_EYE)
    assert edges(mesh.EYE_IMAGE_RIGHT) == as_set(connections.FACEMESH_LEFT_EYE)
    assert edges(mesh.LIPS_OUTER) | edges(mesh.LIPS_INNER) == as_set(connections.FACEMESH_LIPS)
    brow_l = edges(mesh.BROW_IMAGE_LEFT) - {frozenset((55, 107)), frozenset((70, 46))}
    brow_r = edges(mesh.BROW_IMAGE_RIGHT) - {frozenset((285, 336)), frozenset((300, 276))}
    assert brow_l == as_set(connections.FACEMESH_RIGHT_EYEBROW)
    assert brow_r == as_set(connections.FACEMESH_LEFT_EYEBROW)


def test_saliency_covers_the_person(backend, rgb):
    image = rgb("obama.jpg")
    face = the_face(backend, image)
    sal = backend.saliency(image)
    assert sal.shape == image.shape[:2] and sal.dtype == np.uint8
    cx, cy = (int(v) for v in face.box.center)
    assert sal[cy, cx] > 200, sal[cy, cx]
    height, width = sal.shape
    k = max(4, min(height, width) // 10)
    corners = [sal[:k, :k], sal[:k, -k:]]
    assert max(float(c.mean()) for c in corners) < 60, [float(c.mean()) for c in corners]


def test_fusion_moves_identity_and_keeps_outside_pixels(backend, rgb):
    template, source = rgb("biden.jpg"), rgb("obama.jpg")
    obama = backend.embed(source, the_face(backend, source))
    target = the_face(backend, template)
    before = 1 - backend.similarity(backend.embed(template, target), obama)
    fused = backend.fuse(template, source, 0.6)
    assert fused.shape == template.shape and fused.dtype == np.uint8
    after = 1 - backend.similarity(backend.embed(fused, the_face(backend, fused)), obama)
    assert after < before - 0.15, f"dlib distance to obama: before {before:.3f}, after {after:.3f}"
    outside = box_mask(template.shape[:2], target.box.scaled(1.5)) == 0
    assert np.array_equal(fused[outside], template[outside])
    face_region = backend.part_masks(template, target, FACE_REGION_PARTS) == 0
    assert np.array_equal(fused[face_region], template[face_region])
    assert (fused != template).any()


def test_fusion_ratio_zero_and_missing_faces(backend, rgb):
    template, source = rgb("biden.jpg"), rgb("obama.jpg")
    assert np.array_equal(backend.fuse(template, source, 0.0), template)
    with pytest.raises(FaceNotFound, match="source"):
        backend.fuse(template, rgb("coffee.png"), 0.5)
    with pytest.raises(FaceNotFound, match="template"):
        backend.fuse(rgb("grass.png"), source, 0.5)
    with pytest.raises(InvalidRequest):
        backend.fuse(template, source, 1.5)


def test_retouch_smooths_skin_only(backend, rgb):
    image = rgb("obama.jpg")
    face = the_face(backend, image)
    out = backend.retouch(image)
    assert out.shape == image.shape and out.dtype == np.uint8
    skin = backend.part_masks(image, face, ["skin"]) > 0
    assert np.array_equal(out[~skin], image[~skin])

    def roughness(img):
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float64)
        return float(np.abs(cv2.Laplacian(grey, cv2.CV_64F))[skin].mean())

    assert roughness(out) < 0.8 * roughness(image), (roughness(out), roughness(image))
    no_face = rgb("coffee.png")
    assert np.array_equal(backend.retouch(no_face), no_face)


def test_unload_and_reload(rgb):
    lite = LiteBackend()
    image = rgb("astronaut.png")
    face = the_face(lite, image)
    first = lite.part_masks(image, face, ["eyes"])
    lite.saliency(image)
    lite.unload()
    assert lite._detector is None and lite._mesh is None and lite._segmenter is None
    assert np.array_equal(lite.part_masks(image, the_face(lite, image), ["eyes"]), first)
    lite.unload()
