"""Validation (SPEC 1.4, paper): render the validation templates with each LoRA checkpoint.

* :func:`validation_templates`: the images of ``templates/validation/`` that show a face, or —
  when there are none — up to 4 of the user's own photos (and the result says so);
* :class:`ValidationRenderer` / :func:`render_validation` / :func:`render_all_checkpoints`: for
  every checkpoint and template, crop the template at ``box×3`` around its face, resize to the
  training resolution, inpaint the face (mask ``box×1.3``) with the checkpoint's LoRA —
  strength 0.65, 20 steps, cfg 9, prompt = the training caption, canny ControlNet (100/200,
  weight 1.0) on the crop — then composite back onto the crop so only the masked face changes.
  Renders are kept as ``<out_dir>/step<k>_<template>.jpg``.

Speed: the renderer builds the diffusers pipeline **once per run** around the models training
already holds (no reload from disk per round) and switches LoRA checkpoints without touching
the base weights (see :mod:`easyphoto.train.validation_pipeline` for the inputs, the pipeline
and the LoRA switch). Scoring and fusion: :mod:`easyphoto.train.fusion`.

Images are ``(H, W, 3)`` uint8 RGB arrays, boxes in pixels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image

from ..errors import ImageError, InvalidRequest
from ..face.types import Box, Face, FaceBackend
from ..images import IMAGE_SUFFIXES, load_rgb_array
from ..params import CAPTION, TrainRequest
from ..progress import CancelToken, Progress, ProgressFn, no_progress
from ..store import atomic_write_bytes
from .components import TrainComponents
from .validation_pipeline import (CANNY_WEIGHT, IN_PLACE, MERGED, MergedLora, ValidationError,
                                  ValidationInput, build_validation_pipeline, composite,
                                  encode_jpeg, eval_mode, feather_px, lora_applied, prepare_input)

log = logging.getLogger(__name__)

#: ``Template.source`` / ``TemplateSet.source`` values.
SOURCE_TEMPLATES, SOURCE_USER = "templates", "user photos"
#: ``Render.reason`` of a render without a detectable face.
NO_FACE = "no face detected in the render"


@dataclass(frozen=True)
class Template:
    """A validation template: ``image`` (H, W, 3) uint8 RGB, its largest ``face``, where from."""

    name: str
    image: np.ndarray = field(repr=False)
    face: Face
    source: str
    path: Optional[Path] = None


@dataclass
class TemplateSet:
    """The templates validation uses; behaves as a sequence of :class:`Template`.

    ``source`` is ``"templates"`` or ``"user photos"`` (fallback); ``skipped`` lists
    ``{"file", "reason"}``; ``message`` says in a sentence what was used.
    """

    templates: list
    source: str
    skipped: list = field(default_factory=list)
    message: str = ""

    def __iter__(self) -> Iterator[Template]:
        return iter(self.templates)

    def __len__(self) -> int:
        return len(self.templates)

    def __getitem__(self, index: int) -> Template:
        return self.templates[index]

    def to_dict(self) -> dict:
        return {"source": self.source, "message": self.message, "skipped": list(self.skipped),
                "templates": [{"name": t.name, "file": str(t.path) if t.path else None,
                               "face": t.face.to_dict()} for t in self.templates]}


def _safe_name(stem: str, taken: set) -> str:
    """A file-name-safe, unique template name (``[A-Za-z0-9_-]``)."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-")[:40] or "template"
    name, index = base, 2
    while name in taken:
        name, index = f"{base}-{index}", index + 1
    taken.add(name)
    return name


def _largest_face(faces: Sequence[Face]) -> Optional[Face]:
    return max(faces, key=lambda f: f.box.area) if faces else None


