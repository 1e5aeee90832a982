"""Batch inference: many templates, one request; results and per-template errors together.

:func:`run_batch` loads the user ids once, then for each template: reads it safely (any format;
CMYK, palette, 16-bit and alpha handled — see :func:`load_template`), picks its seed (the
request's, or a fresh random one per template when the seed is −1; recorded either way), runs
:func:`~easyphoto.infer.group.infer_group` ``batch_size`` times (seed, seed+1, ...) and turns each
output into an :class:`InferResult`: a PIL image in the template's size and mode (RGB, RGBA, L,
LA kept; other modes become RGB with a note) with the parameters as WebUI infotext. A template
that fails (unreadable, too large, no face, too few faces, ...) becomes a :class:`TemplateError`
with its reason and the batch goes on; cancelling stops between stages.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from .. import __version__
from ..engine.base import LoraRef
from ..errors import EasyPhotoError, ImageError, InvalidRequest
from ..images import list_images, load_image
from ..params import CAPTION, NO_USER, InferRequest
from ..progress import Cancelled, CancelToken, Progress, ProgressFn, no_progress
from .group import Context, GroupOutput, GroupSettings, infer_group
from .portrait import UserAssets, WorkingSize, working_size
from .prompts import DEFAULT_POSITIVE, infotext, join_prompt, lora_tags, portrait_prompt

logger = logging.getLogger(__name__)

#: Output modes kept as they are; any other template mode is written as RGB.
KEPT_MODES = ("RGB", "RGBA", "L", "LA")
SEED_LIMIT = 2 ** 32
TemplateSource = Union[str, os.PathLike, bytes, np.ndarray, Image.Image, "Template"]


@dataclass(frozen=True)
class Template:
    """A template ready for inference: ``rgb`` ``(H, W, 3)`` uint8, the file's ``mode`` and its
    ``alpha`` channel ``(H, W)`` uint8 when it has one."""

    name: str
    rgb: np.ndarray = field(repr=False)
    mode: str = "RGB"
    alpha: Optional[np.ndarray] = field(default=None, repr=False)


def _alpha_of(image: Image.Image) -> Optional[np.ndarray]:
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            image.mode == "P" and "transparency" in image.info):
        return np.asarray(image.convert("RGBA").getchannel("A"))
    return None


def load_template(source: TemplateSource, name: Optional[str] = None) -> Template:
    """A :class:`Template` from a path, bytes, a PIL image or an ``(H, W, 3)`` uint8 array.

    Files go through :func:`easyphoto.images.load_image` (size limits, EXIF orientation, every
    failure an ImageError naming the file); alpha is composited on white for the pipeline and
    kept to be put back on the output.
    """
    if isinstance(source, Template):
        return source
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ImageError(f"{name or 'image'}: expected an (H, W, 3) uint8 RGB array, got "
                             f"{source.shape} {source.dtype}")
        return Template(name or "image", np.ascontiguousarray(source))
    if isinstance(source, Image.Image):
        from ..images import to_rgb

        return Template(name or "image", np.asarray(to_rgb(source)), source.mode, _alpha_of(source))
    label = name or (Path(source).name if not isinstance(source, bytes) else "uploaded image")
    rgb = np.asarray(load_image(source, label))  # validates: limits, corrupt data
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as opened:
        mode = opened.mode
        alpha = _alpha_of(ImageOps.exif_transpose(opened)) if "A" in mode or mode == "P" else None
    return Template(label, rgb, mode, alpha)


def output_image(rgb: np.ndarray, template: Template) -> tuple[Image.Image, Optional[str]]:
    """The result in the template's mode (alpha restored); a note when the mode changes."""
    image = Image.fromarray(rgb, "RGB")
    grey = template.mode in ("L", "LA")
    if grey:
        image = image.convert("L")
    if template.alpha is not None:
        image.putalpha(Image.fromarray(template.alpha, "L"))
    note = None
    if template.mode not in KEPT_MODES and template.mode != image.mode:
        note = (f"{template.name}: the template's mode {template.mode} is written as "
                f"{image.mode} (8 bits per channel)")
    return image, note


def png_bytes(image: Image.Image, parameters: str) -> bytes:
    """PNG of ``image`` with ``parameters`` in a ``parameters`` tEXt chunk (WebUI style)."""
    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


