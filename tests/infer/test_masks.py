"""Portrait masks (SPEC 2.5, 2.6, 2.7.3), blending and colour shift (2.7.1 / 2.7.4) on real
photos with the lite face backend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from infer_helpers import working_crop

from easyphoto.errors import InvalidRequest
from easyphoto.face.lite import LiteBackend
from easyphoto.infer import masks
from easyphoto.infer.colour_shift import colour_shift
from easyphoto.infer.masks import (
    FIRST_PARTS,
    FUSION_AFTER,
    FUSION_BEFORE,
    SHIFT_FIRST,
    SHIFT_LAST,
    blend,
    first_diffusion_mask,
    fusion_blend_mask,
    second_diffusion_mask,
    second_diffusion_mask_parts,
)


@pytest.fixture(scope="module")
def backend():
    lite = LiteBackend()
    yield lite
    lite.unload()


def one_face_crop(backend, image):
    """``working_crop`` of the only face: ``(crop, face)``."""
    crop, faces = working_crop(backend, image)
    assert len(faces) == 1
    return crop, faces[0]


@pytest.fixture(scope="module")
def obama(backend, rgb):
    return one_face_crop(backend, rgb("obama.jpg"))


def parts(backend, image, face, names):
    return backend.part_masks(image, face, tuple(names))


def ellipse(radius):
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def test_part_lists_follow_the_spec():
    assert FIRST_PARTS == ("skin", "brows", "eyes", "nose", "mouth", "lips")
    assert FUSION_BEFORE == FIRST_PARTS and SHIFT_FIRST == FIRST_PARTS
    assert FUSION_AFTER == ("skin", "brows", "eyes", "mouth", "lips")
    assert SHIFT_LAST == ("skin", "brows", "eyes", "nose")


def test_face_parts_mask_is_the_backend_union(obama, backend):
    crop, face = obama
    mask = masks.face_parts_mask(crop, face, backend, FIRST_PARTS)
    assert mask.shape == crop.shape[:2] and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask, parts(backend, crop, face, FIRST_PARTS))


def test_first_mask_covers_the_face_and_reaches_a_tenth_of_its_width(obama, backend):
    crop, face = obama
    mask = first_diffusion_mask(crop, face, backend)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    face_parts = parts(backend, crop, face, FIRST_PARTS)
    assert (mask[face_parts > 0] == 255).all()  # every face-part pixel is repainted
    with_ears = parts(backend, crop, face, FIRST_PARTS + ("ears",))
    assert (mask[with_ears > 0] == 255).all()
    # distance (px) of every pixel to the nearest face-part / ear pixel
    distance = cv2.distanceTransform((with_ears == 0).astype(np.uint8), cv2.DIST_L2, 5)
    radius = face.box.width / 10
    outline = (mask > 0) & (cv2.erode(mask, np.ones((3, 3), np.uint8)) == 0)
    assert abs(np.median(distance[outline]) - radius) <= 2, (np.median(distance[outline]), radius)
    assert distance[mask > 0].max() <= 2 * radius + 2  # closing adds at most one more radius
    assert ((distance > radius + 2) & (outline)).mean() < 0.05


def test_second_mask_is_ring_union_eyes_union_lips(obama, backend):
    crop, face = obama
    face_mask = parts(backend, crop, face, FIRST_PARTS)
    eyes, lips = (parts(backend, crop, face, (p,)) for p in ("eyes", "lips"))
    inner = cv2.erode(face_mask, ellipse(16))
    ring = cv2.subtract(cv2.dilate(face_mask, ellipse(32)), inner)
    expected = np.maximum(ring, np.maximum(eyes, lips))
    got = second_diffusion_mask(crop, face, backend)
    assert np.array_equal(got, expected)
    detail = second_diffusion_mask_parts(crop, face, backend)
    assert np.array_equal(detail.mask, got) and np.array_equal(detail.ring, ring)
    assert not (detail.ring[inner > 0]).any()  # no ring pixel deep inside the face
    # the ring reaches 32 px out of and 16 px into the face
    outside = cv2.distanceTransform((face_mask == 0).astype(np.uint8), cv2.DIST_L2, 5)
    assert 31 <= outside[ring > 0].max() <= 33
    without_mouth = second_diffusion_mask(crop, face, backend, mouth=False)
    assert np.array_equal(without_mouth, ring)
    deep_features = (inner > 0) & ((eyes > 0) | (lips > 0))
    assert deep_features.sum() > 500  # eyes and lips lie deep inside the face ...
    assert (got[deep_features] == 255).all() and not without_mouth[deep_features].any()


@pytest.fixture(scope="module")
def fusion(obama, backend, rgb):
    """``(template, fused, face)``: the Obama crop with Biden's face fused in by the lite
    backend (the same face box serves both)."""
    crop, face = obama
    fused = backend.fuse(crop, rgb("biden.jpg"), 1.0)
    assert (fused != crop).any()
    return crop, fused, face


@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_fusion_blend_mask_weights(fusion, backend, ratio):
    template, fused, face = fusion
    sharp = fusion_blend_mask(template, fused, face, face, backend, ratio, FUSION_BEFORE,
                              blur=False)
    assert sharp.dtype == np.float32 and sharp.shape == template.shape[:2]
    assert set(np.unique(sharp)) <= {0.0, np.float32(ratio), 1.0}
    lips_t = parts(backend, template, face, ("lips",))
    eyes_f = parts(backend, fused, face, ("eyes",))
    assert (sharp[lips_t > 0] == 0).all()  # lips stay from the template
    assert (sharp[eyes_f > 0] == 1).all()  # eyes of the fused face at full weight
    elsewhere = (eyes_f == 0)
    assert (sharp[elsewhere] <= ratio).all()
    both = cv2.bitwise_and(parts(backend, template, face, FUSION_BEFORE),
                           parts(backend, fused, face, FUSION_BEFORE))
    # dilate 8 then erode 16: all of the shared face 9 px or more inside its border takes `ratio`
    skin = parts(backend, template, face, ("skin",))
    inside = (cv2.erode(both, ellipse(9)) > 0) & (skin > 0) & elsewhere
    assert inside.sum() > 10000 and (sharp[inside] == np.float32(ratio)).all()
    assert not sharp[(cv2.erode(cv2.dilate(both, ellipse(8)), ellipse(16)) == 0) & elsewhere].any()
    reach = cv2.dilate(both, ellipse(8))
    assert not sharp[(reach == 0) & elsewhere].any()  # 0 outside the dilated parts
    soft = fusion_blend_mask(template, fused, face, face, backend, ratio, FUSION_BEFORE)
    assert np.allclose(soft, cv2.blur(sharp, (8, 8), borderType=cv2.BORDER_REPLICATE), atol=1e-6)
    assert 0 <= soft.min() and soft.max() <= 1


def test_fusion_after_leaves_the_nose_to_the_template(fusion, backend):
    template, fused, face = fusion
    nose = cv2.erode(parts(backend, template, face, ("nose",)), ellipse(12))
    assert nose.sum() > 0
    before = fusion_blend_mask(template, fused, face, face, backend, 0.5, FUSION_BEFORE, blur=False)
    after = fusion_blend_mask(template, fused, face, face, backend, 0.5, FUSION_AFTER, blur=False)
    assert (before[nose > 0] == 0.5).all() and not after[nose > 0].any()


def test_blend_is_exact(fusion):
    template, fused, _ = fusion
    height, width = template.shape[:2]
    m = np.zeros((height, width), np.float32)
    m[:, width // 3:2 * width // 3] = 0.5
    m[:, 2 * width // 3:] = 1.0
    out = blend(template, fused, m)
    third = width // 3
    assert np.array_equal(out[:, :third], template[:, :third])
    assert np.array_equal(out[:, 2 * third:], fused[:, 2 * third:])
    mid = np.rint((template[:, third:2 * third].astype(np.float32)
                   + fused[:, third:2 * third]) / 2)
    assert np.abs(out[:, third:2 * third].astype(int) - mid).max() <= 1
    with pytest.raises(InvalidRequest):
        blend(template, fused, m[:-1])


def lab_mean(image, mask):
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float64)
    return lab[mask].mean(axis=0)


@pytest.mark.parametrize("shift_parts", [SHIFT_FIRST, SHIFT_LAST])
def test_colour_shift_pulls_the_face_to_the_reference(obama, backend, shift_parts):
    reference, face = obama
    cast = np.clip(reference.astype(np.int16) + np.array([28, -6, -30]), 0, 255).astype(np.uint8)
    out = colour_shift(cast, reference, face, backend, shift_parts)
    assert out.shape == cast.shape and out.dtype == np.uint8
    weight = masks.box_blur(parts(backend, cast, face, shift_parts), 32)
    assert np.array_equal(out[weight == 0], cast[weight == 0])  # untouched outside the mask
    core = weight >= 0.999
    before = np.linalg.norm(lab_mean(cast, core) - lab_mean(reference, core))
    after = np.linalg.norm(lab_mean(out, core) - lab_mean(reference, core))
    assert before > 10 and after < 0.3 * before, (before, after)
    changed = np.any(out != cast, axis=2)
    assert changed[core].mean() > 0.9 and not changed[weight == 0].any()


def test_colour_shift_checks_sizes(obama, backend):
    crop, face = obama
    with pytest.raises(InvalidRequest):
        colour_shift(crop, crop[:-32], face, backend, SHIFT_FIRST)
