"""The OpenPose body network: architecture, safe loading, decoding — without the real weights.

The published ``body_pose_model.pth`` is not available here (no download in tests), so these
tests prove the architecture (parameter count against the registry's file size, layer names,
output shapes), the ``weights_only`` loader with a random state dict, the decoding on synthetic
heatmaps / PAFs, and the ``openpose`` control's switch to the network when the file is present.
Whether the real file's outputs decode to correct skeletons is not tested here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from easyphoto.errors import ModelUnavailable
from easyphoto.infer import controls, openpose_body
from easyphoto.infer.openpose_body import (ASSEMBLY_LIMBS, PAF_CHANNELS, BodyPoseDetector,
                                           BodyPoseNet, assemble_people, connect_limbs,
                                           find_peaks, load_body_net)
from easyphoto.weights import ModelStore
from easyphoto.weights_registry import REGISTRY


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return BodyPoseNet().eval()


def test_architecture_matches_the_published_file(net):
    state = net.state_dict()
    params = sum(t.numel() for t in state.values())
    published = REGISTRY[controls.BODY_ROLE].size  # bytes of body_pose_model.pth (float32)
    # 52.3 M float32 parameters; the rest of the file is the pickle's per-tensor framing
    assert 0 < published - 4 * params < 200 * len(state), (published, 4 * params)
    assert len(state) == 2 * (12 + 2 * 5 + 5 * 2 * 7)  # 12 front convs + 6 stages × 2 branches
    for key in ("conv1_1.weight", "conv4_4_CPM.bias", "conv5_5_CPM_L1.weight",
                "conv5_5_CPM_L2.weight", "Mconv1_stage2_L1.weight", "Mconv7_stage6_L2.bias"):
        assert key in state
    assert state["Mconv1_stage2_L1.weight"].shape == (128, 185, 7, 7)
    assert state["Mconv7_stage6_L1.weight"].shape == (38, 128, 1, 1)
    assert state["Mconv7_stage6_L2.weight"].shape == (19, 128, 1, 1)
    with torch.inference_mode():
        paf, heat = net(torch.zeros(1, 3, 64, 48))
    assert paf.shape == (1, 38, 8, 6) and heat.shape == (1, 19, 8, 6)


def test_random_state_dict_round_trips_with_weights_only(net, tmp_path):
    path = tmp_path / "body_pose_model.pth"
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, path)
    loaded = load_body_net(path)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    detector = BodyPoseDetector(loaded, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    heat, paf = detector.maps(image)
    assert heat.shape == (96, 128, 19) and paf.shape == (96, 128, 38)
    assert heat.dtype == np.float32 and np.isfinite(heat).all() and np.isfinite(paf).all()
    people = detector.detect(image)
    assert isinstance(people, list) and all(p.shape == (18, 3) for p in people)


class NotATensor:
    """A pickled object of a foreign class: ``weights_only`` loading must refuse it."""


def test_loader_refuses_code_and_foreign_state_dicts(tmp_path):
    pickled = tmp_path / "evil.pth"
    torch.save({"conv1_1.weight": NotATensor()}, pickled)
    with pytest.raises(ModelUnavailable, match="cannot read"):
        load_body_net(pickled)
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(ModelUnavailable, match="not the OpenPose body model"):
        load_body_net(other)


def synthetic_maps(people, shape=(200, 240)):
    """Heatmaps (Gaussian σ 4 at each keypoint) and PAFs (unit vectors within 3 px of each limb)
    of ``people`` (lists of 18 ``(x, y)`` or None), at image resolution."""
    height, width = shape
    heat = np.zeros((height, width, 19), np.float32)
    paf = np.zeros((height, width, 38), np.float32)
    ys, xs = np.mgrid[:height, :width].astype(np.float32)
    for person in people:
        for k, point in enumerate(person):
            if point is not None:
                blob = np.exp(-((xs - point[0]) ** 2 + (ys - point[1]) ** 2) / (2 * 4.0 ** 2))
                heat[:, :, k] = np.maximum(heat[:, :, k], blob)
        for (a, b), (cx, cy) in zip(ASSEMBLY_LIMBS, PAF_CHANNELS):
            if person[a] is None or person[b] is None:
                continue
            pa, pb = np.array(person[a], np.float32), np.array(person[b], np.float32)
            unit = (pb - pa) / np.linalg.norm(pb - pa)
            t = np.clip(((xs - pa[0]) * unit[0] + (ys - pa[1]) * unit[1]) / np.linalg.norm(pb - pa),
                        0, 1)
            near = np.hypot(xs - (pa[0] + t * (pb - pa)[0]), ys - (pa[1] + t * (pb - pa)[1])) <= 3
            paf[near, cx], paf[near, cy] = unit[0], unit[1]
    return heat, paf


def test_decoding_recovers_two_synthetic_people():
    def person(dx):
        points = [None] * 18
        for k, (x, y) in {0: (60, 50), 1: (60, 90), 2: (35, 92), 5: (85, 92), 14: (52, 42),
                          15: (68, 42), 16: (44, 48), 17: (76, 48), 3: (28, 130)}.items():
            points[k] = (x + dx, y)
        return points

    truth = [person(0), person(120)]
    heat, paf = synthetic_maps(truth)
    peaks = find_peaks(heat)
    assert [len(p) for p in peaks[:2]] == [2, 2]
    people = assemble_people(peaks, connect_limbs(peaks, paf))
    assert len(people) == 2
    people.sort(key=lambda p: p[0, 0])
    for found, expected in zip(people, truth):
        for k, point in enumerate(expected):
            if point is None:
                assert np.isnan(found[k]).all(), k
            else:
                assert np.hypot(*(found[k, :2] - point)) <= 1.0, (k, found[k], point)


def test_openpose_runs_the_network_when_its_weights_are_present(net, tmp_path, monkeypatch, rgb):
    store = ModelStore(tmp_path)
    path = store.path(controls.BODY_ROLE)
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    seen = []
    real_loader = openpose_body.load_body_detector

    def spy(where, device=None):
        seen.append(where)
        return real_loader(where, device="cpu")

    monkeypatch.setattr(openpose_body, "load_body_detector", spy)
    image = np.ascontiguousarray(rgb("obama.jpg")[::4, ::4])
    control, source = controls.openpose(image, [], store)
    assert seen == [path]  # the network was loaded from the store and run
    # random weights find nobody: the control falls back to the landmark rendering (no faces)
    assert source == "landmarks" and control.shape == image.shape and not control.any()
    assert controls.openpose(image, [], ModelStore(tmp_path / "empty"))[1] == "landmarks"
    assert controls.load_openpose_detector(ModelStore(tmp_path / "empty")) is None
    assert controls.load_openpose_detector(None) is None