@dataclass
class InferResult:
    """One output image of one template, with everything it was made with."""

    template: str
    index: int
    image: Image.Image = field(repr=False)
    seed: int
    parameters: str
    people: list[dict]
    scores: list[str]
    notes: list[str]
    stages: list[str]
    group: Optional[GroupOutput] = field(default=None, repr=False)

    def png_bytes(self) -> bytes:
        return png_bytes(self.image, self.parameters)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        path = Path(path)
        path.write_bytes(self.png_bytes())
        return path

    def to_dict(self) -> dict:
        return {"template": self.template, "index": self.index, "seed": self.seed,
                "size": list(self.image.size), "mode": self.image.mode, "people": self.people,
                "scores": self.scores, "notes": self.notes, "stages": self.stages}


@dataclass
class TemplateError:
    """A template that failed: its name, the user-facing ``error`` and the exception type."""

    template: str
    error: str
    type: str
    seed: Optional[int] = None

    def to_dict(self) -> dict:
        return {"template": self.template, "error": self.error, "type": self.type,
                "seed": self.seed}


@dataclass
class BatchResult:
    results: list[InferResult] = field(default_factory=list)
    errors: list[TemplateError] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"results": [r.to_dict() for r in self.results],
                "errors": [e.to_dict() for e in self.errors]}


def collect_templates(files: Sequence[Union[str, os.PathLike]] = (),
                      folder: Union[str, os.PathLike, None] = None) -> list[Path]:
    """The template files: ``files`` as given, then every file of ``folder`` (sorted)."""
    paths = [Path(f) for f in files]
    if folder is not None:
        paths.extend(list_images(folder))
    if not paths:
        raise InvalidRequest("no templates: give a template file or a folder with templates")
    return paths


def load_users(store: Any, ids: Sequence[str], backend: Any) -> dict[str, UserAssets]:
    """Each distinct user id (``none`` skipped) as UserAssets; errors name the id."""
    users: dict[str, UserAssets] = {}
    for user_id in ids:
        if user_id.lower() != NO_USER and user_id not in users:
            users[user_id] = UserAssets.load(store, user_id, backend)
    return users


def resolve_style_lora(name: str, weight: float, models: Any = None) -> Optional[LoraRef]:
    """The style LoRA: a file path, or a registry role present in ``models`` (a ModelStore)."""
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_file():
        return LoraRef(str(path), weight)
    if models is None:
        raise InvalidRequest(f"style LoRA {name!r} is not a file (and no model store was given "
                             "to look it up as a registry model)")
    return LoraRef(str(models.require(name)), weight)


def parameters_text(request: InferRequest, seed: int, template: Template,
                    users: Mapping[str, UserAssets], style: Optional[LoraRef]) -> str:
    """Every parameter as WebUI infotext (the prompt shown with SPEC 2.1's LoRA tags)."""
    ids = [u for u in request.people() if u.lower() != NO_USER]
    loras = [LoraRef(str(users[u].lora_path), request.lora_weight) for u in dict.fromkeys(ids)]
    tags = lora_tags(loras, list(dict.fromkeys(ids)))
    if style:
        tags = join_prompt(tags, lora_tags([style]))
    positive = join_prompt(CAPTION, tags, request.additional_prompt, DEFAULT_POSITIVE)
    negative = portrait_prompt(request.additional_prompt, request.additional_negative_prompt)[1]
    height, width = template.rgb.shape[:2]
    settings: dict[str, Any] = {
        "Steps": request.first_diffusion_steps, "Sampler": request.sampler,
        "CFG scale": request.cfg_scale, "Seed": seed, "Size": f"{width}x{height}",
        "Model": request.base_model or "default", "Denoising strength":
        request.first_denoising_strength, "EasyPhoto": __version__, "Template": template.name}
    shown = {"sampler", "cfg_scale", "seed", "base_model", "additional_prompt",
             "additional_negative_prompt"}
    for key, value in request.to_dict().items():
        if key not in shown:
            settings["EasyPhoto " + key.replace("_", " ")] = value
    return infotext(positive, negative, settings)


