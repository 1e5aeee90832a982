"""ControlNet input images, prepared by our own code so every engine sees the same conditioning.

SPEC 2.6 / 2.7.3 / 2.8 name four kinds (``easyphoto.engine.base.CONTROL_KINDS``):

* :func:`canny` — Canny edges (thresholds 100 / 200) as a 3-channel white-on-black image;
* :func:`color_layout` — the "random colour" ControlNet's input: the image downscaled by 24
  (bicubic) and upscaled back with nearest neighbour, i.e. flat 24 × 24 px colour blocks;
* :func:`tile` — the tile ControlNet's input, which is the image itself;
* :func:`openpose` — an OpenPose-format skeleton image, from the real OpenPose body network when
  its weights are present (:mod:`easyphoto.infer.openpose_body`), otherwise rendered from our own
  face landmarks. It returns which one ran (``"openpose-detector"`` / ``"landmarks"``).

Every function takes and returns ``(H, W, 3)`` uint8 RGB arrays of the same size.

OpenPose rendering follows the standard ControlNet "openpose" colouring: 18 COCO body keypoints
(0 nose, 1 neck, 2-4 right shoulder/elbow/wrist, 5-7 left ditto, 8-10 right hip/knee/ankle,
11-13 left ditto, 14/15 right/left eye, 16/17 right/left ear — "right" is the subject's right,
the image-left side of a frontal face), each drawn as a filled disc of radius 4 in colour *k* of
an 18-step hue wheel (0°, 20°, …, 340°), limbs as ellipses of half-width 4 in 60 % of their
limb's colour, face keypoints as white discs of radius 3, drawn in that order (limbs, body
keypoints, face dots). Sizes are for a 512 px short side and scale with the image.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from ..errors import InvalidRequest
from ..face import mesh as face_mesh_topology
from ..face.types import Face

logger = logging.getLogger(__name__)

#: SPEC 2.6 Canny thresholds (constant defaults).
CANNY_LOW, CANNY_HIGH = 100, 200
#: SPEC 2.6 colour-layout downscale factor.
COLOR_LAYOUT_FACTOR = 24
#: registry role of the OpenPose body network's weights.
BODY_ROLE = "annotator_openpose_body"
#: values of ``openpose``'s second return value.
SOURCE_DETECTOR, SOURCE_LANDMARKS = "openpose-detector", "landmarks"

NOSE, NECK, R_SHOULDER, L_SHOULDER, R_EYE, L_EYE, R_EAR, L_EAR = 0, 1, 2, 5, 14, 15, 16, 17
NUM_KEYPOINTS = 18
#: the 17 drawn limbs of the COCO-18 skeleton, as keypoint pairs; limb *k* has colour *k*.
LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
    (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
#: rendering sizes (px) for a 512 px short side.
KEYPOINT_RADIUS, STICK_HALF_WIDTH, FACE_DOT_RADIUS, LIMB_SHADE = 4, 4, 3, 0.6
#: landmark skeleton: neck below the eye midpoint and shoulder half-span, × face-box height
#: (measured on the obama / biden / astronaut portraits: neck base 0.70-0.76, shoulders 0.8-1.0).
NECK_DROP, SHOULDER_SPAN = 0.75, 0.85
#: an ear is left out when the nose is shifted towards its side by more than this × eye distance
#: (a strongly turned head hides the far ear, as OpenPose would not see it).
EAR_HIDDEN_YAW = 0.35


def _check_rgb(image: np.ndarray, label: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidRequest(f"{label}: expected an (H, W, 3) uint8 RGB image, got shape "
                             f"{image.shape} dtype {image.dtype}")
    return image


def canny(image: np.ndarray, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> np.ndarray:
    """Canny edges of ``image`` (SPEC 2.6: thresholds 100 / 200, 3 × 3 Sobel, L1 gradient).

    ``(H, W, 3)`` uint8 RGB in; ``(H, W, 3)`` uint8 out, 255 on edges, 0 elsewhere, the edge map
    repeated in all three channels. Edges come from OpenCV's multi-channel Canny (the strongest
    gradient over R, G, B), as the ControlNet canny annotator computes them.
    """
    edges = cv2.Canny(np.ascontiguousarray(_check_rgb(image)), low, high)
    return np.repeat(edges[:, :, None], 3, axis=2)


def color_layout(image: np.ndarray, factor: int = COLOR_LAYOUT_FACTOR) -> np.ndarray:
    """Colour-layout control (SPEC 2.6): downscale by ``factor`` (bicubic), upscale (nearest).

    The image is first edge-padded to a multiple of ``factor`` so that the downscale is by exactly
    ``factor`` and every output block is ``factor × factor`` px, aligned to the top-left corner
    (the last row / column of blocks is cut to the image). Each block holds the bicubic sample of
    the block's area. ``(H, W, 3)`` uint8 in and out.
    """
    image = _check_rgb(image)
    if factor < 1:
        raise InvalidRequest(f"colour-layout factor must be >= 1, got {factor}")
    height, width = image.shape[:2]
    rows, cols = -(-height // factor), -(-width // factor)
    padded = cv2.copyMakeBorder(image, 0, rows * factor - height, 0, cols * factor - width,
                                cv2.BORDER_REPLICATE)
    small = cv2.resize(padded, (cols, rows), interpolation=cv2.INTER_CUBIC)
    blocks = np.repeat(np.repeat(small, factor, axis=0), factor, axis=1)  # nearest, exact
    return np.ascontiguousarray(blocks[:height, :width])


def tile(image: np.ndarray) -> np.ndarray:
    """Tile control: the image itself (a copy).

    The tile ControlNet (``control_v11f1e_sd15_tile``) is conditioned on the picture to be
    re-detailed; its annotator at down-sampling rate 1 is the identity, and SPEC 2.7.3 feeds it
    the fused crop at the generation size. ``(H, W, 3)`` uint8 in and out.
    """
    return _check_rgb(image).copy()


# ---- OpenPose rendering ----------------------------------------------------------------------
def keypoint_colour(k: int) -> tuple[int, int, int]:
    """RGB colour of keypoint / limb ``k`` (0..17): hue ``20·k`` degrees, full saturation."""
    sector, step = divmod(k % 18, 3)
    rising, falling = 85 * step, 255 - 85 * step
    return ((255, rising, 0), (falling, 255, 0), (0, 255, rising), (0, falling, 255),
            (rising, 0, 255), (255, 0, falling))[sector]


def _scale(shape: tuple[int, ...]) -> float:
    return max(min(shape[:2]) / 512.0, 0.25)


def render_pose(shape: tuple[int, int], people: Sequence[np.ndarray],
                face_dots: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Draw OpenPose-format skeletons on a black ``(H, W, 3)`` uint8 canvas.

    ``people``: ``(18, 2)`` (or ``(18, ≥2)``) float arrays of ``(x, y)`` px, NaN = keypoint not
    present. ``face_dots``: ``(N, 2)`` arrays of face keypoints. Order: all limbs, then all
    body keypoints, then the face dots (the ControlNet annotator's order).
    """
    height, width = shape[:2]
    canvas = np.zeros((height, width, 3), np.uint8)
    scale = _scale(shape)
    half_width = max(1, round(STICK_HALF_WIDTH * scale))
    for k, (a, b) in enumerate(LIMBS):
        shade = tuple(int(c * LIMB_SHADE) for c in keypoint_colour(k))
        for person in people:
            pa, pb = person[a, :2], person[b, :2]
            if np.isnan(pa).any() or np.isnan(pb).any():
                continue
            (xa, ya), (xb, yb) = pa, pb
            length = math.hypot(xb - xa, yb - ya)
            angle = math.degrees(math.atan2(yb - ya, xb - xa))
            polygon = cv2.ellipse2Poly((int(round((xa + xb) / 2)), int(round((ya + yb) / 2))),
                                       (int(round(length / 2)), half_width), int(round(angle)),
                                       0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, shade, lineType=cv2.LINE_8)
    radius = max(1, round(KEYPOINT_RADIUS * scale))
    for k in range(NUM_KEYPOINTS):
        for person in people:
            if not np.isnan(person[k, :2]).any():
                centre = tuple(int(round(v)) for v in person[k, :2])
                cv2.circle(canvas, centre, radius, keypoint_colour(k), -1, cv2.LINE_8)
    dot = max(1, round(FACE_DOT_RADIUS * scale))
    for dots in face_dots:
        for x, y in np.asarray(dots, dtype=np.float64).reshape(-1, 2):
            cv2.circle(canvas, (int(round(x)), int(round(y))), dot, (255, 255, 255), -1)
    return canvas