def _load_templates(paths: Sequence[Path], backend: FaceBackend, source: str, limit: int,
                    skipped: list) -> list:
    """Up to ``limit`` templates from ``paths`` (each distinct by content, each with a face)."""
    templates, names, digests = [], set(), set()
    for path in paths:
        if len(templates) >= limit:
            break
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in digests:
                skipped.append({"file": str(path), "reason": f"{path.name}: same image as an "
                                "earlier one"})
                continue
            image = load_rgb_array(path)
        except (ImageError, OSError) as error:
            skipped.append({"file": str(path), "reason": str(error)})
            log.warning("validation: skipping %s: %s", path, error)
            continue
        face = _largest_face(backend.detect(image))
        if face is None:
            skipped.append({"file": str(path), "reason": f"{path.name}: no face detected"})
            log.warning("validation: skipping %s: no face detected", path)
            continue
        digests.add(digest)
        templates.append(Template(_safe_name(path.stem, names), image, face, source, path))
    return templates


def template_files(folder: Path) -> list[Path]:
    """The folder's images (sorted by name), then the public-domain images its
    ``manifest.json`` names inside installed packages (see :mod:`easyphoto.gallery`)."""
    from ..gallery import Gallery

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in
                   IMAGE_SUFFIXES)
    packaged = [item.path for item in Gallery(folder / ".none", folder).items()
                if item.origin == "packaged"]
    return files + [p for p in packaged if p not in files]


def validation_templates(templates_dir: Union[str, Path, None], fallback_photos: Sequence,
                         backend: Optional[FaceBackend] = None, limit: int = 4,
                         generated: Sequence = ()) -> TemplateSet:
    """SPEC 1.4 templates: the images of ``templates_dir`` (sorted by name), the public-domain
    portraits its manifest names, then the ``generated`` template files (see
    :mod:`easyphoto.train.generated_templates`) — those that show a face, up to ``limit``.

    Files without an image suffix (README, manifest) are ignored silently; images without a
    detectable face are skipped with a logged reason. When none is usable, falls back to up to
    ``limit`` distinct ``fallback_photos`` (paths, best first: e.g. the kept photos' originals,
    the reference photo) and says so in ``message``. Raises :class:`ValidationError` when
    neither yields a template. ``backend`` detects the faces (pass the run's; default: a new
    ``get_face_backend("auto")``).
    """
    if backend is None:
        from ..face import get_face_backend

        backend = get_face_backend("auto")
    folder = Path(templates_dir) if templates_dir else None
    files = template_files(folder) if folder and folder.is_dir() else []
    files += [Path(p) for p in generated if Path(p) not in files]
    skipped: list = []
    templates = _load_templates(files, backend, SOURCE_TEMPLATES, limit, skipped)
    if templates:
        made = sum(1 for t in templates if t.path in {Path(p) for p in generated})
        message = (f"validating on {len(templates)} template(s) from {folder}"
                   + (f" ({made} generated by the base model)" if made else ""))
        return TemplateSet(templates, SOURCE_TEMPLATES, skipped, message)
    photos = [Path(p) for p in fallback_photos]
    templates = _load_templates(photos, backend, SOURCE_USER, limit, skipped)
    if not templates:
        raise ValidationError("no validation template has a detectable face, and neither has "
                              "any of the user's photos; cannot validate the LoRA.")
    where = f"in {folder}" if folder else "(no templates folder)"
    message = (f"no usable validation template {where}; validating on {len(templates)} of the "
               "user's own photos instead (scores are optimistic: the LoRA saw them)")
    log.warning("validation: %s", message)
    return TemplateSet(templates, SOURCE_USER, skipped, message)


# ---- rendering -------------------------------------------------------------------------------
@dataclass
class Render:
    """One validation render: checkpoint ``step`` × ``template``.

    ``image`` (h, w, 3) uint8 has the template crop's size; ``crop_box`` is the crop in template
    px, ``mask_box`` the inpainted box in crop px, ``feather_px`` the feather's reach past it.
    ``control`` is ``"canny"`` or ``"none"``. ``score`` (mean cosine to the training photos)
    and ``reason`` (why there is no score) are filled by
    :func:`~easyphoto.train.fusion.score_renders`.
    """

    step: int
    template: str
    checkpoint: Optional[Path]
    image: np.ndarray = field(repr=False)
    path: Optional[Path]
    crop_box: Box
    mask_box: Box
    feather_px: int
    control: str
    seed: int
    score: Optional[float] = None
    reason: Optional[str] = None

    def to_dict(self) -> dict:
        checkpoint = Path(self.checkpoint).name if self.checkpoint else None
        return {"step": self.step, "template": self.template, "checkpoint": checkpoint,
                "file": self.path.name if self.path else None, "control": self.control,
                "seed": self.seed, "score": None if self.score is None else round(self.score, 6),
                "reason": self.reason}


