"""Fusing the best validation checkpoints into the user's LoRA (SPEC 1.4).

Renders are scored first by :func:`easyphoto.train.validate.score_renders`.

* :func:`choose_and_fuse`: the top-k renders by score (k ≤ ``top_k``: only scored renders
  count); a checkpoint chosen ``c`` times weighs ``c / k``; the weighted average
  (:func:`easyphoto.train.lora_io.fuse_checkpoints`) is the user's LoRA; the single best render
  becomes ``face_id.jpg`` (its bytes copied). With no scored render at all, the final
  checkpoint is copied as the LoRA and the reference image becomes ``face_id.jpg`` — and the
  result says so.

Ties are broken deterministically: higher score, then later checkpoint step, then template name.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from ..errors import EasyPhotoError, InvalidRequest
from ..images import load_rgb_array
from ..store import atomic_write_bytes
from .lora_io import fuse_checkpoints
from .validate import Render, checkpoint_files, encode_jpeg

log = logging.getLogger(__name__)

PathLike = Union[str, Path]


class FusionError(EasyPhotoError):
    """Fusion cannot produce a LoRA (no checkpoint, nothing to fall back to)."""


@dataclass
class FusionResult:
    """What fusion did; :meth:`to_dict` is JSON-serialisable for ``meta.json``.

    ``chosen``: the renders used, best first; ``weights``: ``{"step", "checkpoint", "count",
    "weight"}`` per fused checkpoint (by step); ``face_id_source``: ``"render"`` or
    ``"reference image"``; ``fallback`` + ``reason`` when no render had a face; ``renders``:
    every render's ``to_dict()`` (its score or why it has none).
    """

    lora_path: Path
    face_id_path: Path
    face_id_source: str
    face_id_render: Optional[str]
    chosen: list
    weights: list
    top_k: int
    k: int
    fallback: bool
    reason: Optional[str]
    message: str
    renders: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"lora": self.lora_path.name, "face_id": self.face_id_path.name,
                "face_id_source": self.face_id_source, "face_id_render": self.face_id_render,
                "chosen": [r.to_dict() for r in self.chosen], "weights": list(self.weights),
                "top_k": self.top_k, "k": self.k, "fallback": self.fallback,
                "reason": self.reason, "message": self.message, "renders": list(self.renders)}


def rank_renders(renders: Sequence[Render]) -> list:
    """Scored renders, best first (score ↓, then step ↓, then template name ↑)."""
    scored = [r for r in renders if r.score is not None]
    return sorted(scored, key=lambda r: (-r.score, -r.step, r.template))


def checkpoint_weights(chosen: Sequence[Render], checkpoints: Mapping[int, Path]) -> list:
    """``[{"step", "checkpoint" (file name), "count", "weight"}]`` by step; weight = count / k
    with k = ``len(chosen)``."""
    counts = Counter(r.step for r in chosen)
    missing = sorted(set(counts) - set(checkpoints))
    if missing:
        raise InvalidRequest(f"renders of checkpoint step(s) {missing} have no checkpoint file.")
    return [{"step": step, "checkpoint": Path(checkpoints[step]).name, "count": counts[step],
             "weight": counts[step] / len(chosen)} for step in sorted(counts)]


def _write_face_id(render: Render, face_id_path: Path) -> None:
    """The render's saved JPEG bytes (or a fresh JPEG of its image) → ``face_id_path``."""
    if render.path is not None and Path(render.path).is_file():
        atomic_write_bytes(face_id_path, Path(render.path).read_bytes())
    else:
        atomic_write_bytes(face_id_path, encode_jpeg(render.image))


def _fallback(renders: Sequence[Render], checkpoints: Mapping[int, Path], top_k: int,
              out_path: Path, face_id_path: Path,
              ref_image: Optional[PathLike]) -> FusionResult:
    """No face in any render: final checkpoint as the LoRA, reference image as face_id."""
    if ref_image is None:
        raise FusionError("no validation render shows a face and there is no reference image to "
                          "use as face_id instead.")
    final, reference = max(checkpoints), Path(ref_image)
    atomic_write_bytes(out_path, Path(checkpoints[final]).read_bytes())
    if reference.suffix.lower() in (".jpg", ".jpeg"):
        atomic_write_bytes(face_id_path, reference.read_bytes())
    else:
        atomic_write_bytes(face_id_path, encode_jpeg(load_rgb_array(reference)))
    reason = f"no face was detected in any of the {len(renders)} validation renders"
    message = (f"{reason}; using the final checkpoint (step {final}) as the LoRA and the "
               "reference photo as the face_id image. The LoRA may be undertrained or the "
               "validation templates unsuitable.")
    log.warning("fusion: %s", message)
    weights = [{"step": final, "checkpoint": Path(checkpoints[final]).name, "count": 0,
                "weight": 1.0}]
    return FusionResult(out_path, face_id_path, "reference image", None, [], weights, top_k, 0,
                        True, reason, message, [r.to_dict() for r in renders])


def checkpoint_tensors(checkpoints) -> dict:
    """``{step: () -> kohya tensors}`` of the checkpoints kept in memory (``.lora``)."""
    if isinstance(checkpoints, Mapping):
        return {}
    return {int(c.step): c.lora.kohya_tensors for c in checkpoints
            if getattr(c, "lora", None) is not None}


def choose_and_fuse(renders: Sequence[Render], checkpoints, top_k: int, out_path: PathLike, *,
                    face_id_path: Optional[PathLike] = None,
                    ref_image: Optional[PathLike] = None) -> FusionResult:
    """SPEC 1.4 fusion of scored ``renders`` (see the module doc).

    ``checkpoints``: every checkpoint, as ``{step: file}`` or objects with ``.step`` / ``.path``
    (the largest step is the final one); ``out_path``: the fused LoRA; ``face_id_path``
    defaults to ``out_path``'s folder / ``face_id.jpg``; ``ref_image`` (the reference photo) is
    used only by the no-face fallback. Checkpoints that carry their tensors
    (``Checkpoint.lora``) are averaged from memory (the same tensors as their files).
    """
    in_memory = checkpoint_tensors(checkpoints)
    checkpoints = checkpoint_files(checkpoints)
    if not checkpoints:
        raise FusionError("there is no LoRA checkpoint to fuse.")
    if top_k < 1:
        raise InvalidRequest(f"fusion_top_k must be ≥ 1; got {top_k}.")
    out_path = Path(out_path)
    face_id_path = Path(face_id_path) if face_id_path else out_path.parent / "face_id.jpg"
    ranked = rank_renders(renders)
    if not ranked:
        return _fallback(renders, checkpoints, top_k, out_path, face_id_path, ref_image)
    chosen = ranked[:top_k]
    weights = checkpoint_weights(chosen, checkpoints)
    kept = {checkpoints[w["step"]]: in_memory[w["step"]]() for w in weights
            if w["step"] in in_memory}
    fuse_checkpoints([checkpoints[w["step"]] for w in weights], [w["weight"] for w in weights],
                     out_path, kept)
    best = chosen[0]
    _write_face_id(best, face_id_path)
    message = (f"fused {len(weights)} checkpoint(s) from the top {len(chosen)} of "
               f"{len(renders)} validation renders; face_id = step {best.step} "
               f"{best.template} (score {best.score:.3f})")
    log.info("fusion: %s", message)
    best_name = best.path.name if best.path else f"step{best.step}_{best.template}"
    return FusionResult(out_path, face_id_path, "render", best_name, chosen, weights, top_k,
                        len(chosen), False, None, message, [r.to_dict() for r in renders])
