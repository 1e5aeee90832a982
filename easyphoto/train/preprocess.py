"""Preprocessing (SPEC 1.2): user photos → a captioned dataset of white-background face crops.

:func:`preprocess` runs the steps in order, each a short function below:

1. :func:`~easyphoto.train.photo_check.check_photos` — verdicts, the chosen (largest) face,
   identity embeddings, outliers, the reference photo and the top ``max_photos``;
2. :func:`crop_face` ``box×3`` around the chosen face of every kept photo, then optional skin
   retouching of the crop (:func:`crop_and_retouch`);
3. :func:`enhance_small_crops` (step 7): crops with a side < 512 px are portrait-enhanced by the
   backend (at most half of the photos, smallest first); a backend without super-resolution
   (lite) gets a Lanczos resize to 512 instead, and the report says so. Then
   :func:`foreground_mask`: re-detect the face in the crop, widen its box (:func:`training_box`),
   AND it with the saliency mask > 128;
4. :func:`finish_image`: resize so the short side is the training resolution (aspect kept; the
   trainer random-crops) and set everything outside the mask to white (255). Whitening happens
   *after* the resize so the background is exactly 255 and the mask edge stays crisp;
5. write the dataset (``dataset/NNN.png`` + ``metadata.jsonl``, the diffusers / HF
   ``imagefolder`` layout), the originals (``photos/``), the reference crop (``ref.jpg``) and
   the kept photos' embeddings (``embeddings.npy``);
6. the report (step 9) → :attr:`PreprocessResult.report` and ``preprocess.json``.

Images are ``(H, W, 3)`` uint8 RGB arrays; masks ``(H, W)`` uint8 0/255; boxes in pixels.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from ..errors import InvalidRequest
from ..face.geometry import box_mask, crop
from ..face.types import Box, Face, FaceBackend
from ..images import MAX_FILE_BYTES, load_rgb_array
from ..params import CAPTION, TrainRequest
from ..store import atomic_write_bytes, atomic_write_json
from .photo_check import PhotoCheck, PhotoReport, check_photos

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

#: ``box×CROP_RATIO`` is cut around the chosen face (SPEC 1.2 step 2).
CROP_RATIO = 3.0
#: Crops with a side below this (px) are enhanced / upscaled (SPEC 1.2 step 7).
ENHANCE_MIN_SIDE = 512
#: The re-detected box grows by BOX_WIDEN·w left and right and moves down BOX_SHIFT_DOWN·h.
BOX_WIDEN, BOX_SHIFT_DOWN = 0.3, 0.15
#: Saliency values above this (of 0..255) are foreground.
SALIENCY_THRESHOLD = 128
#: Verdicts given here (in addition to photo_check's).
NO_FACE_IN_CROP, EMPTY_MASK = "no_face_in_crop", "empty_mask"
#: Report / folder names inside ``out_dir``.
DATASET, PHOTOS, REF_IMAGE, EMBEDDINGS, REPORT = ("dataset", "photos", "ref.jpg",
                                                  "embeddings.npy", "preprocess.json")


@dataclass
class PreprocessResult:
    """What :func:`preprocess` produced (all paths inside ``out_dir``)."""

    dataset_dir: Path
    #: ``dataset/NNN.png``, in the order of ``embeddings``.
    images: list[Path]
    ref_image: Path
    report: dict
    kept: int
    #: ``(kept, D)`` float32 identity embeddings of the kept photos (D = 128 lite, 512 full).
    embeddings: np.ndarray = field(repr=False)


@dataclass
class Sample:
    """One kept photo in flight: its check, the working image and what the report says of it.

    ``notes`` are merged into the photo's report entry: ``crop_box`` (original px), ``crop_size``,
    ``retouched``, ``enhance``, ``size``, ``dataset_face_box`` / ``dataset_train_box`` (dataset
    image px), ``mask_coverage`` (0..1) and ``dataset_image``.
    """

    check: PhotoCheck
    image: np.ndarray  # (H, W, 3) uint8, replaced step by step
    notes: dict = field(default_factory=dict)
    mask: Optional[np.ndarray] = None  # (H, W) uint8 0/255 at the working image's size
    box: Optional[Box] = None  # the widened training box in working-image pixels
    face: Optional[Face] = None  # the re-detected face in working-image pixels


class _Skip(Exception):
    """A kept photo turned out unusable in step 7: ``verdict`` and a human ``reason``."""

    def __init__(self, verdict: str, reason: str):
        super().__init__(reason)
        self.verdict, self.reason = verdict, reason


# ---- step 2: crop and retouch ----------------------------------------------------------------
def crop_face(image: np.ndarray, face: Face, ratio: float = CROP_RATIO) -> tuple[np.ndarray, Box]:
    """``(crop, box)``: the ``face.box × ratio`` region of ``image`` (clipped to the image)."""
    height, width = image.shape[:2]
    box = face.box.scaled(ratio, clip=(width, height))
    region, _ = crop(image, box)
    return region, box


def crop_and_retouch(check: PhotoCheck, path: Path, backend: FaceBackend,
                     retouch: bool) -> Sample:
    """Step 2 for one kept photo: reload it, crop ``box×3``, retouch the crop if asked."""
    image = load_rgb_array(path, name=check.file)
    region, box = crop_face(image, check.face)
    notes = {"crop_box": box.to_list(), "crop_size": [region.shape[1], region.shape[0]],
             "retouched": retouch}
    if retouch:
        region = np.ascontiguousarray(backend.retouch(region))
    return Sample(check, region, notes)


# ---- step 3 (SPEC step 7): enhance, re-detect, mask --------------------------------------------
def resize_short_side(image: np.ndarray, side: int, nearest: bool = False) -> np.ndarray:
    """``image`` (``(H, W, ...)``) resized so ``min(H, W) == side``, aspect kept.

    Lanczos when enlarging, area averaging when shrinking; ``nearest`` for label masks.
    """
    height, width = image.shape[:2]
    if min(height, width) == side:
        return image.copy()
    if height <= width:
        size = (max(1, round(width * side / height)), side)
    else:
        size = (side, max(1, round(height * side / width)))
    method = (cv2.INTER_NEAREST if nearest else
              cv2.INTER_LANCZOS4 if side > min(height, width) else cv2.INTER_AREA)
    return cv2.resize(image, size, interpolation=method)


def enhance_crop(image: np.ndarray, backend: FaceBackend,
                 min_side: int = ENHANCE_MIN_SIDE) -> tuple[np.ndarray, str]:
    """Portrait-enhance one small crop: ``(image, how)``.

    ``backend.super_resolve``; when the backend has none (``None``), a Lanczos resize so the
    short side reaches ``min_side`` px. ``how`` is the sentence the report shows.
    """
    enhanced, how = backend.super_resolve(image), f"super-resolved by the {backend.name} backend"
    if enhanced is None:
        enhanced = resize_short_side(image, min_side)
        how = (f"none available, resized with Lanczos (the {backend.name} backend has no "
               "portrait enhancement)")
    (height, width), (out_h, out_w) = image.shape[:2], enhanced.shape[:2]
    return np.ascontiguousarray(enhanced), f"{how}: {width}×{height} → {out_w}×{out_h}"


def enhance_small_crops(samples: Sequence[Sample], backend: FaceBackend, enabled: bool,
                        min_side: int = ENHANCE_MIN_SIDE) -> None:
    """Step 7a, in place: crops with a side < ``min_side`` px are enhanced, at most
    ``len(samples) // 2`` of them, the smallest (short side) first. ``notes["enhance"]``
    records what happened to each small crop (and ``"not needed"`` for the others)."""
    small = sorted((s for s in samples if min(s.image.shape[:2]) < min_side),
                   key=lambda s: (min(s.image.shape[:2]), s.image.shape[0] * s.image.shape[1]))
    limit = len(samples) // 2
    for sample in samples:
        sample.notes["enhance"] = "not needed"
    for rank, sample in enumerate(small):
        if not enabled:
            sample.notes["enhance"] = "off (enhance_small_photos is false)"
        elif rank >= limit:
            sample.notes["enhance"] = (f"not enhanced: at most half of the photos ({limit} of "
                                       f"{len(samples)}) are enhanced, the smallest first")
        else:
            sample.image, sample.notes["enhance"] = enhance_crop(sample.image, backend, min_side)


def training_box(face_box: Box, width: int, height: int) -> Box:
    """The box the training image keeps: ``face_box`` widened by ``BOX_WIDEN·w`` on the left
    and on the right and shifted down by ``BOX_SHIFT_DOWN·h``, clipped to ``width × height``."""
    dx, dy = face_box.width * BOX_WIDEN, face_box.height * BOX_SHIFT_DOWN
    return Box(face_box.x0 - dx, face_box.y0 + dy, face_box.x1 + dx,
               face_box.y1 + dy).clipped(width, height)


def foreground_mask(image: np.ndarray, backend: FaceBackend) -> tuple[np.ndarray, Face, Box]:
    """Step 7b: ``(mask, face, box)`` for a crop.

    Re-detects the largest face, builds :func:`training_box` and returns
    ``(saliency > SALIENCY_THRESHOLD) AND inside box`` as an ``(H, W)`` uint8 0/255 mask.
    Raises :class:`_Skip` when no face is found or the mask is empty.
    """
    height, width = image.shape[:2]
    faces = backend.detect(image)
    if not faces:
        raise _Skip(NO_FACE_IN_CROP, "no face was found again in the box×3 crop "
                                     "(after retouching / enhancement)")
    face = max(faces, key=lambda f: f.box.area)
    box = training_box(face.box, width, height)
    salient = np.asarray(backend.saliency(image)) > SALIENCY_THRESHOLD
    mask = np.where(salient & (box_mask((height, width), box) > 0), 255, 0).astype(np.uint8)
    if not mask.any():
        raise _Skip(EMPTY_MASK, "the person mask (saliency inside the widened face box) is empty")
    return mask, face, box


def whiten_background(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A copy of ``image`` (``(H, W, 3)``) with every pixel where ``mask == 0`` set to 255."""
    out = image.copy()
    out[mask == 0] = 255
    return out