class ValidationRenderer:
    """Renders templates with LoRA checkpoints; one per training run (holds the pipeline).

    ``resolution`` is the working short side in px (default: the request's training
    resolution; the tiny preset works at 64); ``max_batch`` caps the templates rendered in one
    pipeline call. ``notes`` records choices made (ControlNet off...).
    Not thread-safe: one render at a time (it temporarily changes the shared models' LoRA).
    Runs in the models' own dtypes, without autocast: peft casts between fp32 LoRA weights and
    half-precision base weights, and the SDXL pipelines keep an fp32 VAE in fp32.
    ``merge_lora``: a checkpoint applied in place is also merged into the UNet's base weights
    while it renders (:class:`~.validation_pipeline.MergedLora`; ``None`` = SD1.5 on CUDA).
    ``attention``: the attention back-ends tried first on CUDA (``ATTENTION_ORDERS`` of
    :mod:`.lora`). Default flash: as fast as cuDNN's here (H100, 0.985 vs 0.99 s per
    checkpoint), and cuDNN compiles its attention kernels at first use — 8.7 s on the first
    checkpoint of a fresh machine (bench ``coldstart``).
    """

    def __init__(self, components: TrainComponents, request: TrainRequest,
                 resolution: Optional[int] = None, max_batch: int = 4,
                 own_loop: Optional[bool] = None, merge_lora: Optional[bool] = None,
                 attention: str = "flash"):
        from .lora import ATTENTION_ORDERS

        if attention not in ATTENTION_ORDERS:
            raise InvalidRequest(f"attention must be one of {sorted(ATTENTION_ORDERS)}; "
                                 f"got {attention!r}")
        self.components, self.request, self.attention = components, request, attention
        self.resolution = int(resolution or request.resolved().resolution)
        self.max_batch = max(1, int(max_batch))
        self.notes: list = []
        #: checkpoint step → how its LoRA was applied ("in-place" or "adapter").
        self.lora_modes: dict = {}
        self.controlnet = bool(request.validation_canny and components.canny_controlnet is not None)
        if not request.validation_canny:
            self.notes.append("canny ControlNet off (validation_canny is false): plain inpaint")
        elif components.canny_controlnet is None:
            self.notes.append("no canny ControlNet loaded: validation falls back to plain inpaint")
        for note in self.notes:
            log.warning("validation: %s", note)
        self.pipe = build_validation_pipeline(components, self.controlnet)
        self.loop = OwnLoop.for_run(components, self.controlnet, own_loop)
        # default: SD1.5 on CUDA, where it was measured; it keeps a copy of the merged base
        # weights (~0.5 GB for SD1.5, several GB for SDXL)
        merge = torch.device(components.device).type == "cuda" and components.family == "sd15"
        self.merger = MergedLora() if (merge if merge_lora is None else merge_lora) else None
        #: seconds spent per phase over every render call (lora, diffuse, finish)
        self.seconds: dict = {"lora": 0.0, "diffuse": 0.0, "finish": 0.0}
        self._inputs: dict = {}

    def _models(self) -> list:
        c = self.components
        return [c.unet, *c.text_encoders, c.vae, c.canny_controlnet]

    def diffuse(self, batch: Sequence[ValidationInput], seeds: Sequence[int],
                cancel: Optional[CancelToken] = None) -> list:
        """Inpaint same-size inputs in one pipeline call (LoRA already applied) → one
        (H, W, 3) uint8 image per input; input i's noise comes from ``seeds[i]`` alone.
        ``cancel`` is checked after every denoising step. Attention: :attr:`attention`."""
        from .lora import attention_order

        with attention_order(torch.device(self.components.device), self.attention):
            return self._diffuse(batch, seeds, cancel)

    def _diffuse(self, batch: Sequence[ValidationInput], seeds: Sequence[int],
                 cancel: Optional[CancelToken] = None) -> list:
        if self.loop is not None:
            return self.loop.inpaint(batch, seeds, self.request, cancel)
        height, width = batch[0].image.shape[:2]
        r = self.request
        kwargs = dict(prompt=[CAPTION] * len(batch), height=height, width=width,
                      image=[Image.fromarray(p.image) for p in batch],
                      mask_image=[Image.fromarray(p.mask) for p in batch],
                      strength=r.validation_strength, num_inference_steps=r.validation_sample_steps,
                      guidance_scale=r.validation_cfg, output_type="np",
                      generator=[torch.Generator("cpu").manual_seed(s) for s in seeds])
        if cancel is not None:
            kwargs["callback_on_step_end"] = lambda pipe, i, t, tensors: cancel.check() or tensors
        if self.controlnet:
            kwargs.update(control_image=[Image.fromarray(p.control) for p in batch],
                          controlnet_conditioning_scale=CANNY_WEIGHT)
        images = self.pipe(**kwargs).images
        return [np.rint(np.asarray(i) * 255.0).clip(0, 255).astype(np.uint8) for i in images]

    def _batches(self, prepared: Sequence[ValidationInput]) -> list:
        """Index lists of inputs sharing a working size, at most ``max_batch`` each."""
        groups: dict = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.image.shape, []).append(index)
        return [ids[i:i + self.max_batch] for ids in groups.values()
                for i in range(0, len(ids), self.max_batch)]

    def render(self, lora_path: Union[str, Path], step: int, templates: Sequence[Template],
               out_dir: Union[str, Path], progress: ProgressFn = no_progress,
               cancel: Optional[CancelToken] = None, lora=None) -> list:
        """Render every template with the LoRA file ``lora_path`` (checkpoint of ``step``),
        save ``out_dir/step<step>_<template>.jpg`` and return the :class:`Render` list (in
        template order). Templates of equal working size share a pipeline call; template i
        always uses seed ``request.seed + i``, so checkpoints are compared on the same noise.
        ``lora``: the file's tensors already in memory (a :class:`~.lora_io.KohyaLora`, e.g.
        training's snapshot); the file is read only where they do not fit in place.
        """
        return [job.result() for job in self.render_jobs(_run_now, lora_path, step, templates,
                                                         out_dir, progress, cancel, lora)]

    def render_jobs(self, submit, lora_path: Union[str, Path], step: int,
                    templates: Sequence[Template], out_dir: Union[str, Path],
                    progress: ProgressFn = no_progress, cancel: Optional[CancelToken] = None,
                    lora=None) -> list:
        """:meth:`render` with each render's finishing (resize, composite, JPEG file) handed to
        ``submit(fn, *args) -> Future`` (e.g. a worker thread's, so it overlaps the next
        checkpoint's diffusion); returns the futures, in template order."""
        lora_path, out_dir = Path(lora_path), Path(out_dir)
        prepared = [self._prepared(t) for t in templates]
        jobs: dict = {}
        lap = self._lap()
        with contextlib.ExitStack() as stack:
            mode = stack.enter_context(lora_applied(self.pipe, self._models()[:-2], lora_path,
                                                    f"step{step}", lora))
            stack.enter_context(eval_mode(self._models()))
            stack.enter_context(torch.no_grad())
            if mode == IN_PLACE and self.merger is not None:
                stack.enter_context(self.merger.applied(self.components.unet))
                mode = MERGED
            self.lora_modes[step] = mode
            if self.loop is not None:
                self.loop.lora_mode(mode, step)
            lap("lora")
            for batch in self._batches(prepared):
                if cancel is not None:
                    cancel.check()
                progress(Progress("validation", len(jobs), len(templates),
                                  f"checkpoint {step}: {len(batch)} template(s)",
                                  extra={"step": step}))
                outs = self.diffuse([prepared[i] for i in batch],
                                    [self.request.seed + i for i in batch], cancel)
                lap("diffuse")
                for index, out in zip(batch, outs):
                    jobs[index] = submit(self._finish, templates[index], prepared[index], out,
                                         step, self.request.seed + index, lora_path, out_dir)
                lap("finish")
        lap("lora")  # the LoRA switched back
        progress(Progress("validation", len(templates), len(templates),
                          f"checkpoint {step} rendered", extra={"step": step}))
        return [jobs[i] for i in range(len(templates))]

    def _prepared(self, template: Template) -> ValidationInput:
        """The template's inputs (computed once per renderer: every checkpoint uses them)."""
        key = (template.name, id(template.image), template.face.box)
        image, prepared = self._inputs.get(key, (None, None))
        if image is not template.image:  # (the image is kept, so its id is not reused)
            prepared = prepare_input(template.image, template.face.box, self.resolution)
            self._inputs[key] = (template.image, prepared)
        return prepared

    def _lap(self):
        """``lap(phase)`` adds the seconds since the previous lap to ``seconds[phase]``
        (synchronising the current CUDA stream, so a phase owns its kernels)."""
        device = torch.device(self.components.device)
        last = [time.perf_counter()]

        def lap(phase: str) -> None:
            if device.type == "cuda":
                torch.cuda.current_stream(device).synchronize()
            now = time.perf_counter()
            self.seconds[phase] += now - last[0]
            last[0] = now

        return lap

    def _finish(self, template: Template, prepared: ValidationInput, out: np.ndarray, step: int,
                seed: int, lora_path: Path, out_dir: Path) -> Render:
        """Resize ``out`` to the crop, composite, save ``step<k>_<template>.jpg``."""
        ch, cw = prepared.crop.shape[:2]
        back = cv2.resize(out, (cw, ch), interpolation=cv2.INTER_CUBIC)
        image = composite(prepared.crop, back, prepared.mask_box)
        path = atomic_write_bytes(out_dir / f"step{step}_{template.name}.jpg", encode_jpeg(image))
        return Render(step, template.name, lora_path, image, path, prepared.crop_box,
                      prepared.mask_box, feather_px(image.shape[:2]),
                      "canny" if self.controlnet else "none", seed)