@dataclass
class BatchOptions:
    """How a batch runs beyond the request: working size (default from the base model), the
    SPEC 2.8 constants, the model store (style LoRA, OpenPose), a loaded OpenPose detector,
    whether to keep intermediates (tests, debugging)."""

    size: Optional[WorkingSize] = None
    settings: GroupSettings = field(default_factory=GroupSettings)
    models: Any = None
    pose_detector: Any = None
    keep: bool = False


def _source_name(source: TemplateSource, number: int) -> str:
    if isinstance(source, Template):
        return source.name
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return f"template {number + 1}"


def _reporter(progress: ProgressFn, done: int, total: int, name: str) -> Callable[[str], None]:
    """``report(stage)`` → a Progress of stage "infer" naming the template and the stage."""
    def report(stage: str) -> None:
        progress(Progress("infer", done, total, message=f"{name}: {stage}"))

    return report


def _seed_for(request: InferRequest) -> int:
    return request.seed if request.seed >= 0 else secrets.randbelow(SEED_LIMIT)


def _one_template(template: Template, index: int, ctx: Context, request: InferRequest,
                  users: Mapping[str, UserAssets], keep: bool) -> InferResult:
    out = infer_group(template.rgb, ctx, template.name)
    image, note = output_image(out.image, template)
    notes = out.notes + ([note] if note else [])
    parameters = parameters_text(request, ctx.seed, template, users, ctx.style)
    return InferResult(template.name, index, image, ctx.seed, parameters,
                       [p.to_dict() for p in out.people], out.scores, notes, out.stages,
                       out if keep else None)


def run_batch(sources: Sequence[TemplateSource], request: InferRequest, *, engine: Any,
              backend: Any, store: Any = None, users: Optional[Mapping[str, UserAssets]] = None,
              options: Optional[BatchOptions] = None, progress: ProgressFn = no_progress,
              cancel: Optional[CancelToken] = None) -> BatchResult:
    """Run ``request`` on every template of ``sources``; see the module doc.

    ``users`` (user id → UserAssets) may be given instead of a ``store`` to load them from.
    Request-level problems (unknown user id, missing style LoRA) raise before any template;
    template-level ones are collected in ``BatchResult.errors``. Progress: stage ``"infer"``,
    ``done``/``total`` templates, ``message`` = template name and the stage running.
    """
    request.validate()
    opts = options or BatchOptions()
    users = dict(users) if users is not None else load_users(store, request.people(), backend)
    missing = [u for u in request.people() if u.lower() != NO_USER and u not in users]
    if missing:
        raise InvalidRequest(f"user id(s) {', '.join(map(repr, missing))} were not loaded")
    style = resolve_style_lora(request.style_lora, request.style_lora_weight, opts.models)
    base = dict(engine=engine, backend=backend, request=request, users=users,
                size=opts.size or working_size(request.base_model),
                prompt=portrait_prompt(request.additional_prompt,
                                       request.additional_negative_prompt),
                style=style, models=opts.models, pose_detector=opts.pose_detector,
                settings=opts.settings, cancel=cancel, keep=opts.keep)
    batch, total = BatchResult(), len(sources)
    for number, source in enumerate(sources):
        name = _source_name(source, number)
        report = _reporter(progress, number, total, name)
        seed = _seed_for(request)
        try:
            if cancel is not None:
                cancel.check()
            report("loading")
            template = load_template(source, name)
            for k in range(request.batch_size):
                ctx = Context(**base, seed=(seed + k) % SEED_LIMIT, report=report)
                batch.results.append(_one_template(template, k, ctx, request, users, opts.keep))
        except Cancelled:
            raise
        except EasyPhotoError as exc:
            logger.warning("template %s failed: %s", name, exc)
            batch.errors.append(TemplateError(name, str(exc), type(exc).__name__, seed))
        except MemoryError:
            logger.exception("template %s: out of memory", name)
            batch.errors.append(TemplateError(name, f"{name}: not enough memory to process this "
                                              "template; use a smaller image", "MemoryError", seed))
        except Exception as exc:  # a bug or a backend failure: report it, go on with the batch
            logger.exception("template %s failed unexpectedly", name)
            batch.errors.append(TemplateError(name, f"{name}: unexpected error: "
                                              f"{type(exc).__name__}: {exc}", type(exc).__name__,
                                              seed))
    progress(Progress("infer", total, total, message="done"))
    return batch
