"""Photo check: the start of preprocessing (SPEC 1.2 steps 1–6 and the outlier rule).

For every photo: read it safely, detect faces, choose the most prominent (largest) face, its
roll-angle score and identity embedding; then score identity consistency over the group,
flag photos of another person, rank the rest and choose the reference ("roop") image.

Verdicts, each with a human reason:

==================  ===================================================================
``ok``              usable; trained on
``unreadable``      missing, empty, not an image, corrupt or truncated
``too_large``       over the pixel/byte limit
``too_small``       image or face too small to learn a face from
``no_face``         no face detected
``duplicate``       the same file content as an earlier photo
``other_person``    the face does not match the rest of the group (≥ 3 faces needed)
``surplus``         a good photo beyond the ``max_photos`` best by identity score
==================  ===================================================================
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..errors import ImageError
from ..face.types import Face, FaceBackend
from ..images import load_rgb_array

log = logging.getLogger(__name__)

#: Smallest image side (px) and smallest face width (px) worth training on.
MIN_IMAGE_SIDE = 64
MIN_FACE_SIDE = 48
#: Below this many faces the outlier rule reports but does not exclude (SPEC 1.2 step 4).
MIN_GROUP_FOR_OUTLIERS = 3

Progress = Callable[[int, int, str], None]


@dataclass
class PhotoCheck:
    """The verdict on one photo. ``embedding`` is kept for training, not serialised."""

    file: str
    verdict: str = "ok"
    reason: str = ""
    readable: bool = False
    width: int = 0
    height: int = 0
    faces_found: int = 0
    face: Optional[Face] = None
    angle_score: Optional[float] = None
    id_score: Optional[float] = None
    group_similarity: Optional[float] = None
    is_reference: bool = False
    embedding: Optional[np.ndarray] = field(default=None, repr=False)

    def to_dict(self) -> dict:
        def rounded(value: Optional[float]) -> Optional[float]:
            return None if value is None else round(float(value), 4)

        return {"file": self.file, "verdict": self.verdict, "reason": self.reason,
                "readable": self.readable, "width": self.width, "height": self.height,
                "faces_found": self.faces_found,
                "face_box": self.face.box.to_list() if self.face else None,
                "angle_score": rounded(self.angle_score), "id_score": rounded(self.id_score),
                "group_similarity": rounded(self.group_similarity),
                "is_reference": self.is_reference}


@dataclass
class PhotoReport:
    """All verdicts, in input order, plus the reference photo and the threshold used."""

    photos: list[PhotoCheck]
    backend: str
    threshold: float

    @property
    def kept(self) -> list[PhotoCheck]:
        return [p for p in self.photos if p.verdict == "ok"]

    @property
    def reference(self) -> Optional[PhotoCheck]:
        return next((p for p in self.photos if p.is_reference), None)

    def to_dict(self) -> dict:
        ref = self.reference
        return {"backend": self.backend, "same_person_threshold": self.threshold,
                "kept": len(self.kept), "dropped": len(self.photos) - len(self.kept),
                "reference": ref.file if ref else None,
                "photos": [p.to_dict() for p in self.photos]}


def inspect_photo(path: Path, backend: FaceBackend) -> tuple[PhotoCheck, Optional[str]]:
    """Steps 1 and 3 for one photo: read, detect, choose the largest face, embed.

    Returns the check and the sha256 of the file content (``None`` if unreadable).
    """
    check = PhotoCheck(file=path.name)
    try:
        data = path.read_bytes()
        image = load_rgb_array(data, name=path.name)
    except (ImageError, OSError) as exc:
        check.verdict = getattr(exc, "code", "unreadable")
        check.reason = str(exc)
        return check, None
    check.readable, (check.height, check.width) = True, image.shape[:2]
    digest = hashlib.sha256(data).hexdigest()
    if min(check.width, check.height) < MIN_IMAGE_SIDE:
        check.verdict = "too_small"
        check.reason = (f"the image is {check.width}×{check.height} px; at least "
                        f"{MIN_IMAGE_SIDE} px a side is needed")
        return check, digest
    faces = backend.detect(image)
    check.faces_found = len(faces)
    if not faces:
        check.verdict, check.reason = "no_face", "no face was found in this photo"
        return check, digest
    face = max(faces, key=lambda f: f.box.area)  # ours: the largest, not the leftmost
    check.face, check.angle_score = face, face.angle_score
    if min(face.box.width, face.box.height) < MIN_FACE_SIDE:
        check.verdict = "too_small"
        check.reason = (f"the face is only {face.box.width:.0f}×{face.box.height:.0f} px; use a "
                        f"photo where the face is at least {MIN_FACE_SIDE} px wide")
        return check, digest
    check.embedding = np.asarray(backend.embed(image, face), dtype=np.float64)
    if len(faces) > 1:
        check.reason = f"{len(faces)} faces found; the largest is used"
    return check, digest


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def score_identity(checks: Sequence[PhotoCheck], backend: FaceBackend) -> None:
    """Step 4: ``id_score = cos(emb, mean(emb))`` and the outlier rule, in place."""
    faces = [c for c in checks if c.verdict == "ok" and c.embedding is not None]
    if not faces:
        return
    embeddings = np.stack([c.embedding for c in faces])
    mean = embeddings.mean(axis=0)
    for index, check in enumerate(faces):
        check.id_score = _cosine(check.embedding, mean)
        if len(faces) < 2:
            continue
        others = np.delete(embeddings, index, axis=0).mean(axis=0)
        check.group_similarity = float(backend.similarity(check.embedding, others))
    if len(faces) < MIN_GROUP_FOR_OUTLIERS:
        for check in faces:
            if check.group_similarity is not None and check.group_similarity < backend.same_person_threshold:
                check.reason = _join(check.reason, "may be another person (too few photos to exclude it)")
        return
    for check in faces:
        if check.group_similarity < backend.same_person_threshold:
            check.verdict = "other_person"
            check.reason = _join(check.reason, (
                f"probably another person: similarity to the other photos "
                f"{check.group_similarity:.2f} < {backend.same_person_threshold:.2f}"))


def _join(first: str, second: str) -> str:
    return f"{first}; {second}" if first else second


def choose_reference(checks: Sequence[PhotoCheck], max_photos: int) -> None:
    """Steps 5–6: reference = max ``angle_score × id_score``; keep the top ``max_photos``."""
    usable = [c for c in checks if c.verdict == "ok" and c.id_score is not None]
    if not usable:
        return
    best = max(usable, key=lambda c: c.angle_score * c.id_score)
    best.is_reference = True
    ranked = sorted(usable, key=lambda c: c.id_score, reverse=True)
    for check in ranked[max_photos:]:
        if check.is_reference:
            continue
        check.verdict = "surplus"
        check.reason = _join(check.reason, f"only the best {max_photos} photos are kept")


def check_photos(paths: Sequence[Path], backend: FaceBackend, max_photos: int = 15,
                 progress: Optional[Progress] = None) -> PhotoReport:
    """Check ``paths`` (in order) with ``backend``: verdicts, scores and the reference photo."""
    checks: list[PhotoCheck] = []
    seen: dict[str, str] = {}
    for index, path in enumerate(paths):
        if progress:
            progress(index, len(paths), f"checking {Path(path).name}")
        check, digest = inspect_photo(Path(path), backend)
        if digest and digest in seen and check.verdict == "ok":
            check.verdict, check.reason = "duplicate", f"the same photo as {seen[digest]}"
        elif digest:
            seen.setdefault(digest, check.file)
        checks.append(check)
    score_identity(checks, backend)
    choose_reference(checks, max_photos)
    if progress:
        progress(len(paths), len(paths), "done")
    return PhotoReport(checks, backend.name, backend.same_person_threshold)