def finish_image(sample: Sample, resolution: int) -> np.ndarray:
    """Step 4: resize the crop so its short side is ``resolution`` px, then whiten outside the
    (resized) mask. Records the sizes and boxes in dataset-image pixels in ``sample.notes``."""
    image = resize_short_side(sample.image, resolution)
    mask = resize_short_side(sample.mask, resolution, nearest=True)
    scale = image.shape[1] / sample.image.shape[1]
    sample.notes.update({
        "size": [image.shape[1], image.shape[0]],
        "dataset_face_box": _scaled(sample.face.box, scale).to_list(),
        "dataset_train_box": _scaled(sample.box, scale).to_list(),
        "mask_coverage": round(float((mask > 0).mean()), 4)})
    return whiten_background(image, mask)


def _scaled(box: Box, scale: float) -> Box:
    return Box(*(value * scale for value in (box.x0, box.y0, box.x1, box.y1)))


# ---- step 5: files -----------------------------------------------------------------------------
def copy_originals(paths: Sequence[Path], folder: Path) -> list[Optional[str]]:
    """Copy each file in ``paths`` byte for byte into ``folder`` under its own name, made unique
    (``name_1.ext`` ...; case-insensitively; files already in ``folder`` are never overwritten).
    Returns the stored name per path, ``None`` for a path that is not a regular file or is over
    the upload byte limit."""
    folder.mkdir(parents=True, exist_ok=True)
    taken = {p.name.casefold() for p in folder.iterdir()}  # never overwrite a file
    stored: list[Optional[str]] = []
    for path in map(Path, paths):
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            stored.append(None)
            continue
        name, number = path.name, 0
        while name.casefold() in taken:
            number += 1
            name = f"{path.stem}_{number}{path.suffix}"
        taken.add(name.casefold())
        shutil.copyfile(path, folder / name)
        stored.append(name)
    return stored