def _mesh_points(image: np.ndarray, face: Face, backend: Any) -> Optional[np.ndarray]:
    """The backend's ``(478, 2)`` face mesh of ``face``, or ``None`` (no mesh / not found)."""
    mesh_fn = getattr(backend, "face_mesh", None)
    if not callable(mesh_fn):
        return None
    points = mesh_fn(image, face)
    return None if points is None else np.asarray(points, dtype=np.float64)


def _resample(points: np.ndarray, count: int, closed: bool) -> np.ndarray:
    """``count`` points evenly spaced by arc length along a polyline (closed: a loop)."""
    pts = np.asarray(points, dtype=np.float64)
    if closed:
        pts = np.concatenate([pts, pts[:1]])
    seg = np.hypot(*np.diff(pts, axis=0).T)
    where = np.concatenate([[0.0], np.cumsum(seg)])
    stops = np.linspace(0.0, where[-1], count, endpoint=not closed)
    return np.stack([np.interp(stops, where, pts[:, 0]), np.interp(stops, where, pts[:, 1])], 1)


def face_dots_from_mesh(points: np.ndarray) -> np.ndarray:
    """70 face keypoints in the layout of OpenPose's face model, ``(70, 2)`` px, from a mesh.

    17 along the jaw (ear → chin → ear), 5 per brow (band midline), 4 down the nose bridge and
    5 under the nose, 6 per eye, 12 on the outer and 8 on the inner lip contour, 2 pupils (iris
    centres; the eye centres when the mesh has no iris points) — resampled by arc length.
    """
    t = face_mesh_topology
    pts = np.asarray(points, dtype=np.float64)
    oval = list(t.FACE_OVAL)
    jaw = _resample(pts[oval[oval.index(356):oval.index(127) + 1]], 17, closed=False)
    brows = [(pts[list(b[:5])] + pts[list(b[5:][::-1])]) / 2.0
             for b in (t.BROW_IMAGE_LEFT, t.BROW_IMAGE_RIGHT)]
    bridge = _resample(pts[[168, 4]], 4, closed=False)
    under_nose = pts[[98, 97, 2, 326, 327]]
    eyes = [_resample(pts[list(e)], 6, closed=True) for e in (t.EYE_IMAGE_LEFT, t.EYE_IMAGE_RIGHT)]
    lips = [_resample(pts[list(t.LIPS_OUTER)], 12, closed=True),
            _resample(pts[list(t.LIPS_INNER)], 8, closed=True)]
    if len(pts) >= 478:
        pupils = pts[[468, 473]]
    else:
        pupils = np.stack([pts[list(e)].mean(axis=0)
                           for e in (t.EYE_IMAGE_LEFT, t.EYE_IMAGE_RIGHT)])
    return np.concatenate([jaw, *brows, bridge, under_nose, *eyes, *lips, pupils])


