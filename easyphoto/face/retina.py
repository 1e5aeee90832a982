"""RetinaFace (MobileNet-0.25, as trained by biubug6/Pytorch_Retinaface) on onnxruntime.

Pre-processing, prior boxes and float decoding of the network's three outputs (``loc (1, N, 4)``,
``conf (1, N, 2)``, ``landmarks (1, N, 10)``), and a two-scale search so that faces filling the
frame are found as reliably as small ones.

Why two scales: the network's largest prior is 512 px; a face much larger than that in the input
(a close-up selfie: from ~800 px on, in our tests) is out of its training range and gets split
into several overlapping "faces" scoring up to 0.99. Faces larger than :data:`FINE_LIMIT` at the
fine scale are therefore taken from a coarse pass (longer side :data:`COARSE_SIDE`), where even
a frame-filling face is in range, and fine detections lying inside such a face are dropped.

Points are ``(x, y)`` float pixels of the input image, pixel ``i`` spanning ``[i, i+1)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cv2
import numpy as np

#: prior boxes: (stride in px, anchor side lengths in px) per feature level.
PRIORS = ((8, (16.0, 32.0)), (16, (64.0, 128.0)), (32, (256.0, 512.0)))
#: box / landmark encoding variances (centre, size).
VARIANCE = (0.1, 0.2)
#: per-channel mean the network was trained with, BGR order, 0..255.
BGR_MEAN = (104.0, 117.0, 123.0)
#: the network's input sides must be multiples of its largest stride.
ALIGN = 32
#: a face wider or taller than this (network px) at the fine scale comes from the coarse pass.
FINE_LIMIT = 600.0
#: longer side (px) of the coarse pass.
COARSE_SIDE = 480
#: a coarse and a fine detection overlapping by more than this IoU are the same face.
SAME_FACE = 0.6
#: a detection lying this much (fraction of its own area) inside a larger one is discarded.
CONTAINED = 0.6


class Detections(NamedTuple):
    """``boxes (K, 4)`` x0 y0 x1 y1, ``scores (K,)``, ``points (K, 5, 2)``; float64, image px."""

    boxes: np.ndarray
    scores: np.ndarray
    points: np.ndarray

    def take(self, index: Any) -> "Detections":
        return Detections(self.boxes[index], self.scores[index], self.points[index])

    @staticmethod
    def concat(parts: list["Detections"]) -> "Detections":
        return Detections(*(np.concatenate(arrays) for arrays in zip(*parts)))


def network_input(image: np.ndarray, max_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """RGB uint8 image → ``(1, 3, H', W')`` float32 BGR-minus-mean blob of the image resized so
    its longer side is ≤ ``max_side``, zero-padded (= mean colour) right/bottom to multiples of
    32, and the ``(sx, sy)`` resize factors (network px per image px)."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    rows, cols = image.shape[:2]
    # pad with the mean colour (= zeros after the subtraction), then OpenCV's vectorised
    # RGB→BGR swap, mean subtraction and HWC→NCHW (identical floats to doing it in numpy)
    padded = cv2.copyMakeBorder(image, 0, -(-rows // ALIGN) * ALIGN - rows,
                                0, -(-cols // ALIGN) * ALIGN - cols, cv2.BORDER_CONSTANT,
                                value=tuple(int(v) for v in BGR_MEAN[::-1]))
    blob = cv2.dnn.blobFromImage(padded, 1.0, None, BGR_MEAN, swapRB=True, crop=False)
    return blob, (cols / width, rows / height)


def priors(rows: int, cols: int) -> np.ndarray:
    """``(N, 4)`` prior boxes ``(cx, cy, w, h)`` in px for a ``rows × cols`` network input, in
    the network's output order: level, then row, column, anchor size."""
    levels = []
    for stride, sizes in PRIORS:
        ys, xs = np.mgrid[0:rows // stride, 0:cols // stride]
        centres = np.stack([(xs + 0.5) * stride, (ys + 0.5) * stride], axis=-1).reshape(-1, 1, 2)
        centres = np.repeat(centres, len(sizes), axis=1)
        sides = np.broadcast_to(np.asarray(sizes)[None, :, None], centres.shape)
        levels.append(np.concatenate([centres, sides], axis=-1).reshape(-1, 4))
    return np.concatenate(levels)


def nms(found: Detections, score_threshold: float, nms_threshold: float) -> Detections:
    """Non-maximum suppression (``cv2.dnn.NMSBoxes``); best first."""
    if not len(found.scores):
        return found
    rects = np.concatenate([found.boxes[:, :2], found.boxes[:, 2:] - found.boxes[:, :2]], axis=1)
    chosen = cv2.dnn.NMSBoxes(rects.tolist(), found.scores.tolist(), score_threshold,
                              nms_threshold)
    return found.take(np.asarray(chosen, dtype=int).reshape(-1))


def decode(outputs: list[np.ndarray], rows: int, cols: int, score_threshold: float,
           nms_threshold: float) -> Detections:
    """Network outputs for a ``rows × cols`` input → detections (network px), after the score
    threshold and NMS. Decoding in float: ``centre + offset·0.1·side``, ``side·exp(size·0.2)``."""
    loc, conf, landmarks = (np.asarray(o, dtype=np.float64)[0] for o in outputs)
    anchors = priors(rows, cols)
    if len(anchors) != len(loc):
        raise RuntimeError(f"RetinaFace returned {len(loc)} boxes for {len(anchors)} priors")
    keep = np.flatnonzero(conf[:, 1] > score_threshold)
    centre, side = anchors[keep, :2], anchors[keep, 2:]
    xy = centre + loc[keep, :2] * VARIANCE[0] * side
    half = side * np.exp(loc[keep, 2:] * VARIANCE[1]) / 2
    points = centre[:, None] + landmarks[keep].reshape(-1, 5, 2) * VARIANCE[0] * side[:, None]
    found = Detections(np.concatenate([xy - half, xy + half], axis=1), conf[keep, 1], points)
    return nms(found, score_threshold, nms_threshold)


def run_scale(session: Any, image: np.ndarray, max_side: int, score_threshold: float,
              nms_threshold: float) -> tuple[Detections, float]:
    """One pass at longer side ≤ ``max_side``: detections in image px and the scale used."""
    blob, (sx, sy) = network_input(image, max_side)
    outputs = session.run(None, {session.get_inputs()[0].name: blob})
    found = decode(outputs, blob.shape[2], blob.shape[3], score_threshold, nms_threshold)
    return Detections(found.boxes / [sx, sy, sx, sy], found.scores, found.points / [sx, sy]), sx


def _sides(found: Detections) -> np.ndarray:
    """Longer side of each box (px)."""
    return (found.boxes[:, 2:] - found.boxes[:, :2]).max(axis=1)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)


def _intersections(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection area (px²) of ``box (4,)`` with each of ``boxes (K, 4)``."""
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    return np.prod(np.clip(hi - lo, 0, None), axis=1)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of ``box (4,)`` with each of ``boxes (K, 4)``."""
    inter = _intersections(box, boxes)
    return inter / np.maximum(_areas(boxes) + _areas(box[None]) - inter, 1e-9)


def _drop_contained(found: Detections) -> Detections:
    """Discard detections lying mostly (:data:`CONTAINED`) inside a larger detection."""
    area = _areas(found.boxes)
    keep = [not ((area > area[i]) & (_intersections(box, found.boxes) > CONTAINED * area[i])).any()
            for i, box in enumerate(found.boxes)]
    return found.take(np.asarray(keep, dtype=bool))


def detect(session: Any, image: np.ndarray, max_side: int, score_threshold: float,
           nms_threshold: float) -> Detections:
    """Faces in an RGB uint8 ``image``: a fine pass (longer side ≤ ``max_side``) for faces up to
    :data:`FINE_LIMIT` network px, a coarse pass for larger ones, and parts of a face found as
    faces of their own dropped. Best score first within each pass."""
    fine, scale = run_scale(session, image, max_side, score_threshold, nms_threshold)
    if max(image.shape[:2]) * scale <= FINE_LIMIT or max_side <= COARSE_SIDE:
        return _drop_contained(fine)
    coarse, _ = run_scale(session, image, COARSE_SIDE, score_threshold, nms_threshold)
    fine = fine.take(_sides(fine) * scale <= FINE_LIMIT)
    # the ranges overlap (0.8 × limit) so no face falls between them; where both passes found
    # the same face (IoU > SAME_FACE) the fine pass's more precise detection is kept
    sides = _sides(coarse) * scale
    extra = [i for i, box in enumerate(coarse.boxes)
             if sides[i] > 0.8 * FINE_LIMIT and not (_iou(box, fine.boxes) > SAME_FACE).any()]
    return _drop_contained(Detections.concat([fine, coarse.take(np.asarray(extra, dtype=int))]))
