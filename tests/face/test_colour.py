"""Reinhard Lab colour transfer (SPEC 2.7) on real photos."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from easyphoto.errors import InvalidRequest
from easyphoto.face.colour import lab_colour_transfer, lab_stats


def test_transfer_moves_lab_statistics_to_the_target(rgb):
    source, target = rgb("astronaut.png"), rgb("coffee.png")
    mean_t, std_t = lab_stats(target)
    mean_0, std_0 = lab_stats(source)
    out = lab_colour_transfer(source, target)
    assert out.shape == source.shape and out.dtype == np.uint8
    mean_1, std_1 = lab_stats(out)
    assert np.all(np.abs(mean_1 - mean_t) < np.abs(mean_0 - mean_t)), (mean_0, mean_1, mean_t)
    assert np.all(np.abs(std_1 - std_t) <= np.abs(std_0 - std_t)), (std_0, std_1, std_t)
    assert np.abs(mean_1 - mean_t).max() < 3.0 and np.abs(std_1 - std_t).max() < 3.0


def test_statistics_come_from_the_mask_region(rgb):
    # face crops (boxes from the detector), the same size; the mask is the central face ellipse
    source = rgb("obama.jpg")[79:422, 373:614]
    h, w = source.shape[:2]
    target = cv2.resize(rgb("biden.jpg")[170:571, 433:704], (w, h), interpolation=cv2.INTER_AREA)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 3, h // 3), 0, 0, 360, 255, -1)
    out = lab_colour_transfer(source, target, mask=mask)
    mean_t, std_t = lab_stats(target, mask)
    mean_0, _ = lab_stats(source, mask)
    mean_1, std_1 = lab_stats(out, mask)
    assert np.abs(mean_1 - mean_t).max() < 2.0, (mean_0, mean_1, mean_t)
    assert np.abs(std_1 - std_t).max() < 2.0, (std_1, std_t)
    # a different-sized target needs its own region
    small = cv2.resize(target, (w // 2, h // 2))
    with pytest.raises(InvalidRequest):
        lab_colour_transfer(source, small, mask=mask)
    region = np.full(small.shape[:2], 255, np.uint8)
    assert lab_colour_transfer(source, small, mask=mask, target_mask=region).shape == source.shape


def test_flat_source_takes_the_target_mean(rgb):
    source = np.full((32, 32, 3), 90, np.uint8)
    target = rgb("astronaut.png")
    out = lab_colour_transfer(source, target)
    mean_t, _ = lab_stats(target)
    mean_1, std_1 = lab_stats(out)
    assert np.abs(mean_1 - mean_t).max() < 2.0 and std_1.max() < 1.0


def test_empty_mask_means_whole_image(rgb):
    source, target = rgb("astronaut.png"), rgb("coffee.png")
    target = cv2.resize(target, (source.shape[1], source.shape[0]))
    empty = np.zeros(source.shape[:2], np.uint8)
    assert np.array_equal(lab_colour_transfer(source, target, mask=empty),
                          lab_colour_transfer(source, target))


def test_rejects_bad_inputs():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InvalidRequest):
        lab_colour_transfer(image.astype(np.float32), image)
    with pytest.raises(InvalidRequest):
        lab_colour_transfer(image, image, mask=np.zeros((4, 4), np.uint8))
