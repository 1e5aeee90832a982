"""The ``full`` face backend: insightface SCRFD + ArcFace, modelscope models for the rest.

* detection: SCRFD (``det_10g.onnx`` of insightface's ``buffalo_l`` pack) through insightface's own
  ``SCRFD`` class, letterboxed into ``det_size`` (default 640×640); box + 5 landmarks;
* identity: ArcFace R50 (``w600k_r50.onnx``, WebFace600K) on the 112×112 crop aligned to the
  ArcFace 5-point template (insightface's ``norm_crop``); 512-D, L2-normalised; cosine similarity;
* part masks: a BiSeNet 19-class face parser (ONNX, SPEC §0 classes); saliency, face fusion,
  skin retouching, portrait enhancement: the modelscope pipelines the reference uses.

Every model file is read from a local folder — this module never downloads anything (insightface's
own ``~/.insightface`` auto-download is never used). A modelscope model (or the parser) that is not
present is replaced, for that one capability, by the ``lite`` backend; the reason is logged once
and reported by :meth:`FullBackend.describe`. The modelscope wrappers are deliberately thin: no
test environment has those weights, so only their "absent → lite" path is exercised by CI.

Images are RGB ``(H, W, 3)`` uint8 at this interface; insightface and modelscope work in BGR, the
conversion happens here and nowhere else.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import InvalidRequest, ModelUnavailable
from .full_models import (DET_FILE, DOWNLOAD_HINT, INSIGHTFACE_LAYOUT, INSIGHTFACE_ROLE, MODELSCOPE_MODELS,
                          PARSER_LAYOUT, PARSER_ROLE, REC_FILE, default_registry, insightface_files, locate,
                          modelscope_layout, new_lite_backend)
from .geometry import estimate_similarity
from .memo import ResultMemo, face_key, frozen_array, frozen_faces
from .types import PART_INDICES, Box, Face

#: Cosine similarity of two ArcFace (w600k_r50) embeddings at and above which two faces count as
#: the same person. Embeddings of different people from this recogniser lie near 0 (|cos| rarely
#: above 0.2–0.25), photos of one person mostly at 0.5–0.8; 0.3 sits in that gap, leaning toward
#: keeping hard genuine pairs (age, make-up, lighting), and is the range insightface's users
#: commonly quote for buffalo_l (0.28–0.3). Not comparable with the lite backend's dlib scores.
ARCFACE_SAME_PERSON = 0.30
#: Where ArcFace expects the five landmarks in its 112×112 input (the recogniser's training
#: alignment; x, y in px).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])
#: Face parser input side (px), its ImageNet normalisation, and the crop it sees (box × 1.6:
#: hair line, ears and chin included).
PARSER_SIZE = 512
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
PARSER_CROP = 1.6
CAPABILITIES = ("detect", "embed", "part_masks", "saliency", "fuse", "retouch", "super_resolve")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / denom) if denom > 0 else 0.0


def _providers(requested: Optional[Sequence[str]]) -> list[str]:
    import onnxruntime

    if requested:
        return list(requested)
    available = onnxruntime.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


class FullBackend:
    """insightface + modelscope face backend (see the module docstring). Models load on first use
    and live in instance attributes until :meth:`unload`.

    ``det_model`` / ``rec_model`` override the file paths found through ``weights`` (a model
    registry with ``is_present(role)`` / ``path(role)``) or the folder layout under ``models_dir``.
    Raises :class:`ModelUnavailable` when either insightface file is missing.
    """

    name = "full"

    def __init__(self, models_dir: Optional[Path] = None, *, weights: Any = None,
                 det_model: Optional[Path] = None, rec_model: Optional[Path] = None,
                 det_size: tuple[int, int] = (640, 640), det_thresh: float = 0.5,
                 same_person_threshold: float = ARCFACE_SAME_PERSON,
                 providers: Optional[Sequence[str]] = None, logger: Optional[logging.Logger] = None):
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.weights = weights if weights is not None else default_registry(self.models_dir)
        self.log = logger or logging.getLogger(__name__)
        root = locate(INSIGHTFACE_ROLE, self.models_dir, self.weights, INSIGHTFACE_LAYOUT)
        det, rec = insightface_files(root)
        self.det_model, self.rec_model = Path(det_model or det or ""), Path(rec_model or rec or "")
        missing = [n for n, p in ((DET_FILE, self.det_model), (REC_FILE, self.rec_model)) if not p.is_file()]
        if missing:
            raise ModelUnavailable(f"the full face backend needs {' and '.join(missing)} of "
                                   f"'{INSIGHTFACE_ROLE}'; " + DOWNLOAD_HINT.format(role=INSIGHTFACE_ROLE))
        if importlib.util.find_spec("insightface") is None:
            raise ModelUnavailable("the full face backend needs the Python package 'insightface' "
                                   "(pip install 'easyphoto[full]', i.e. insightface==0.7.3)")
        self.det_size, self.det_thresh = (int(det_size[0]), int(det_size[1])), float(det_thresh)
        self.same_person_threshold = float(same_person_threshold)
        self.providers = list(providers) if providers else None
        self._detector: Any = None
        self._recogniser: Any = None
        self._parser: Any = None
        self._pipelines: dict[str, Any] = {}
        self._lite: Any = None
        self._plans: dict[str, tuple[str, Optional[str]]] = {}
        self._lock = threading.RLock()  # lazy loading from several threads (UI + API)
        self.memo = ResultMemo()  # repeated detections / parses of the same pixels

    # -- detection and identity (insightface) ------------------------------------------------
    def _session(self, path: Path) -> Any:
        import onnxruntime

        return onnxruntime.InferenceSession(str(path), providers=_providers(self.providers))

    def _load_detector(self) -> Any:
        """insightface's ``SCRFD`` on our own session (never its model-zoo download path)."""
        with self._lock:
            if self._detector is None:
                from insightface.model_zoo.scrfd import SCRFD

                detector = SCRFD(model_file=str(self.det_model), session=self._session(self.det_model))
                detector.det_thresh, detector.nms_thresh = self.det_thresh, 0.4
                self._detector = detector
            return self._detector

    def _load_recogniser(self) -> Any:
        """insightface's ``ArcFaceONNX`` on our own session."""
        with self._lock:
            if self._recogniser is None:
                from insightface.model_zoo.arcface_onnx import ArcFaceONNX

                self._recogniser = ArcFaceONNX(model_file=str(self.rec_model),
                                               session=self._session(self.rec_model))
            return self._recogniser

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in an RGB ``(H, W, 3)`` uint8 image, sorted left → right; boxes and landmarks
        in image pixels, ``score`` = SCRFD face probability (≥ ``det_thresh``). Repeated calls
        on the same pixels are answered from :attr:`memo`."""
        image = np.asarray(image)
        settings = (self.det_size, self.det_thresh)
        return list(self.memo.get("detect", image, settings, lambda: self._detect(image)))

    def _detect(self, image: np.ndarray) -> tuple:
        bgr = np.ascontiguousarray(image[..., ::-1])
        boxes, points = self._load_detector().detect(bgr, input_size=self.det_size)
        faces = [Face(Box(*map(float, b[:4])), np.asarray(k, np.float32).reshape(5, 2), float(b[4]))
                 for b, k in zip(boxes, points if points is not None else [])]
        return frozen_faces(sorted(faces, key=lambda face: face.box.x0))

    def align(self, image: np.ndarray, face: Face) -> np.ndarray:
        """The recogniser's input crop: RGB ``(S, S, 3)`` uint8 (S = 112 for w600k_r50), the
        least-squares similarity transform of the five landmarks onto the ArcFace template
        (what insightface's ``norm_crop`` computes, without its scikit-image dependency)."""
        import cv2

        size = int(self._load_recogniser().input_size[0])
        template = ARCFACE_TEMPLATE * (size / 112.0)
        matrix = estimate_similarity(np.asarray(face.landmarks, np.float64), template)
        return cv2.warpAffine(np.asarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR,
                              borderValue=0)

    def embed(self, image: np.ndarray, face: Face) -> np.ndarray:
        """512-D float32 unit-norm ArcFace embedding of ``face`` in the RGB ``image``."""
        crop_bgr = np.ascontiguousarray(self.align(image, face)[..., ::-1])
        feature = np.asarray(self._load_recogniser().get_feat(crop_bgr), np.float32).ravel()
        norm = float(np.linalg.norm(feature))
        return feature / norm if norm > 0 else feature

    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """Cosine similarity in [-1, 1]; same person ⇔ ``>= same_person_threshold``."""
        return _cosine(a, b)

    # -- capability plans: modelscope / parser present, else lite -------------------------------
    def _plan(self, capability: str) -> tuple[str, Optional[str]]:
        """``(source, fallback reason)`` of a capability; a fallback is logged once."""
        if capability not in self._plans:
            source, reason = self._decide(capability)
            if reason:
                self.log.warning("full face backend: %s uses the lite backend because %s", capability, reason)
            self._plans[capability] = (source, reason)
        return self._plans[capability]

    def _decide(self, capability: str) -> tuple[str, Optional[str]]:
        if capability in ("detect", "embed"):
            return f"insightface:{(self.det_model if capability == 'detect' else self.rec_model).name}", None
        if capability == "part_masks":
            path = self._parser_file()
            if path is None:
                hint = DOWNLOAD_HINT.format(role=PARSER_ROLE)
                return "lite", (f"the face parser '{PARSER_ROLE}' is not present as ONNX "
                                f"(face_skin.onnx, an export of face_skin.pth); {hint} and export it")
            return f"onnx:{path.name}", None
        role, _task, model_id = MODELSCOPE_MODELS[capability]
        if locate(role, self.models_dir, self.weights, modelscope_layout(model_id)) is None:
            hint = DOWNLOAD_HINT.format(role=role)
            return "lite", f"the modelscope model {model_id} ('{role}') is not present; {hint}"
        if importlib.util.find_spec("modelscope") is None:
            return "lite", (f"{model_id} is present but the package 'modelscope' is not installed "
                            "(pip install 'easyphoto[full]')")
        return f"modelscope:{model_id}", None

    def _parser_file(self) -> Optional[Path]:
        """The parser ONNX: the registry's file if it is ``.onnx``, else ``<its stem>.onnx``
        beside it (an export of ``face_skin.pth``), else the fallback layout; ``None`` if absent."""
        path = locate(PARSER_ROLE, self.models_dir, self.weights, PARSER_LAYOUT)
        if path is not None and path.is_dir():
            path = next(iter(sorted(path.glob("*.onnx"))), None)
        if path is not None and path.suffix != ".onnx":
            path = path.with_suffix(".onnx")
        if path is None and self.models_dir is not None:
            path = self.models_dir.joinpath(*PARSER_LAYOUT)
        return path if path is not None and path.is_file() else None

    def _fallback(self, capability: str, reason: str) -> None:
        """Switch ``capability`` to lite after a load failure, logging it once."""
        self.log.warning("full face backend: %s falls back to the lite backend: %s", capability, reason)
        self._plans[capability] = ("lite", reason)

    def _lite_backend(self) -> Any:
        with self._lock:
            if self._lite is None:
                self._lite = new_lite_backend(self.models_dir, self.log)
            return self._lite

    def _pipeline(self, capability: str) -> Any:
        """The modelscope pipeline of ``capability``, or ``None`` when lite serves it."""
        with self._lock:
            if self._plan(capability)[0] == "lite":
                return None
            if capability not in self._pipelines:
                role, task, model_id = MODELSCOPE_MODELS[capability]
                folder = locate(role, self.models_dir, self.weights, modelscope_layout(model_id))
                try:
                    from modelscope.pipelines import pipeline

                    self._pipelines[capability] = pipeline(task, model=str(folder))
                except Exception as exc:  # noqa: BLE001 - any load failure: say why, use lite
                    self._fallback(capability, f"{model_id} failed to load from {folder}: {exc}")
                    return None
            return self._pipelines[capability]

    # -- masks, fusion, enhancement ----------------------------------------------------------
    def part_masks(self, image: np.ndarray, face: Face, parts: Sequence[str]) -> np.ndarray:
        """Union of ``parts`` (names in ``FACE_PARTS``) as a ``(H, W)`` uint8 0/255 mask."""
        unknown = [p for p in parts if p not in PART_INDICES]
        if unknown:
            raise InvalidRequest(f"unknown face part(s) {unknown}; known parts: {list(PART_INDICES)}")
        if self._plan("part_masks")[0] == "lite":
            return self._lite_backend().part_masks(image, face, parts)
        labels, (x0, y0) = self._parse(image, face)
        classes = [c for p in parts for c in PART_INDICES[p]]
        mask = np.zeros(np.asarray(image).shape[:2], np.uint8)
        inside = np.isin(labels, classes).astype(np.uint8) * 255
        mask[y0:y0 + labels.shape[0], x0:x0 + labels.shape[1]] = inside
        return mask

    def _parse(self, image: np.ndarray, face: Face) -> tuple[np.ndarray, tuple[int, int]]:
        """BiSeNet class map ``(h, w)`` int of the ``box×PARSER_CROP`` region and its offset
        (read-only; repeated calls on the same pixels and face come from :attr:`memo`)."""
        labels, offset = self.memo.get("parse", np.asarray(image), face_key(face),
                                       lambda: self._parse_region(image, face))
        return labels, offset

    def _parse_region(self, image: np.ndarray, face: Face) -> tuple[np.ndarray, tuple[int, int]]:
        import cv2

        with self._lock:
            if self._parser is None:
                self._parser = self._session(self._parser_file())
        height, width = np.asarray(image).shape[:2]
        x0, y0, x1, y1 = face.box.scaled(PARSER_CROP, clip=(width, height)).to_int()
        region = np.asarray(image)[y0:y1, x0:x1]
        resized = cv2.resize(region, (PARSER_SIZE, PARSER_SIZE), interpolation=cv2.INTER_LINEAR)
        blob = ((resized.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)[None]
        logits = self._parser.run(None, {self._parser.get_inputs()[0].name: np.ascontiguousarray(blob)})[0]
        labels = np.argmax(logits[0], axis=0).astype(np.uint8)
        labels = cv2.resize(labels, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
        return frozen_array(labels), (x0, y0)

    def saliency(self, image: np.ndarray) -> np.ndarray:
        """U2-Net salient-object mask ``(H, W)`` uint8 0..255 (lite when U2-Net is absent)."""
        pipe = self._pipeline("saliency")
        if pipe is None:
            return self._lite_backend().saliency(image)
        mask = np.asarray(pipe(_pil(image))["masks"], np.float32)
        mask = mask * 255.0 if mask.max() <= 1.0 else mask
        return _resize_to(np.clip(mask, 0, 255).astype(np.uint8), image)

    def fuse(self, template: np.ndarray, source: np.ndarray, ratio: float) -> np.ndarray:
        """modelscope face fusion of ``source``'s identity into ``template``, blended with the
        template as ``template·(1−ratio) + fused·ratio`` (ratio in [0, 1]); RGB uint8."""
        if not 0.0 <= float(ratio) <= 1.0:
            raise InvalidRequest(f"face fusion ratio must be within 0..1, got {ratio}")
        pipe = self._pipeline("fuse")
        if pipe is None:
            return self._lite_backend().fuse(template, source, ratio)
        fused = _resize_to(_bgr_output(pipe({"template": _pil(template), "user": _pil(source)})), template)
        ratio = float(ratio)
        blend = np.asarray(template, np.float32) * (1.0 - ratio) + fused.astype(np.float32) * ratio
        return np.clip(np.rint(blend), 0, 255).astype(np.uint8)

    def retouch(self, image: np.ndarray) -> np.ndarray:
        """ABPN skin retouching of the whole RGB image (lite when absent)."""
        pipe = self._pipeline("retouch")
        if pipe is None:
            return self._lite_backend().retouch(image)
        return _resize_to(_bgr_output(pipe(_pil(image))), image)

    def super_resolve(self, image: np.ndarray) -> Optional[np.ndarray]:
        """GPEN portrait enhancement (RGB, usually 2× larger); lite's answer when GPEN is absent."""
        pipe = self._pipeline("super_resolve")
        if pipe is None:
            return self._lite_backend().super_resolve(image)
        return _bgr_output(pipe(_pil(image)))

    # -- bookkeeping -------------------------------------------------------------------------
    @property
    def capabilities(self) -> dict[str, str]:
        """capability → what serves it: ``insightface:…``, ``modelscope:…``, ``onnx:…``, ``lite``."""
        return {capability: self._plan(capability)[0] for capability in CAPABILITIES}

    def describe(self) -> dict:
        """Name, capabilities, threshold, model files and fallback reasons (``easyphoto doctor``)."""
        capabilities = self.capabilities
        return {
            "name": self.name,
            "capabilities": capabilities,
            "same_person_threshold": self.same_person_threshold,
            "models": {"detector": str(self.det_model), "recogniser": str(self.rec_model)},
            "fallbacks": {c: self._plans[c][1] for c in capabilities if self._plans[c][1]},
            "loaded": [n for n, m in (("detector", self._detector), ("recogniser", self._recogniser),
                                      ("parser", self._parser), ("lite", self._lite)) if m is not None]
            + sorted(self._pipelines),
        }

    def unload(self) -> None:
        """Release every loaded model (ONNX sessions, modelscope pipelines, the lite helper)."""
        with self._lock:
            if self._lite is not None and hasattr(self._lite, "unload"):
                self._lite.unload()
            self._detector = self._recogniser = self._parser = self._lite = None
            self._pipelines.clear()
            self.memo.clear()


def _pil(image: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(np.asarray(image, np.uint8)))


def _bgr_output(result: dict) -> np.ndarray:
    """A modelscope ``output_img`` (BGR uint8) as RGB."""
    return np.ascontiguousarray(np.asarray(result["output_img"])[..., ::-1]).astype(np.uint8)


def _resize_to(array: np.ndarray, like: np.ndarray) -> np.ndarray:
    import cv2

    height, width = np.asarray(like).shape[:2]
    if array.shape[:2] == (height, width):
        return array
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)
