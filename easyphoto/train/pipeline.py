"""The training pipeline, top to bottom: preprocess → LoRA → validation → fusion → face_id.

:func:`train_into` fills one run folder (the store swaps it in on success)::

    photos/ dataset/ ref.jpg embeddings.npy preprocess.json   (preprocess)
    checkpoints/checkpoint-<step>.safetensors                 (training; removed at the end
                                                              unless keep_checkpoints)
    validation/step<k>_<template>.jpg                         (validation renders)
    lora.safetensors face_id.jpg meta.json                    (fusion)

It runs inside the training subprocess (``python -m easyphoto.train``); progress goes through
one :data:`ProgressFn`, cancellation through a :class:`CancelToken`.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import shutil
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from .. import __version__
from ..face import get_face_backend
from ..params import TrainRequest
from ..progress import CancelToken, Progress, ProgressFn, no_progress
from ..store import atomic_write_json

log = logging.getLogger(__name__)

#: Validation templates shipped with EasyPhoto (``templates/validation``).
TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates" / "validation"
#: Validation templates per run (SPEC 1.4).
VALIDATION_TEMPLATES = 4


@contextlib.contextmanager
def _timed(timings: dict, stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(time.perf_counter() - started, 3)


def _stage_progress(progress: ProgressFn, stage: str, cancel: CancelToken):
    """Adapt a ``(done, total, message)`` callback to :class:`Progress` (and check cancel)."""
    def report(done: int, total: int, message: str = "") -> None:
        cancel.check()
        progress(Progress(stage=stage, done=done, total=total, message=message))

    return report


def _versions() -> dict:
    import importlib.metadata as metadata

    found = {"easyphoto": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "peft"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def preprocess_stage(run_dir: Path, request: TrainRequest, photos: Sequence[Path], backend,
                     progress: ProgressFn, cancel: CancelToken):
    """SPEC 1.2 into ``run_dir``; returns the PreprocessResult."""
    from .preprocess import preprocess

    return preprocess(photos, run_dir, backend, request,
                      progress=_stage_progress(progress, "preprocess", cancel))


def training_stage(run_dir: Path, request: TrainRequest, dataset_dir: Path, kept: int,
                   components, progress: ProgressFn, cancel: CancelToken, speedups=None):
    """SPEC 1.3: LoRA checkpoints every ``validation_steps`` and at the final step
    (``speedups``: :class:`~.lora.TrainSpeedups`, default its defaults)."""
    from .lora import train_lora

    total = request.train_steps(kept)
    log.info("training %d steps on %d photos (rank %d, alpha %d, %d px)", total, kept,
             request.rank, request.network_alpha, request.resolution)
    # SD1.5 checkpoints stay on the GPU for validation (~150 MB each at rank 128); SDXL's are
    # several times larger, on cards with less room to spare: validation reads its files.
    keep = request.validation and components.family == "sd15"
    return train_lora(components, dataset_dir, request, run_dir / "checkpoints", total,
                      progress=progress, cancel=cancel, keep_snapshots=keep, speedups=speedups)


def template_generation_stage(components, models_dir: Optional[Path],
                              limit: int = VALIDATION_TEMPLATES, progress: ProgressFn = no_progress,
                              cancel: Optional[CancelToken] = None) -> list:
    """Validation templates made by the base model (before training adds its LoRA) where
    ``templates/validation`` holds fewer than ``limit`` images; cached per base model."""
    from .generated_templates import default_cache, generated_templates, missing_count, recipes
    from .validate import template_files

    available = len(template_files(TEMPLATES_DIR)) if TEMPLATES_DIR.is_dir() else 0
    return generated_templates(components, recipes(TEMPLATES_DIR / "manifest.json"),
                               default_cache(models_dir), missing_count(available, limit),
                               progress, cancel)


def validation_stage(run_dir: Path, request: TrainRequest, components, checkpoints, prep,
                     backend, progress: ProgressFn, cancel: CancelToken,
                     generated: Sequence = ()) -> dict:
    """SPEC 1.4: render, score, fuse the top-k; writes lora.safetensors and face_id.jpg."""
    from .fusion import choose_and_fuse
    from .validate import render_all_checkpoints, score_renders, validation_templates

    kept_photos = [run_dir / "photos" / p["stored_as"] for p in prep.report["photos"]
                   if p.get("verdict") == "ok" and p.get("stored_as")]
    templates = validation_templates(TEMPLATES_DIR, kept_photos, backend=backend,
                                     limit=VALIDATION_TEMPLATES, generated=generated)
    renders = render_all_checkpoints(components, checkpoints, templates, request, run_dir / "validation",
                                     progress=progress, cancel=cancel)
    score_renders(renders, prep.embeddings, backend)
    fusion = choose_and_fuse(renders, checkpoints, request.fusion_top_k, run_dir / "lora.safetensors",
                             face_id_path=run_dir / "face_id.jpg", ref_image=prep.ref_image)
    return {**fusion.to_dict(), "templates": templates.to_dict()}


def final_checkpoint_only(run_dir: Path, checkpoints, prep) -> dict:
    """Validation off: the final checkpoint is the LoRA and the reference photo is face_id."""
    final = checkpoints[-1]
    shutil.copyfile(final.path, run_dir / "lora.safetensors")
    shutil.copyfile(prep.ref_image, run_dir / "face_id.jpg")
    return {"fallback": True, "reason": "validation is off: the final checkpoint is used",
            "checkpoints": {str(final.path.name): 1.0}, "face_id": "ref.jpg"}


def train_into(run_dir: Path, request: TrainRequest, photos: Sequence[Path],
               progress: ProgressFn = no_progress, cancel: Optional[CancelToken] = None,
               models_dir: Optional[Path] = None) -> dict:
    """Run the whole training of ``request`` into ``run_dir``; returns the summary for the user."""
    from .loading import load_components

    from .start_up import TrainingStartUp

    request, cancel, timings = request.resolved(), cancel or CancelToken(), {}
    # while photos and models load: GPU libraries read ahead, kernels compiled
    start_up = TrainingStartUp(request)
    backend = get_face_backend(request.face_backend, models_dir=models_dir)
    with _timed(timings, "preprocess"):
        prep = preprocess_stage(run_dir, request, photos, backend, progress, cancel)
    with _timed(timings, "load_models"):
        components = load_components(request.base_model, request.sdxl, models_dir=models_dir,
                                     mixed_precision=request.mixed_precision,
                                     with_canny=request.validation and request.validation_canny)
    generated = []
    if request.validation:
        with _timed(timings, "validation_templates"):
            generated = template_generation_stage(components, models_dir, progress=progress,
                                                  cancel=cancel)
    speedups = start_up.speedups(request.train_steps(prep.kept))
    with _timed(timings, "train"):
        output = training_stage(run_dir, request, prep.dataset_dir, prep.kept, components,
                                progress, cancel, speedups)
    start_up_summary = start_up.finish()
    with _timed(timings, "validation_and_fusion"):
        if request.validation:
            fusion = validation_stage(run_dir, request, components, output.checkpoints, prep,
                                      backend, progress, cancel, generated)
        else:
            fusion = final_checkpoint_only(run_dir, output.checkpoints, prep)
    if not request.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    meta = {"status": "ready", "params": request.to_dict(), "base_model": request.base_model,
            "base_id": components.base_id, "family": components.family,
            "steps": output.checkpoints[-1].step, "photos_kept": prep.kept,
            "checkpoints": [{"step": c.step, "file": c.path.name} for c in output.checkpoints],
            "loss_first": output.losses[0] if output.losses else None,
            "loss_last": output.losses[-1] if output.losses else None,
            "fusion": fusion, "preprocess": prep.report, "face_backend": backend.name,
            "timings": {**timings, **output.seconds}, "versions": _versions(),
            "speedups": {"attention": speedups.attention,
                         "channels_last": speedups.channels_last_for(components.dtype),
                         "start_up": start_up_summary}}
    atomic_write_json(run_dir / "meta.json", meta)
    progress(Progress(stage="done", done=1, total=1, message="training finished"))
    return {"steps": meta["steps"], "photos_kept": prep.kept, "fusion": fusion, "timings": meta["timings"]}