def _encode(image: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **options)
    return buffer.getvalue()


def write_dataset(images: Sequence[np.ndarray], folder: Path, caption: str = CAPTION) -> list[Path]:
    """``folder/NNN.png`` (lossless) per image and ``folder/metadata.jsonl`` with
    ``{"file_name", "text": caption}`` per line (diffusers / HF ``imagefolder`` convention)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, lines = [], []
    for index, image in enumerate(images):
        path = atomic_write_bytes(folder / f"{index:03d}.png", _encode(image, "PNG"))
        paths.append(path)
        lines.append(json.dumps({"file_name": path.name, "text": caption}, ensure_ascii=False))
    atomic_write_bytes(folder / "metadata.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
    return paths


def save_embeddings(path: Path, embeddings: np.ndarray) -> Path:
    """``embeddings`` as a plain ``.npy`` (no pickle), written atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(embeddings), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())


# ---- the pipeline ------------------------------------------------------------------------------
def _no_photos_error(photos: Sequence[PhotoCheck], stage: str) -> InvalidRequest:
    """The error for "nothing to train on", naming every photo with its verdict and reason."""
    lines = "; ".join(f"{p.file}: {p.verdict} ({p.reason or 'usable'})" for p in photos)
    error = InvalidRequest(f"no usable photo to train on ({stage}) — "
                           f"{lines or 'no photos given'}. Use 5-20 clear photos of one "
                           "person's face.")
    error.report = {"photos": [p.to_dict() for p in photos]}  # for the API / UI
    return error


def _mask_samples(samples: list[Sample], backend: FaceBackend) -> list[Sample]:
    """Step 7b for every sample; skipped ones get their verdict and reason on the check."""
    usable = []
    for sample in samples:
        try:
            sample.mask, sample.face, sample.box = foreground_mask(sample.image, backend)
        except _Skip as skip:
            sample.check.verdict, sample.check.reason = skip.verdict, skip.reason
            log.info("preprocess: %s skipped: %s", sample.check.file, skip.reason)
            continue
        usable.append(sample)
    return usable


