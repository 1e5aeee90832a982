"""All the people on one template, then the finishing passes (SPEC 2.2, 2.8).

:func:`infer_group` reads top to bottom: detect the faces (left → right), give face *i* the
*i*-th user id (``none`` = untouched; trailing ``none``s only shorten the list; more faces than
ids: the extra faces stay; more ids than faces: :class:`TooFewFaces`), run the portrait
pipeline per person on a copy of the template whose *other* faces are painted white, merge each
result with its face box mask blurred 32, run the seam pass when two or more people were
processed, then background restore, skin retouching, super-resolution and similarity scores as
the request asks.

Ours, on top of the SPEC: each merge, the seam pass and background restore change only pixels
their stage really changed, the seam rings are clipped to the processed faces' ``box×3`` crops,
and faces left ``none`` (or without an id) are copied back from the template before the global
finishing passes (retouching and super-resolution still apply to the whole image, as in the
reference). Images are ``(H, W, 3)`` uint8 RGB at the template's size throughout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import cv2
import numpy as np

from ..engine.base import ControlUnit, Generation, LoraRef
from ..errors import EasyPhotoError, FaceNotFound
from ..face.geometry import box_mask
from ..face.types import Box, Face
from ..params import NO_USER, InferRequest
from ..progress import CancelToken
from .controls import canny, color_layout
from .portrait import (
    MASK_BLUR,
    Portrait,
    PortraitResult,
    UserAssets,
    WorkingSize,
    largest_face,
    paste_changed,
    resize,
)

logger = logging.getLogger(__name__)


class TooFewFaces(EasyPhotoError):
    """The template has fewer faces than the request has user ids."""


@dataclass(frozen=True)
class GroupSettings:
    """SPEC 2.8 constants. ``merge_blur`` and ``seam_pad`` are template px; ring widths, the
    background margin and short sides are px at the 512 working scale (scaled with it)."""

    merge_blur: int = 32
    seam_dilate: int = 64
    seam_erode: int = 32
    seam_pad: int = 50
    seam_short: int = 768
    seam_short_wide: int = 512
    seam_wide_aspect: float = 1.5
    seam_steps: int = 30
    seam_strength: float = 0.3
    background_dilate: int = 32
    #: steps of the background restore (the SPEC gives none; ours, as the seam pass).
    background_steps: int = 30
    #: an output face matches a template face when their boxes overlap by this IoU.
    score_iou: float = 0.3


@dataclass
class Person:
    """Face ``index`` (0 = leftmost) and what happened to it: ``status`` is ``"done"``,
    ``"none"`` (its id was ``none``) or ``"no id"`` (more faces than ids)."""

    index: int
    user_id: str
    face: Face = field(repr=False)
    status: str
    score: Optional[float] = None
    #: the portrait stages that ran for this person (SPEC 2.3–2.7 names).
    stages: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"index": self.index, "user_id": self.user_id, "status": self.status,
                "box": self.face.box.to_list(), "stages": list(self.stages),
                "score": None if self.score is None else round(self.score, 4)}


@dataclass
class Context:
    """What every person and pass of one template shares (see :class:`Portrait`'s args)."""

    engine: Any
    backend: Any
    request: InferRequest
    users: Mapping[str, UserAssets]
    seed: int
    size: WorkingSize
    prompt: tuple[str, str]
    style: Optional[LoraRef] = None
    models: Any = None
    pose_detector: Any = None
    settings: GroupSettings = field(default_factory=GroupSettings)
    cancel: Optional[CancelToken] = None
    keep: bool = False
    report: Optional[Callable[[str], None]] = None


@dataclass
class GroupOutput:
    """The finished image with the people, the stages that ran, notes and per-person results."""

    image: np.ndarray = field(repr=False)
    people: list[Person]
    stages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    portraits: list[PortraitResult] = field(default_factory=list, repr=False)

    @property
    def scores(self) -> list[str]:
        """``"{user_id}: {score:.2f}"`` per scored person (SPEC 2.8)."""
        return [f"{p.user_id}: {p.score:.2f}" for p in self.people if p.score is not None]


def detect_faces(backend: Any, image: np.ndarray, name: str) -> list[Face]:
    """Faces left → right (SPEC 2.2); FaceNotFound naming the template when there is none."""
    faces = sorted(backend.detect(image), key=lambda f: f.box.x0)
    if not faces:
        raise FaceNotFound(f"{name}: no face found in the template; choose a template with a "
                           "clearly visible face")
    return faces


def assign_people(faces: Sequence[Face], ids: Sequence[str],
                  name: str) -> tuple[list[Person], list[str]]:
    """Face *i* ← id *i* (SPEC 2.1). Returns the people and notes; TooFewFaces when the
    template has fewer faces than ids (after trailing ``none``s are dropped)."""
    if len(ids) > len(faces):
        raise TooFewFaces(f"{name}: the template has {len(faces)} face(s) but {len(ids)} user ids "
                          "were given (ids map to faces from left to right); use a template with "
                          f"at least {len(ids)} faces, or fewer ids")
    people = [Person(i, ids[i] if i < len(ids) else "", face,
                     "no id" if i >= len(ids) else "none" if ids[i].lower() == NO_USER else "done")
              for i, face in enumerate(faces)]
    notes = []
    if len(faces) > len(ids):
        notes.append(f"{name}: {len(faces)} faces found, {len(ids)} user id(s) given: face(s) "
                     f"{len(ids) + 1}-{len(faces)} from the left are left as they are")
    return people, notes


def isolate(template: np.ndarray, faces: Sequence[Face], index: int) -> np.ndarray:
    """SPEC 2.2: a copy with every face box but ``faces[index]``'s painted white (that face's
    own box is kept where boxes overlap)."""
    height, width = template.shape[:2]
    out = template.copy()
    for j, face in enumerate(faces):
        if j != index:
            x0, y0, x1, y1 = face.box.clipped(width, height).to_int()
            out[y0:y1, x0:x1] = 255
    x0, y0, x1, y1 = faces[index].box.clipped(width, height).to_int()
    out[y0:y1, x0:x1] = template[y0:y1, x0:x1]
    return out


def blurred_box(shape: tuple[int, int], box: Box, radius: int) -> np.ndarray:
    """``(H, W)`` float32 0..1: the box mask blurred over ``radius`` px."""
    mask = box_mask(shape, box).astype(np.float32) / 255.0
    return cv2.GaussianBlur(mask, (2 * radius + 1, 2 * radius + 1), radius / 2.0)


def merge_people(template: np.ndarray, results: Sequence[PortraitResult], faces: Sequence[Face],
                 blur: int) -> np.ndarray:
    """SPEC 2.8: one result as it is; several alpha-merged, each with its face box mask
    blurred ``blur`` px (and only where that person's pipeline pasted anything)."""
    if len(results) == 1:
        return results[0].image
    out = template.copy()
    for result, face in zip(results, faces):
        alpha = blurred_box(template.shape[:2], face.box, blur) * (result.alpha > 0)
        a = alpha[:, :, None]
        mixed = np.rint(out * (1.0 - a) + result.image.astype(np.float32) * a).astype(np.uint8)
        out = np.where(a > 0, mixed, out)
    return out


def _generation(ctx: Context, steps: int, controls: Sequence[ControlUnit]) -> Generation:
    """Sampling without LoRAs (seam pass, background restore)."""
    r = ctx.request
    return Generation(ctx.prompt[0], ctx.prompt[1], steps, r.cfg_scale, r.sampler, ctx.seed,
                      list(controls), [])


def _layout_controls(image: np.ndarray) -> list[ControlUnit]:
    """canny 1.0 + colour layout 1.0 of ``image`` (seam pass, background restore)."""
    return [ControlUnit("canny", canny(image), 1.0), ControlUnit("color", color_layout(image), 1.0)]


def _to_small(box: Box, offset: tuple[int, int], scale: tuple[float, float]) -> Box:
    (ox, oy), (sx, sy) = offset, scale
    return Box((box.x0 - ox) * sx, (box.y0 - oy) * sy, (box.x1 - ox) * sx, (box.y1 - oy) * sy)


def _kernel(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def seam_pass(ctx: Context, image: np.ndarray, faces: Sequence[Face],
              crops: Sequence[Sequence[int]]) -> np.ndarray:
    """SPEC 2.8: inpaint rings (dilate 64 − erode 32 of each face box) on the union box of the
    faces padded 50 px, short side ≤ 768 (≤ 512 if aspect > 1.5), canny 1.0 + colour 1.0, 30
    steps, denoise 0.3, no user LoRA; the rings are clipped to the faces' ``box×3`` ``crops``."""
    s, (height, width) = ctx.settings, image.shape[:2]
    union = Box(min(f.box.x0 for f in faces), min(f.box.y0 for f in faces),
                max(f.box.x1 for f in faces), max(f.box.y1 for f in faces))
    x0, y0, x1, y1 = Box(union.x0 - s.seam_pad, union.y0 - s.seam_pad, union.x1 + s.seam_pad,
                         union.y1 + s.seam_pad).clipped(width, height).to_int()
    aspect = max(x1 - x0, y1 - y0) / max(1, min(x1 - x0, y1 - y0))
    short = s.seam_short_wide if aspect > s.seam_wide_aspect else s.seam_short
    fit = WorkingSize(ctx.size.px(short), ctx.size.multiple, max_aspect=ctx.size.max_aspect)
    small_w, small_h = fit.fit(x1 - x0, y1 - y0)
    small = resize(image[y0:y1, x0:x1], (small_w, small_h))
    scale = (small_w / (x1 - x0), small_h / (y1 - y0))
    rings, limit = np.zeros((small_h, small_w), np.uint8), np.zeros((small_h, small_w), np.uint8)
    for face, crop in zip(faces, crops):
        inside = box_mask((small_h, small_w), _to_small(face.box, (x0, y0), scale))
        rings |= cv2.dilate(inside, _kernel(ctx.size.px(s.seam_dilate))) & \
            ~cv2.erode(inside, _kernel(ctx.size.px(s.seam_erode)))
        limit |= box_mask((small_h, small_w), _to_small(Box(*crop), (x0, y0), scale))
    rings &= limit
    repainted = ctx.engine.inpaint(small, rings, s.seam_strength,
                                   _generation(ctx, s.seam_steps, _layout_controls(small)),
                                   mask_blur=ctx.size.px(MASK_BLUR))
    return paste_changed(image, (x0, y0, x1, y1), small, repainted)[0]


def background_restore(ctx: Context, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """SPEC 2.8: inpaint everything but the faces (dilated 32) at the working size with canny
    1.0 + colour 1.0 and the request's strength; returned at the template's size, the faces
    keeping their own pixels."""
    height, width = image.shape[:2]
    small_w, small_h = ctx.size.fit(width, height)
    small = resize(image, (small_w, small_h))
    scale = (small_w / width, small_h / height)
    faces_mask = np.zeros((small_h, small_w), np.uint8)
    for face in faces:
        faces_mask |= box_mask((small_h, small_w), _to_small(face.box, (0, 0), scale))
    faces_mask = cv2.dilate(faces_mask, _kernel(ctx.size.px(ctx.settings.background_dilate)))
    repainted = ctx.engine.inpaint(small, 255 - faces_mask,
                                   ctx.request.background_restore_denoising_strength,
                                   _generation(ctx, ctx.settings.background_steps,
                                               _layout_controls(small)),
                                   mask_blur=ctx.size.px(MASK_BLUR))
    return paste_changed(image, (0, 0, width, height), small, repainted)[0]


def keep_faces(image: np.ndarray, template: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """Copy the template's pixels back into the boxes of faces that must stay untouched."""
    out, (height, width) = image.copy(), image.shape[:2]
    for face in faces:
        x0, y0, x1, y1 = face.box.clipped(width, height).to_int()
        out[y0:y1, x0:x1] = template[y0:y1, x0:x1]
    return out


def super_resolve(backend: Any, image: np.ndarray, ratio: float) -> Optional[np.ndarray]:
    """SPEC 2.8: ``image·(1−r) + sr·r`` at the template's size; ``None`` when the backend has
    no super-resolution model."""
    enhanced = backend.super_resolve(image)
    if enhanced is None:
        return None
    enhanced = resize(np.asarray(enhanced, np.uint8), (image.shape[1], image.shape[0]))
    mixed = image.astype(np.float32) * (1.0 - ratio) + enhanced.astype(np.float32) * ratio
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def _iou(a: Box, b: Box) -> float:
    inter = Box(max(a.x0, b.x0), max(a.y0, b.y0), min(a.x1, b.x1), min(a.y1, b.y1)).area
    return inter / max(a.area + b.area - inter, 1e-6)


def similarity_scores(ctx: Context, image: np.ndarray, people: Sequence[Person]) -> list[str]:
    """Sets ``score`` (the backend's similarity of output face vs the user's ref image) on each
    processed person; returns notes for faces that could not be scored."""
    found, notes = ctx.backend.detect(image), []
    for person in (p for p in people if p.status == "done"):
        user = ctx.users[person.user_id]
        ref_face = largest_face(ctx.backend, user.ref)
        match = max(found, key=lambda f: _iou(f.box, person.face.box), default=None)
        overlap = 0.0 if match is None else _iou(match.box, person.face.box)
        if ref_face is None or overlap < ctx.settings.score_iou:
            notes.append(f"no similarity score for {person.user_id}: its face was not found again")
            continue
        person.score = float(ctx.backend.similarity(ctx.backend.embed(image, match),
                                                    ctx.backend.embed(user.ref, ref_face)))
    return notes


def _stage_reporter(ctx: Context, user_id: str) -> Optional[Callable[[str], None]]:
    if ctx.report is None:
        return None
    report = ctx.report
    return lambda stage: report(f"{user_id}: {stage}")


def _run_people(ctx: Context, template: np.ndarray, faces: Sequence[Face],
                people: Sequence[Person], out: GroupOutput) -> None:
    for person in (p for p in people if p.status == "done"):
        portrait = Portrait(ctx.engine, ctx.backend, ctx.request, ctx.users[person.user_id],
                            seed=ctx.seed, size=ctx.size, prompt=ctx.prompt, style=ctx.style,
                            models=ctx.models, pose_detector=ctx.pose_detector, keep=ctx.keep,
                            cancel=ctx.cancel, on_stage=_stage_reporter(ctx, person.user_id))
        result = portrait.run(isolate(template, faces, person.index), faces[person.index])
        out.portraits.append(result)
        person.stages = list(result.stages)
        out.notes.extend(result.notes)


def infer_group(template: np.ndarray, ctx: Context, name: str = "template") -> GroupOutput:
    """Template ``(H, W, 3)`` uint8 RGB → GroupOutput at the same size (SPEC 2.2–2.8)."""
    r, s = ctx.request, ctx.settings
    faces = detect_faces(ctx.backend, template, name)
    people, notes = assign_people(faces, r.people(), name)
    out = GroupOutput(template, people, notes=notes)
    _run_people(ctx, template, faces, people, out)
    done = [p for p in people if p.status == "done"]
    image = merge_people(template, out.portraits, [p.face for p in done], s.merge_blur)
    out.stages.append("merge")
    if len(done) >= 2:
        _check(ctx, "seam pass")
        image = seam_pass(ctx, image, [p.face for p in done], [p.box for p in out.portraits])
        out.stages.append("seam_pass")
    if r.background_restore:
        _check(ctx, "background restore")
        image = background_restore(ctx, image, faces)
        out.stages.append("background_restore")
    image = keep_faces(image, template, [p.face for p in people if p.status != "done"])
    if r.skin_retouching:
        _check(ctx, "skin retouching")
        image = np.asarray(ctx.backend.retouch(image), np.uint8)
        out.stages.append("skin_retouching")
    if r.super_resolution:
        _check(ctx, "super-resolution")
        enhanced = super_resolve(ctx.backend, image, r.super_resolution_ratio)
        if enhanced is None:
            out.notes.append(f"super-resolution skipped: the {getattr(ctx.backend, 'name', '')} "
                             "face backend has no super-resolution model")
        else:
            image = enhanced
            out.stages.append("super_resolution")
    if r.display_score:
        out.notes.extend(similarity_scores(ctx, image, people))
        out.stages.append("similarity_score")
    out.image = image
    return out


def _check(ctx: Context, stage: str) -> None:
    if ctx.cancel is not None:
        ctx.cancel.check()
    if ctx.report:
        ctx.report(stage)