class OwnLoop:
    """Validation renders through the inference engine's own denoising loop
    (:func:`easyphoto.engine.denoise.run_inpaint`: the pipeline's computation, the templates of
    one working size in one batched call) with the UNet + canny ControlNet step replayed as a
    CUDA graph on CUDA.

    The graph reads the LoRA parameters where they live; the in-place LoRA switch copies each
    checkpoint into those same tensors, so one capture serves every checkpoint. A checkpoint
    applied as a separate adapter (new modules) runs the loop eagerly instead.
    Built by :meth:`for_run` only for SD1.5 with the ControlNet (what ``run_inpaint`` covers).
    """

    def __init__(self, pipe, graphs) -> None:
        self.pipe, self.graphs, self.mode, self.step = pipe, graphs, IN_PLACE, 0

    @classmethod
    def for_run(cls, components: TrainComponents, controlnet: bool,
                wanted: Optional[bool]) -> Optional["OwnLoop"]:
        """The loop for this run, or ``None``: ``wanted`` None means "on CUDA"."""
        from ..engine.denoise import supports
        from ..engine.step_graphs import StepGraphs

        cuda = torch.device(components.device).type == "cuda"
        if not (cuda if wanted is None else wanted) or not controlnet \
                or components.family != "sd15":
            return None
        pipe = build_validation_pipeline(components, controlnet, multi=True)
        if not supports(pipe):
            return None
        return cls(pipe, StepGraphs() if cuda else None)

    def lora_mode(self, mode: str, step: int) -> None:
        self.mode, self.step = mode, step

    def inpaint(self, batch: Sequence[ValidationInput], seeds: Sequence[int],
                request: TrainRequest, cancel: Optional[CancelToken] = None) -> list:
        """Same-size inputs in one call → one (H, W, 3) uint8 render each; input i's noise
        comes from ``seeds[i]`` alone (as in the pipeline's batched call)."""
        from ..engine.denoise import LoopAids, run_inpaint
        from .lora import tf32_matmuls

        if cancel is not None:
            cancel.check()
        height, width = batch[0].image.shape[:2]
        kwargs = dict(prompt=CAPTION, negative_prompt=None, height=height, width=width,
                      image=[Image.fromarray(p.image) for p in batch],
                      mask_image=[Image.fromarray(p.mask) for p in batch],
                      strength=request.validation_strength,
                      num_inference_steps=request.validation_sample_steps,
                      guidance_scale=request.validation_cfg, output_type="np",
                      generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                      control_image=[[Image.fromarray(p.control) for p in batch]],
                      controlnet_conditioning_scale=[CANNY_WEIGHT],
                      control_guidance_start=[0.0], control_guidance_end=[1.0])
        resident = self.mode in (IN_PLACE, MERGED)  # the same tensors for every checkpoint
        aids = LoopAids(graphs=self.graphs if resident else None,
                        token=("validation", self.mode) if resident else ("step", self.step))
        with tf32_matmuls(torch.device(self.pipe.device)):  # the fp32 LoRA branches
            images = run_inpaint(self.pipe, kwargs, aids)
        return [np.rint(np.asarray(i) * 255.0).clip(0, 255).astype(np.uint8) for i in images]