def landmark_body(face: Face, mesh_points: Optional[np.ndarray] = None,
                  with_shoulders: bool = True) -> np.ndarray:
    """OpenPose body keypoints ``(18, 2)`` (NaN = absent) estimated from one face.

    Nose and eyes are the detector's landmarks (image-left eye = the subject's right eye, 14).
    Ears: the mesh's outermost oval points at eye height (234 / 454) pushed 10 % outward, or
    without a mesh ``±1.05`` eye distances beside the eyes, half-way down to the mouth; the ear
    on the side the nose turns to is dropped for a strongly turned head. Neck: ``NECK_DROP`` face
    heights below the eye midpoint along the face's down axis; shoulders ``SHOULDER_SPAN`` face
    heights left and right of the neck, level in the image (a head tilts, shoulders mostly stay
    level). Arms, hips and legs are absent.
    """
    lm = np.asarray(face.landmarks, dtype=np.float64)
    eye_l, eye_r, nose = lm[0], lm[1], lm[2]
    eye_mid, mouth_mid = (eye_l + eye_r) / 2.0, (lm[3] + lm[4]) / 2.0
    d = max(float(np.linalg.norm(eye_r - eye_l)), 1.0)
    u = (eye_r - eye_l) / d
    v = np.array([-u[1], u[0]])
    body = np.full((NUM_KEYPOINTS, 2), np.nan)
    body[NOSE], body[R_EYE], body[L_EYE] = nose, eye_l, eye_r
    if mesh_points is not None:
        centre = mesh_points[list(face_mesh_topology.FACE_OVAL)].mean(axis=0)
        ear_l, ear_r = (centre + (mesh_points[i] - centre) * 1.1 for i in (234, 454))
    else:
        drop = max(float(np.dot(mouth_mid - eye_mid, v)), 0.5 * d)
        ear_l, ear_r = (eye_mid + side * 1.05 * d * u + 0.5 * drop * v for side in (-1.0, 1.0))
    yaw = float(np.dot(nose - eye_mid, u)) / d
    if yaw < EAR_HIDDEN_YAW:
        body[L_EAR] = ear_r
    if yaw > -EAR_HIDDEN_YAW:
        body[R_EAR] = ear_l
    if with_shoulders:
        neck = eye_mid + v * NECK_DROP * face.box.height
        span = np.array([SHOULDER_SPAN * face.box.height, 0.0])
        body[NECK], body[R_SHOULDER], body[L_SHOULDER] = neck, neck - span, neck + span
    return body


