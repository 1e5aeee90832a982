"""The OpenPose body-pose network (COCO-18 keypoints + part affinity fields) and its decoding.

Written from the published architecture (Cao et al., "Realtime Multi-Person 2D Pose Estimation
using Part Affinity Fields", CVPR 2017, and the CMU COCO model's layer table):

* front end: the first ten convolutions of VGG-19 (``conv1_1`` … ``conv4_2``, 3 × 3, three 2 × 2
  max-pools, so the stride is 8) and two 3 × 3 adapters ``conv4_3_CPM`` (256) / ``conv4_4_CPM``
  (128) — the feature map **F**;
* stage 1: two branches on **F**, each three 3 × 3 convs (128), a 1 × 1 (512) and a 1 × 1 output:
  ``L1`` = 38 PAF channels (19 limbs × (x, y)), ``L2`` = 19 heatmaps (18 parts + background);
  layer names ``conv5_{1..5}_CPM_L{1,2}``;
* stages 2-6: each branch takes ``concat(L1, L2, F)`` (185 channels): five 7 × 7 convs (128), a
  1 × 1 (128) and a 1 × 1 output; names ``Mconv{1..7}_stage{t}_L{1,2}``.

Every conv but the branch outputs is followed by a ReLU. Parameters are named exactly like the
layers above, so the published ``body_pose_model.pth`` state dict (registry role
``annotator_openpose_body``) loads with ``strict=True`` through ``torch.load(weights_only=True)``.

Decoding (:meth:`BodyPoseDetector.detect`): the image (BGR, ``x/256 − 0.5``) is scaled so its
height is ``0.5 × 368`` px (the ControlNet annotator's setting), padded to a multiple of 8 with
128, the outputs are upsampled back to the image; heatmap peaks (Gaussian σ 3, local maxima over
0.1) are paired along each limb by the mean PAF component along the segment (10 samples, 80 %
over 0.05, with a length prior), greedily per limb, then merged into people; people with fewer
than 4 parts or a mean score under 0.4 are dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np
import torch
from torch import nn

from ..errors import ModelUnavailable
from .controls import LIMBS, NUM_KEYPOINTS

logger = logging.getLogger(__name__)

#: limbs scored by the PAFs: the 17 drawn limbs + shoulder→ear on each side (assembly only).
ASSEMBLY_LIMBS: tuple[tuple[int, int], ...] = LIMBS + ((2, 16), (5, 17))
#: the trained model's (x, y) PAF channels of each limb of ``ASSEMBLY_LIMBS`` (the CMU COCO
#: model orders its 19 PAFs differently from the drawing order).
PAF_CHANNELS: tuple[tuple[int, int], ...] = (
    (12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7),
    (8, 9), (10, 11), (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27))
PAF_OUT, HEAT_OUT, FEATURES = 38, 19, 128
STAGES = 6
#: front end: (name, in, out) 3 × 3 convs, ``None`` = 2 × 2 max-pool.
_FRONT = (("conv1_1", 3, 64), ("conv1_2", 64, 64), None, ("conv2_1", 64, 128),
          ("conv2_2", 128, 128), None, ("conv3_1", 128, 256), ("conv3_2", 256, 256),
          ("conv3_3", 256, 256), ("conv3_4", 256, 256), None, ("conv4_1", 256, 512),
          ("conv4_2", 512, 512), ("conv4_3_CPM", 512, 256), ("conv4_4_CPM", 256, FEATURES))


def _branch_layers(stage: int, branch: int) -> list[tuple[str, int, int, int]]:
    """``(name, in, out, kernel)`` of one branch (``branch`` 1 = PAF, 2 = heatmap) of a stage."""
    out = PAF_OUT if branch == 1 else HEAT_OUT
    if stage == 1:
        sizes = [(FEATURES, 128, 3), (128, 128, 3), (128, 128, 3), (128, 512, 1), (512, out, 1)]
        return [(f"conv5_{i + 1}_CPM_L{branch}", *s) for i, s in enumerate(sizes)]
    sizes = ([(PAF_OUT + HEAT_OUT + FEATURES, 128, 7)] + [(128, 128, 7)] * 4
             + [(128, 128, 1), (128, out, 1)])
    return [(f"Mconv{i + 1}_stage{stage}_L{branch}", *s) for i, s in enumerate(sizes)]


class BodyPoseNet(nn.Module):
    """OpenPose COCO body network (see the module doc). ``forward``: ``(N, 3, H, W)`` float
    (BGR, ``x/256 − 0.5``, H and W multiples of 8) → ``(paf (N, 38, H/8, W/8),
    heat (N, 19, H/8, W/8))``."""

    def __init__(self) -> None:
        super().__init__()
        self.front_order: list[Optional[str]] = []
        for layer in _FRONT:
            if layer is None:
                self.front_order.append(None)
                continue
            name, cin, cout = layer
            self.add_module(name, nn.Conv2d(cin, cout, 3, padding=1))
            self.front_order.append(name)
        self.branches: list[tuple[list[str], list[str]]] = []
        for stage in range(1, STAGES + 1):
            names = []
            for branch in (1, 2):
                layers = _branch_layers(stage, branch)
                for name, cin, cout, k in layers:
                    self.add_module(name, nn.Conv2d(cin, cout, k, padding=k // 2))
                names.append([name for name, *_ in layers])
            self.branches.append((names[0], names[1]))

    def _run(self, names: Sequence[str], x: torch.Tensor) -> torch.Tensor:
        for i, name in enumerate(names):
            x = getattr(self, name)(x)
            if i < len(names) - 1:
                x = torch.relu(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for name in self.front_order:
            x = nn.functional.max_pool2d(x, 2, 2) if name is None else torch.relu(
                getattr(self, name)(x))
        features, state = x, x
        for paf_names, heat_names in self.branches:
            paf, heat = self._run(paf_names, state), self._run(heat_names, state)
            state = torch.cat([paf, heat, features], dim=1)
        return paf, heat


def load_body_net(path: Union[str, Path]) -> BodyPoseNet:
    """A :class:`BodyPoseNet` with the state dict at ``path`` (a ``.pth`` of tensors, read with
    ``torch.load(weights_only=True)``: no pickled code runs). Keys may carry a ``module.``
    prefix. A file of another architecture → :class:`ModelUnavailable` naming the differences."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, truncated or not a plain tensor file
        raise ModelUnavailable(f"cannot read the OpenPose body weights {path}: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in dict(state).items()}
    net = BodyPoseNet()
    expected = set(net.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelUnavailable(f"{path} is not the OpenPose body model: missing {missing[:4]}, "
                               f"unexpected {unexpected[:4]} ({len(missing)}/{len(unexpected)})")
    net.load_state_dict(state, strict=True)
    return net.eval()


def find_peaks(heat: np.ndarray, threshold: float = 0.1, sigma: float = 3.0,
               max_peaks: int = 32) -> list[np.ndarray]:
    """Per body part, ``(n, 3)`` float arrays ``(x, y, score)`` of heatmap peaks.

    ``heat``: ``(H, W, ≥18)`` heatmaps at image resolution. A peak is a pixel of the σ-smoothed
    map that is ≥ its 4 neighbours and > ``threshold``; its score is the raw heatmap value. At
    most ``max_peaks`` per part are kept (the highest): limb pairing is quadratic in the count,
    and a real heatmap has one peak per visible person.
    """
    peaks = []
    for part in range(NUM_KEYPOINTS):
        raw = np.ascontiguousarray(heat[:, :, part], dtype=np.float32)
        smooth = cv2.GaussianBlur(raw, (0, 0), sigma)
        pad = np.pad(smooth, 1, constant_values=-np.inf)
        is_peak = ((smooth >= pad[1:-1, :-2]) & (smooth >= pad[1:-1, 2:])
                   & (smooth >= pad[:-2, 1:-1]) & (smooth >= pad[2:, 1:-1]) & (smooth > threshold))
        ys, xs = np.nonzero(is_peak)
        found = np.stack([xs, ys, raw[ys, xs]], axis=1).astype(np.float64)
        peaks.append(found[np.argsort(-found[:, 2], kind="stable")[:max_peaks]])
    return peaks


def _pair_score(pa: np.ndarray, pb: np.ndarray, field: np.ndarray, height: int,
                threshold: float, samples: int) -> Optional[float]:
    """Line-integral score of a candidate limb ``pa → pb`` over its ``(H, W, 2)`` PAF, or
    ``None`` when fewer than 80 % of the samples point along the limb."""
    vec = pb[:2] - pa[:2]
    norm = float(np.hypot(*vec))
    if norm < 1e-6:
        return None
    ts = np.linspace(0.0, 1.0, samples)
    xs = np.clip(np.rint(pa[0] + ts * vec[0]).astype(int), 0, field.shape[1] - 1)
    ys = np.clip(np.rint(pa[1] + ts * vec[1]).astype(int), 0, field.shape[0] - 1)
    along = field[ys, xs] @ (vec / norm)
    score = float(along.mean()) + min(0.5 * height / norm - 1.0, 0.0)
    if np.count_nonzero(along > threshold) <= 0.8 * samples or score <= 0:
        return None
    return score


def connect_limbs(peaks: Sequence[np.ndarray], paf: np.ndarray, threshold: float = 0.05,
                  samples: int = 10) -> list[list[tuple[int, int, float]]]:
    """Per limb of ``ASSEMBLY_LIMBS``, the chosen ``(peak index in part A, in part B, score)``:
    candidates sorted by score, taken greedily while neither end is used yet. ``paf``:
    ``(H, W, 38)`` at image resolution."""
    connections = []
    for (a, b), (cx, cy) in zip(ASSEMBLY_LIMBS, PAF_CHANNELS):
        field = paf[:, :, [cx, cy]]
        candidates = []
        for i, pa in enumerate(peaks[a]):
            for j, pb in enumerate(peaks[b]):
                score = _pair_score(pa, pb, field, paf.shape[0], threshold, samples)
                if score is not None:
                    candidates.append((score, i, j))
        used_a, used_b, chosen = set(), set(), []
        for score, i, j in sorted(candidates, key=lambda c: -c[0]):
            if i not in used_a and j not in used_b:
                used_a.add(i), used_b.add(j), chosen.append((i, j, score))
            if len(chosen) >= min(len(peaks[a]), len(peaks[b])):
                break
        connections.append(chosen)
    return connections


def assemble_people(peaks: Sequence[np.ndarray], connections: Sequence[Sequence[tuple]],
                    min_parts: int = 4, min_mean_score: float = 0.4) -> list[np.ndarray]:
    """Merge limb connections into people: ``(18, 3)`` arrays ``(x, y, score)``, NaN = absent.

    A connection extends the person already holding one of its ends, joins two people that share
    no part, or (for the 17 drawn limbs only) starts a new person.
    """
    offsets = np.cumsum([0] + [len(p) for p in peaks])
    every = np.concatenate([p.reshape(-1, 3) for p in peaks])
    people: list[dict] = []
    for k, (a, b) in enumerate(ASSEMBLY_LIMBS):
        for i, j, score in connections[k]:
            ga, gb = int(offsets[a] + i), int(offsets[b] + j)
            owners = [p for p in people if p["parts"][a] == ga or p["parts"][b] == gb]
            shared = len(owners) == 2 and bool(
                ((owners[0]["parts"] >= 0) & (owners[1]["parts"] >= 0)).any())
            if len(owners) == 2 and not shared:
                first, second = owners
                first["parts"] = np.maximum(first["parts"], second["parts"])
                first["score"] += second["score"] + score
                people.remove(second)
            elif owners:
                person = owners[0]
                if person["parts"][b] != gb:
                    person["parts"][b] = gb
                    person["score"] += every[gb, 2] + score
            elif k < len(LIMBS):
                parts = np.full(NUM_KEYPOINTS, -1)
                parts[a], parts[b] = ga, gb
                people.append({"parts": parts, "score": every[ga, 2] + every[gb, 2] + score})
    result = []
    for person in people:
        count = int((person["parts"] >= 0).sum())
        if count < min_parts or person["score"] / count < min_mean_score:
            continue
        keypoints = np.full((NUM_KEYPOINTS, 3), np.nan)
        present = person["parts"] >= 0
        keypoints[present] = every[person["parts"][present]]
        result.append(keypoints)
    return result


class BodyPoseDetector:
    """Runs a :class:`BodyPoseNet` on RGB images and decodes people (see the module doc).

    Args:
        net: the network (moved to ``device``, set to eval).
        device: torch device; default CUDA when available, else CPU.
        box_size, scales: the network input height is ``box_size × scale`` per scale; the maps
            of all scales are averaged (ControlNet's annotator: 368, (0.5,)).
    """

    stride, pad_value = 8, 128

    def __init__(self, net: BodyPoseNet, device: Optional[str] = None, box_size: int = 368,
                 scales: Sequence[float] = (0.5,), peak_threshold: float = 0.1,
                 paf_threshold: float = 0.05) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.net = net.to(self.device).eval()
        self.box_size, self.scales = box_size, tuple(scales)
        self.peak_threshold, self.paf_threshold = peak_threshold, paf_threshold

    def maps(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(heat (H, W, 19), paf (H, W, 38))`` float32 at the size of the ``(H, W, 3)`` uint8
        RGB ``image``, averaged over the scales."""
        height, width = image.shape[:2]
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        heat_sum = np.zeros((height, width, HEAT_OUT), np.float32)
        paf_sum = np.zeros((height, width, PAF_OUT), np.float32)
        for scale in self.scales:
            factor = scale * self.box_size / height
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            resized = cv2.resize(bgr, size, interpolation=cv2.INTER_CUBIC)
            pad_h, pad_w = (-size[1]) % self.stride, (-size[0]) % self.stride
            padded = cv2.copyMakeBorder(resized, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT,
                                        value=(self.pad_value,) * 3)
            x = torch.from_numpy(padded.astype(np.float32) / 256.0 - 0.5).permute(2, 0, 1)[None]
            with torch.inference_mode():
                paf, heat = self.net(x.to(self.device))
            for out, total in ((heat, heat_sum), (paf, paf_sum)):
                grid = out[0].permute(1, 2, 0).float().cpu().numpy()
                grid = cv2.resize(grid, None, fx=self.stride, fy=self.stride,
                                  interpolation=cv2.INTER_CUBIC)[:size[1], :size[0]]
                full = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
                total += full.reshape(height, width, -1)
        return heat_sum / len(self.scales), paf_sum / len(self.scales)

    def detect(self, image: np.ndarray) -> list[np.ndarray]:
        """People in the ``(H, W, 3)`` uint8 RGB ``image``: ``(18, 3)`` ``(x, y, score)`` px
        arrays, NaN rows for parts not found."""
        heat, paf = self.maps(image)
        peaks = find_peaks(heat, self.peak_threshold)
        people = assemble_people(peaks, connect_limbs(peaks, paf, self.paf_threshold))
        logger.debug("OpenPose body: %d people", len(people))
        return people


def load_body_detector(path: Union[str, Path], device: Optional[str] = None) -> BodyPoseDetector:
    """:class:`BodyPoseDetector` with the weights at ``path`` (see :func:`load_body_net`)."""
    logger.info("loading the OpenPose body network from %s", path)
    return BodyPoseDetector(load_body_net(path), device=device)