def render_validation(components: TrainComponents, lora_path: Union[str, Path],
                      templates: Sequence[Template], request: TrainRequest, *, step: int,
                      out_dir: Union[str, Path], renderer: Optional[ValidationRenderer] = None,
                      resolution: Optional[int] = None, progress: ProgressFn = no_progress,
                      cancel: Optional[CancelToken] = None) -> list:
    """SPEC 1.4 for one checkpoint: ``renderer.render(...)`` (see :class:`ValidationRenderer`).

    Pass the run's ``renderer`` (built once with ``ValidationRenderer(components, request,
    resolution)``) so the pipeline is not rebuilt per checkpoint; without it a one-off renderer
    is built.
    """
    if renderer is None:
        log.debug("render_validation: building a one-off renderer (pass renderer= to reuse it)")
    renderer = _checked_renderer(components, request, resolution, renderer, templates)
    return renderer.render(lora_path, step, templates, out_dir, progress, cancel)


def _checked_renderer(components: TrainComponents, request: TrainRequest,
                      resolution: Optional[int], renderer: Optional[ValidationRenderer],
                      templates: Sequence[Template]) -> ValidationRenderer:
    """``renderer`` (or a new one) after checking it belongs to ``components`` and that
    there are templates to render."""
    if renderer is None:
        renderer = ValidationRenderer(components, request, resolution)
    elif renderer.components is not components:
        raise InvalidRequest("the validation renderer was built for other model components.")
    if not templates:
        raise ValidationError("there are no validation templates to render.")
    return renderer