def load_openpose_detector(store: Any, device: Optional[str] = None) -> Any:
    """The OpenPose body detector from ``store`` (a ``ModelStore``), or ``None`` when its weights
    are not there. Load it once and hand it to :func:`openpose` as ``detector`` for every call."""
    if store is None or not store.is_present(BODY_ROLE):
        return None
    from .openpose_body import load_body_detector

    return load_body_detector(store.path(BODY_ROLE), device=device)


def openpose(image: np.ndarray, faces: Sequence[Face], store: Any = None, *,
             backend: Any = None, detector: Any = None,
             with_shoulders: bool = True) -> tuple[np.ndarray, str]:
    """OpenPose control image of ``image`` (SPEC 2.6: the align-and-pasted "replaced" crop).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        faces: the faces in ``image`` (detector boxes + 5 landmarks, image px).
        store: a ``ModelStore``; when it holds ``annotator_openpose_body`` the real OpenPose body
            network runs (loaded for this call — pass ``detector`` to reuse a loaded one).
        backend: the face backend; its ``face_mesh`` (when it has one) gives the face dots and
            the ears, else the 5 landmarks are the face dots.
        detector: a loaded :class:`~easyphoto.infer.openpose_body.BodyPoseDetector` (or anything
            with ``detect(image) -> list[(18, 3) array]``).
        with_shoulders: draw the estimated neck and shoulders in the landmark rendering.

    Returns:
        ``(control, source)``: the ``(H, W, 3)`` uint8 skeleton image and ``"openpose-detector"``
        when the body network found at least one person, ``"landmarks"`` when the image was
        rendered from our landmarks (no weights, or the network found nobody). Face dots always
        come from our landmarks / mesh (OpenPose's own face and hand networks are not run).
    """
    image = _check_rgb(image)
    meshes = [_mesh_points(image, face, backend) for face in faces]
    dots = [face_dots_from_mesh(m) if m is not None else np.asarray(f.landmarks, np.float64)
            for f, m in zip(faces, meshes)]
    if detector is None:
        detector = load_openpose_detector(store)
    if detector is not None:
        people = detector.detect(image)
        if people:
            logger.info("openpose control: %d body(ies) from the OpenPose network", len(people))
            return render_pose(image.shape, people, dots), SOURCE_DETECTOR
        logger.info("openpose control: the body network found nobody; using the landmarks")
    people = [landmark_body(f, m, with_shoulders) for f, m in zip(faces, meshes)]
    logger.debug("openpose control: %d skeleton(s) rendered from landmarks", len(people))
    return render_pose(image.shape, people, dots), SOURCE_LANDMARKS
