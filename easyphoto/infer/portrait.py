"""One person on one template: the two-stage portrait pipeline, SPEC 2.2–2.7 in order.

:meth:`Portrait.run` reads top to bottom — crop and resize, re-detect, align and paste (the
"replaced image", OpenPose input only), face fusion before, first diffusion, colour shift first,
face fusion after, second diffusion, colour shift last, paste back — each stage a short method,
each optional stage switched by its :class:`~easyphoto.params.InferRequest` flag.

Conventions: images are ``(H, W, 3)`` uint8 RGB arrays, masks ``(H, W)`` uint8 0/255; boxes are
template pixels. The *working size* (:class:`WorkingSize`) is where diffusion runs: short side
512 for SD1.5, ~1024² px for SDXL, 64 for the ``tiny-random`` preset; pixel constants of the
SPEC (mask blur 8, ring widths...) are meant at 512 and are scaled by ``WorkingSize.scale``.

Paste back (ours): the reference pastes the whole resized crop, which re-samples every pixel of
``box×3``; here only the pixels some stage changed (in working pixels, feathered by about one
working pixel) are pasted, so the rest of the crop keeps the template's exact bytes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np

from ..engine.base import ControlUnit, Generation, LoraRef
from ..errors import EasyPhotoError, FaceNotFound
from ..face.geometry import align_and_paste
from ..face.types import Box, Face
from ..images import load_rgb_array
from ..params import TINY_RANDOM, InferRequest
from ..progress import CancelToken
from .colour_shift import SHIFT_BLUR, colour_shift
from .controls import canny, color_layout, openpose, tile
from .masks import (
    FUSION_AFTER,
    FUSION_BEFORE,
    SHIFT_FIRST,
    SHIFT_LAST,
    blend,
    first_diffusion_mask,
    fusion_blend_mask,
    second_diffusion_mask,
)

logger = logging.getLogger(__name__)

#: ``box×3`` crop around the face (SPEC 2.3) and ``box×1.5`` of the face_id crop (SPEC 2.4).
CROP_RATIO, FACE_ID_RATIO = 3.0, 1.5
#: Mask blur of every inpaint, px at the 512 working scale (SPEC 2.6, constant).
MASK_BLUR = 8


class UserNotReady(EasyPhotoError):
    """A user id exists but has no trained LoRA or face image yet."""

    http_status = 409


@dataclass(frozen=True)
class WorkingSize:
    """Where diffusion runs: ``short_side`` px (or ``pixels`` in total, SDXL), both sides floored
    to multiples of ``multiple``; the long side is capped at ``max_aspect × short_side``."""

    short_side: int = 512
    multiple: int = 32
    pixels: Optional[int] = None
    max_aspect: float = 4.0

    @property
    def scale(self) -> float:
        """Factor for pixel constants given at the 512 working scale."""
        return self.short_side / 512.0

    def px(self, value: float) -> int:
        """``value`` px at 512 → px at this size (at least 1)."""
        return max(1, int(round(value * self.scale)))

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of a ``width × height`` image resized to this working size."""
        if self.pixels:
            factor = math.sqrt(self.pixels / float(width * height))
        else:
            factor = self.short_side / float(min(width, height))
        factor = min(factor, self.max_aspect * self.short_side / float(max(width, height)))
        return tuple(max(self.multiple, int(side * factor) // self.multiple * self.multiple)
                     for side in (width, height))  # type: ignore[return-value]


SD15_SIZE = WorkingSize(512, 32)
SDXL_SIZE = WorkingSize(1024, 32, pixels=1024 * 1024)
#: The tiny-random models are 8× smaller; their UNet needs sides divisible by 16.
TINY_SIZE = WorkingSize(64, 16)


def working_size(base_model: str, sdxl: bool = False) -> WorkingSize:
    """The working size for ``base_model`` (SPEC 2.3): tiny-random 64, SDXL ~1024², else 512."""
    if base_model == TINY_RANDOM:
        return TINY_SIZE
    return SDXL_SIZE if sdxl else SD15_SIZE


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to ``(width, height)``: area averaging down, bicubic up."""
    height, width = image.shape[:2]
    if (width, height) == tuple(size):
        return image.copy()
    shrinking = size[0] * size[1] < width * height
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA if shrinking else
                      cv2.INTER_CUBIC)


def largest_face(backend: Any, image: np.ndarray) -> Optional[Face]:
    faces = backend.detect(image)
    return max(faces, key=lambda f: f.box.area) if faces else None


@dataclass(frozen=True)
class UserAssets:
    """A trained user id as inference needs it: LoRA file, face_id image + face, ref image."""

    user_id: str
    lora_path: Path
    face_id: np.ndarray = field(repr=False)
    face_id_face: Face = field(repr=False)
    ref: np.ndarray = field(repr=False)

    @classmethod
    def load(cls, store: Any, user_id: str, backend: Any) -> "UserAssets":
        """Read ``user_id`` from the ``UserStore``; UserNotFound / UserNotReady / FaceNotFound."""
        record = store.get(user_id)
        if not record.lora_path.is_file() or not record.face_id_path.is_file():
            raise UserNotReady(f"user id {user_id!r} has no trained LoRA yet (status "
                               f"{record.meta.get('status', 'unknown')}): train it first")
        face_id = load_rgb_array(record.face_id_path, f"{user_id}: face_id.jpg")
        face = largest_face(backend, face_id)
        if face is None:
            raise FaceNotFound(f"user id {user_id!r}: no face found in its face_id image; "
                               "train the id again")
        ref = (load_rgb_array(record.ref_path, f"{user_id}: ref.jpg")
               if record.ref_path.is_file() else face_id)
        return cls(user_id, record.lora_path, face_id, face, ref)


@dataclass(frozen=True)
class Crop:
    """The working crop: ``image`` at working size, its ``box`` ``(x0, y0, x1, y1)`` in template
    px, and the template's detection of the face mapped into crop px."""

    image: np.ndarray = field(repr=False)
    box: tuple[int, int, int, int]
    face: Face = field(repr=False)


def map_face(face: Face, offset: tuple[float, float], scale: tuple[float, float]) -> Face:
    """``face`` in the coordinates of an image cropped at ``offset`` and resized by ``scale``."""
    (ox, oy), (sx, sy) = offset, scale
    box = Box((face.box.x0 - ox) * sx, (face.box.y0 - oy) * sy,
              (face.box.x1 - ox) * sx, (face.box.y1 - oy) * sy)
    points = (np.asarray(face.landmarks, np.float64) - (ox, oy)) * (sx, sy)
    return Face(box, points.astype(np.float32), face.score)


def crop_and_resize(image: np.ndarray, face: Face, size: WorkingSize, crop: bool = True) -> Crop:
    """SPEC 2.3: ``box×3`` around ``face`` (or the whole image when ``crop`` is off), resized to
    the working size (short side 512, floored to multiples of 32)."""
    height, width = image.shape[:2]
    box = face.box.scaled(CROP_RATIO, clip=(width, height)).to_int() if crop else \
        (0, 0, width, height)
    x0, y0, x1, y1 = box
    out_w, out_h = size.fit(x1 - x0, y1 - y0)
    small = resize(image[y0:y1, x0:x1], (out_w, out_h))
    mapped = map_face(face, (x0, y0), (out_w / (x1 - x0), out_h / (y1 - y0)))
    return Crop(small, box, mapped)


def redetect(backend: Any, crop: Crop) -> Face:
    """SPEC 2.3: the face detected in the crop nearest the template's detection; when the crop
    holds no such face (small or blurred), the template's detection mapped into the crop."""
    expected = crop.face
    (ex, ey), reach = expected.box.center, 0.5 * max(expected.box.width, 1.0)
    found = [f for f in backend.detect(crop.image)
             if math.dist(f.box.center, (ex, ey)) <= reach]
    if found:
        return min(found, key=lambda f: math.dist(f.box.center, (ex, ey)))
    logger.info("re-detection found no face in the %dx%d crop; using the template's detection",
                crop.image.shape[1], crop.image.shape[0])
    return expected


def composite(base: np.ndarray, top: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``base·(1−α) + top·α`` (α ``(H, W)`` float in 0..1); pixels with α = 0 keep
    ``base``'s exact bytes."""
    a = alpha.astype(np.float32)[:, :, None]
    mixed = np.rint(base.astype(np.float32) * (1.0 - a) + top.astype(np.float32) * a)
    return np.where(a > 0, np.clip(mixed, 0, 255).astype(np.uint8), base)


def paste_changed(target: np.ndarray, box: Sequence[int], before: np.ndarray,
                  after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paste the working-size ``after`` back into ``box`` of ``target`` where it differs from
    ``before`` (feathered over ~1 working px). Returns ``(image, alpha)``, alpha ``(H, W)``
    float32 at ``target``'s size (0 = ``target``'s bytes kept)."""
    x0, y0, x1, y1 = box
    out, alpha = target.copy(), np.zeros(target.shape[:2], np.float32)
    changed = np.any(before != after, axis=2).astype(np.uint8) * 255
    if not changed.any():
        return out, alpha
    changed = cv2.dilate(changed, np.ones((3, 3), np.uint8))
    size = (x1 - x0, y1 - y0)
    soft = cv2.resize(changed, size, interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    radius = max(1, int(round(size[0] / after.shape[1])))
    soft = cv2.GaussianBlur(soft, (2 * radius + 1, 2 * radius + 1), 0) * (soft > 0)
    alpha[y0:y1, x0:x1] = soft
    # the blend only where something changed (the face, not the whole box×3 crop)
    bx, by, bw, bh = cv2.boundingRect((soft > 0).astype(np.uint8))
    inside = (slice(y0 + by, y0 + by + bh), slice(x0 + bx, x0 + bx + bw))
    out[inside] = composite(target[inside], resize(after, size)[by:by + bh, bx:bx + bw],
                            soft[by:by + bh, bx:bx + bw])
    return out, alpha


@dataclass
class PortraitResult:
    """One person's result: ``image`` (the template with this person pasted back), ``alpha``
    (``(H, W)`` float32 0..1, where it was pasted), the crop ``box``, the re-detected ``face``
    (working-crop px), the ``stages`` that ran,
    user-facing ``notes``, which OpenPose rendering ran and, with ``keep``, the working-size
    ``intermediates`` by stage."""

    image: np.ndarray = field(repr=False)
    alpha: np.ndarray = field(repr=False)
    box: tuple[int, int, int, int]
    face: Optional[Face] = field(default=None, repr=False)
    stages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    openpose_source: str = ""
    intermediates: dict[str, np.ndarray] = field(default_factory=dict, repr=False)


class Portrait:
    """The SPEC 2.2–2.7 pipeline for one ``user`` on one (isolated) template.

    Args:
        engine: a ``DiffusionEngine``; backend: a ``FaceBackend``; request: the InferRequest
        (every weight, step count, strength and flag comes from it); seed: the sampling seed;
        size: the working size; prompt: ``(positive, negative)``; style: an optional style
        LoRA; models: the model store handed to the OpenPose control; pose_detector: a loaded
        OpenPose body network to reuse; keep: keep intermediates; cancel: polled before every
        stage; on_stage: called with each stage's name as it starts.
    """

    def __init__(self, engine: Any, backend: Any, request: InferRequest, user: UserAssets, *,
                 seed: int, size: WorkingSize, prompt: tuple[str, str],
                 style: Optional[LoraRef] = None, models: Any = None,
                 pose_detector: Any = None, keep: bool = False,
                 cancel: Optional[CancelToken] = None,
                 on_stage: Optional[Callable[[str], None]] = None) -> None:
        self.engine, self.backend, self.request, self.user = engine, backend, request, user
        self.seed, self.size, self.prompt, self.models = seed, size, prompt, models
        self.pose_detector = pose_detector
        self.loras = [LoraRef(str(user.lora_path), request.lora_weight)]
        if style is not None:
            self.loras.append(style)
        self.keep, self.cancel, self.on_stage = keep, cancel, on_stage
        self.result: Optional[PortraitResult] = None

    def run(self, template: np.ndarray, face: Face) -> PortraitResult:
        """Template (isolated: other faces whitened) + this person's face → PortraitResult."""
        r = self.request
        self.result = PortraitResult(template, np.zeros(template.shape[:2], np.float32),
                                     (0, 0, 0, 0))
        crop = self._stage("crop_and_resize" if r.crop_face_preprocess else "resize",
                           crop_and_resize, template, face, self.size, r.crop_face_preprocess)
        face = self.result.face = self._stage("redetect", redetect, self.backend, crop)
        replaced = self._stage("align_and_paste", self.align_and_paste, crop.image, face)
        image = crop.image
        if r.apply_face_fusion_before:
            image = self._stage("fusion_before", self.fusion_before, image, face)
        image = self._stage("first_diffusion", self.first_diffusion, image, replaced, face)
        if r.color_shift_first:
            image = self._stage("colour_shift_first", self.colour_shift_first, image, crop.image,
                                face)
        if r.apply_face_fusion_after:
            image = self._stage("fusion_after", self.fusion_after, image, face)
        image = self._stage("second_diffusion", self.second_diffusion, image, face)
        if r.color_shift_last:
            image = self._stage("colour_shift_last", self.colour_shift_last, image, crop.image,
                                face)
        self._stage("paste_back", self.paste_back, template, crop, image)
        return self.result

    # ---- plumbing ------------------------------------------------------------------------
    def _stage(self, name: str, function: Callable[..., Any], *args: Any) -> Any:
        if self.cancel is not None:
            self.cancel.check()
        if self.on_stage is not None:
            self.on_stage(name)
        output = function(*args)
        self.result.stages.append(name)
        if self.keep:
            kept = output.image if isinstance(output, Crop) else output
            if isinstance(kept, np.ndarray):
                self.result.intermediates[name] = kept
        return output

    def _note(self, message: str) -> None:
        logger.warning("%s", message)
        self.result.notes.append(message)

    def _inpaint(self, image: np.ndarray, mask: np.ndarray, strength: float, steps: int,
                 units: Sequence[tuple[str, np.ndarray, float]]) -> np.ndarray:
        """Inpaint with the user (+ style) LoRA; units of weight 0 are left out."""
        controls = [ControlUnit(kind, control, weight) for kind, control, weight in units
                    if weight > 0]
        generation = Generation(self.prompt[0], self.prompt[1], steps, self.request.cfg_scale,
                                self.request.sampler, self.seed, controls, self.loras)
        return self.engine.inpaint(image, mask, strength, generation,
                                   mask_blur=self.size.px(MASK_BLUR))

    # ---- SPEC 2.4 – 2.7 -------------------------------------------------------------------
    def align_and_paste(self, image: np.ndarray, face: Face) -> np.ndarray:
        """SPEC 2.4: the user's face_id (``box×1.5``) warped onto ``face``, pasted in."""
        replaced, _ = align_and_paste(image, face, self.user.face_id, self.user.face_id_face,
                                      FACE_ID_RATIO)
        return replaced

    def _fusion(self, image: np.ndarray, face: Face, ratio: float, parts: Sequence[str],
                label: str) -> np.ndarray:
        try:
            fused = self.backend.fuse(image, self.user.ref, 1.0)
        except FaceNotFound as exc:
            self._note(f"face fusion {label} skipped for {self.user.user_id}: {exc}")
            return image
        mask = fusion_blend_mask(image, fused, face, face, self.backend, ratio, parts,
                                 scale=self.size.scale)
        return blend(image, fused, mask)

    def fusion_before(self, image: np.ndarray, face: Face) -> np.ndarray:
        """SPEC 2.5: the backend's fusion of the ref image into the crop at full strength,
        blended in with the SPEC 2.5 mask (shared face parts × the "before" ratio, fused eyes at
        1, template lips at 0). A face the fusion cannot find skips it with a note."""
        return self._fusion(image, face, self.request.face_fusion_ratio_before, FUSION_BEFORE,
                            "before")

    def first_diffusion(self, image: np.ndarray, replaced: np.ndarray, face: Face) -> np.ndarray:
        """SPEC 2.6: inpaint the face-part mask with canny(input) + openpose(replaced) +
        colour layout(input), the first-diffusion steps and strength."""
        r = self.request
        mask = first_diffusion_mask(image, face, self.backend)
        pose, source = openpose(replaced, [face], store=self.models, backend=self.backend,
                                detector=self.pose_detector)
        self.result.openpose_source = source
        units = [("canny", canny(image), r.canny_weight),
                 ("openpose", pose, r.openpose_weight),
                 ("color", color_layout(image), r.color_weight)]
        if self.keep:
            self.result.intermediates["first_mask"] = mask
        return self._inpaint(image, mask, r.first_denoising_strength, r.first_diffusion_steps,
                             units)

    def colour_shift_first(self, image: np.ndarray, reference: np.ndarray,
                           face: Face) -> np.ndarray:
        """SPEC 2.7.1: LAB shift of the face toward the original crop (parts incl. mouth)."""
        return colour_shift(image, reference, face, self.backend, SHIFT_FIRST,
                            blur=self.size.px(SHIFT_BLUR))

    def fusion_after(self, image: np.ndarray, face: Face) -> np.ndarray:
        """SPEC 2.7.2: fusion as 2.5 on the first-diffusion output, the "after" ratio."""
        return self._fusion(image, face, self.request.face_fusion_ratio_after, FUSION_AFTER,
                            "after")

    def second_diffusion(self, image: np.ndarray, face: Face) -> np.ndarray:
        """SPEC 2.7.3: inpaint ring ∪ eyes ∪ lips with canny(fused) + tile(fused)."""
        r = self.request
        mask = second_diffusion_mask(image, face, self.backend, mouth=r.mouth_mask,
                                     scale=self.size.scale)
        if self.keep:
            self.result.intermediates["second_mask"] = mask
        units = [("canny", canny(image), r.second_canny_weight),
                 ("tile", tile(image), r.second_tile_weight)]
        return self._inpaint(image, mask, r.second_denoising_strength, r.second_diffusion_steps,
                             units)

    def colour_shift_last(self, image: np.ndarray, reference: np.ndarray,
                          face: Face) -> np.ndarray:
        """SPEC 2.7.4: as colour shift first, parts skin, brows, eyes, nose."""
        return colour_shift(image, reference, face, self.backend, SHIFT_LAST,
                            blur=self.size.px(SHIFT_BLUR))

    def paste_back(self, template: np.ndarray, crop: Crop, image: np.ndarray) -> np.ndarray:
        """SPEC 2.7.5: the crop back at its ``box×3`` size into the template (changed px only)."""
        pasted, alpha = paste_changed(template, crop.box, crop.image, image)
        self.result.image, self.result.alpha, self.result.box = pasted, alpha, crop.box
        return pasted