def _report(check_report: PhotoReport, samples: Sequence[Sample],
            stored: Sequence[Optional[str]], request: TrainRequest, backend: FaceBackend,
            timings: dict) -> dict:
    """Step 9: the photo check's report plus what preprocessing did to each photo."""
    report = check_report.to_dict()
    notes = {id(s.check): s.notes for s in samples}
    for entry, check, name in zip(report["photos"], check_report.photos, stored):
        entry["stored_as"] = name
        entry.update(notes.get(id(check), {}))
    report.update({
        "ref_image": REF_IMAGE, "caption": CAPTION, "resolution": request.resolved().resolution,
        "skin_retouch": request.skin_retouch,
        "enhance_small_photos": request.enhance_small_photos,
        "max_photos": request.max_photos,
        "backend_fallback_reason": getattr(backend, "fallback_reason", None),
        "images": [n["dataset_image"] for n in (s.notes for s in samples)],
        "timings_s": {k: round(v, 3) for k, v in timings.items()}})
    return report


@contextlib.contextmanager
def _timed(timings: dict, stage: str) -> Iterator[None]:
    """Add the seconds the ``with`` block takes to ``timings[stage]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start


def _write_outputs(out_dir: Path, samples: Sequence[Sample], images: Sequence[np.ndarray],
                   reference: np.ndarray, paths: Sequence[Path]) -> tuple:
    """Step 5: dataset, originals, ``ref.jpg``, ``embeddings.npy``.

    Returns ``(image_paths, stored_names, ref_path, embeddings (N, D) float32)``.
    """
    image_paths = write_dataset(images, out_dir / DATASET)
    for sample, path in zip(samples, image_paths):
        sample.notes["dataset_image"] = f"{DATASET}/{path.name}"
    stored = copy_originals(paths, out_dir / PHOTOS)
    ref_path = atomic_write_bytes(out_dir / REF_IMAGE, _encode(reference, "JPEG", quality=95))
    embeddings = np.stack([s.check.embedding for s in samples]).astype(np.float32)
    save_embeddings(out_dir / EMBEDDINGS, embeddings)
    return image_paths, stored, ref_path, embeddings


def preprocess(photo_paths: Sequence[Path], out_dir: Path, backend: FaceBackend,
               request: TrainRequest, progress: Optional[Progress] = None) -> PreprocessResult:
    """SPEC 1.2 on ``photo_paths`` into ``out_dir`` (a fresh run folder, see the module doc).

    ``progress(done, total, message)`` is called along the way (total = 2·photos + 1).
    Raises :class:`~easyphoto.errors.InvalidRequest` naming every photo with its verdict and
    reason when no photo survives (``error.report`` holds the per-photo dicts); nothing is
    written then.
    """
    paths, out_dir = [Path(p) for p in photo_paths], Path(out_dir)
    total, timings = 2 * len(paths) + 1, {}
    tell = progress or (lambda done, _total, message: None)
    with _timed(timings, "total"):
        with _timed(timings, "check"):
            checked = check_photos(paths, backend, max_photos=request.max_photos,
                                   progress=lambda done, _n, message: tell(done, total, message))
        kept = [(c, p) for c, p in zip(checked.photos, paths) if c.verdict == "ok"]
        if not kept:
            raise _no_photos_error(checked.photos, "photo check")
        samples = []
        with _timed(timings, "crop_retouch"):
            for index, (check, path) in enumerate(kept):
                tell(len(paths) + index, total, f"cropping {check.file}")
                samples.append(crop_and_retouch(check, path, backend, request.skin_retouch))
        reference = next(s for s in samples if s.check.is_reference).image  # before enhancing
        with _timed(timings, "enhance"):
            enhance_small_crops(samples, backend, request.enhance_small_photos)
        with _timed(timings, "mask_resize"):
            samples = _mask_samples(samples, backend)
            if not samples:
                raise _no_photos_error(checked.photos, "face mask")
            tell(2 * len(paths), total, "writing the dataset")
            images = [finish_image(s, request.resolved().resolution) for s in samples]
        with _timed(timings, "write"):
            image_paths, stored, ref_path, embeddings = _write_outputs(
                out_dir, samples, images, reference, paths)
    report = _report(checked, samples, stored, request, backend, timings)
    atomic_write_json(out_dir / REPORT, report)
    tell(total, total, f"{len(samples)} of {len(paths)} photos kept")
    log.info("preprocess: %d of %d photos kept in %.1f s", len(samples), len(paths),
             timings["total"])
    return PreprocessResult(out_dir / DATASET, image_paths, ref_path, report, len(samples),
                            embeddings)