def _run_now(fn, *args) -> Future:
    """``submit`` that runs ``fn`` at once (errors raise here) and returns its done future."""
    future: Future = Future()
    future.set_result(fn(*args))
    return future


def checkpoint_snapshots(checkpoints) -> dict:
    """``{step: KohyaLora}`` of the checkpoints that carry their tensors in memory
    (:class:`easyphoto.train.lora.Checkpoint` ``.lora``)."""
    if isinstance(checkpoints, Mapping):
        return {}
    return {int(c.step): c.lora.as_kohya_lora() for c in checkpoints
            if getattr(c, "lora", None) is not None}


def checkpoint_files(checkpoints) -> dict:
    """``{step: Path}`` from a ``{step: path}`` mapping or from objects with ``.step`` and
    ``.path`` (e.g. :class:`easyphoto.train.lora.Checkpoint`)."""
    if isinstance(checkpoints, Mapping):
        pairs = [(int(step), Path(path)) for step, path in checkpoints.items()]
    else:
        pairs = [(int(c.step), Path(c.path)) for c in checkpoints]
    steps = dict(pairs)
    if len(steps) != len(pairs):
        raise InvalidRequest("two LoRA checkpoints have the same step.")
    return steps


def render_all_checkpoints(components: TrainComponents, checkpoints, templates: Sequence[Template],
                           request: TrainRequest, out_dir: Union[str, Path], *,
                           progress: ProgressFn = no_progress,
                           cancel: Optional[CancelToken] = None, resolution: Optional[int] = None,
                           renderer: Optional[ValidationRenderer] = None) -> list:
    """SPEC 1.4 for every checkpoint (see :func:`checkpoint_files`), oldest first, on one
    pipeline; progress counts renders over all checkpoints. Returns every :class:`Render`.

    Checkpoints that carry their tensors (``Checkpoint.lora``) are applied from memory. Each
    render is finished (composited, saved) on a worker thread while the next checkpoint
    diffuses; its errors are raised here, after the GPU work; on an error or cancel, work not
    yet started is dropped. (Scoring stays after rendering: on the worker, the face models'
    CPU threads slowed the denoising loop more than they saved — H100, 32 renders: 12.2 s of
    diffusion with them beside it vs 7.0 s + 1.2 s of scoring after.)
    """
    steps, snapshots = checkpoint_files(checkpoints), checkpoint_snapshots(checkpoints)
    renderer = _checked_renderer(components, request, resolution, renderer, templates)
    total, jobs = len(steps) * len(templates), []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="easyphoto-validation") as pool:
        try:
            for index, (step, path) in enumerate(sorted(steps.items())):
                def report(p: Progress, offset: int = index * len(templates)) -> None:
                    progress(dataclasses.replace(p, done=offset + p.done, total=total))

                done = renderer.render_jobs(pool.submit, path, step, templates, out_dir,
                                            report, cancel, snapshots.get(step))
                jobs += done
        except BaseException:
            for job in jobs:
                job.cancel()
            raise
        return [job.result() for job in jobs]


# ---- scoring ----------------------------------------------------------------------------------
def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    if np.any(norms == 0):
        raise InvalidRequest("an identity embedding is all zeros; cannot score against it.")
    return matrix / norms


def score_renders(renders: Sequence[Render], train_embeddings: np.ndarray,
                  backend: FaceBackend) -> list:
    """Score every render **in place** and return them (as a list).

    ``score`` = mean cosine similarity between the embedding of the render's largest face and
    each row of ``train_embeddings`` ((N, D), N ≥ 1, from the same ``backend``); a render
    without a detectable face gets ``score=None`` and a ``reason``.
    """
    train = np.asarray(train_embeddings, dtype=np.float64)
    if train.ndim != 2 or len(train) == 0:
        raise InvalidRequest(f"training embeddings must be an (N, D) array with N ≥ 1; got "
                             f"shape {train.shape}.")
    train = _unit_rows(train)
    for render in renders:
        face = _largest_face(backend.detect(render.image))
        if face is None:
            render.score, render.reason = None, NO_FACE
            log.info("validation step %d %s: %s", render.step, render.template, NO_FACE)
            continue
        embedding = np.asarray(backend.embed(render.image, face), dtype=np.float64)
        if embedding.shape != train.shape[1:]:
            raise InvalidRequest(f"render embedding has shape {embedding.shape} but the training "
                                 f"embeddings have {train.shape[1:]}: use one face backend.")
        render.score, render.reason = float(np.mean(train @ _unit_rows(embedding))), None
        log.info("validation step %d %s: score %.4f", render.step, render.template, render.score)
    return list(renders)
