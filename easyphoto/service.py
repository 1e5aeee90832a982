"""The application service: what the UI and the HTTP API call (one object per process).

Hooks for the WebUI host (all optional): ``engine_factory(base_model)`` → the WebUI engine;
``gpu_lock`` → the host's queue lock; ``on_lora_ready(record)`` → put a finished LoRA into the
host's Lora folder; ``training_guard()`` → a context manager that frees the host model's VRAM
for the duration of a training and restores it after; ``train_base()`` → the checkpoint file a
training uses when the request names none (the host's selected checkpoint).

It owns the user store, the job runner, the template gallery and — lazily, in the job worker —
the diffusion engine and the face backends, so both front-ends share models and one GPU queue.
Every method takes typed requests (``TrainRequest``, ``InferRequest``) and plain files; request
problems raise :class:`~easyphoto.errors.EasyPhotoError` subclasses at once (the API turns them
into 4xx), long work becomes a job (:mod:`easyphoto.jobs`).

Inside the WebUI the host adapter passes its engine factory, the host's GPU lock and a hook that
puts finished LoRAs into the host's Lora folder; standalone the defaults are used.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence, Union

from .errors import InvalidRequest, UserExists
from .gallery import Gallery
from .jobs import JobContext, JobRunner, JobView, new_job_id
from .params import NO_USER, InferRequest, TrainRequest
from .store import UserRecord, UserStore
from .user_archive import export_user, import_user

log = logging.getLogger(__name__)

TRAIN, INFER = "train", "infer"
#: Overall progress bar: the share of a training job each stage covers.
TRAIN_SPANS = {"preprocess": (0.0, 0.08), "templates": (0.08, 0.1), "latents": (0.1, 0.12),
               "train": (0.12, 0.85),
               "validation": (0.85, 0.99), "done": (0.99, 1.0)}
INFER_SPANS = {"template": (0.0, 0.1), "infer": (0.1, 1.0)}
MAX_PHOTOS_UPLOAD = 40


@dataclass(frozen=True)
class ServiceConfig:
    """Where data and models live and the defaults a request leaves open."""

    data_dir: Path
    models_dir: Optional[Path] = None
    base_model: str = ""
    face_backend: str = "auto"
    train_python: Optional[str] = None
    train_env: dict = field(default_factory=dict)
    #: keep face models loaded between jobs (else they are released after each inference)
    keep_face_models: bool = True
    #: check the sha256 of every present model file once, before the first model loads
    verify_models: bool = False
    #: number of people the UI's inference tab starts with
    default_people: int = 1


class Service:
    """See the module doc. ``engine_factory(base_model)`` returns a DiffusionEngine."""

    def __init__(self, config: ServiceConfig, *, engine_factory: Optional[Callable] = None,
                 gpu_lock: Optional[ContextManager] = None,
                 on_lora_ready: Optional[Callable[[UserRecord], None]] = None,
                 training_guard: Optional[Callable[[], ContextManager]] = None,
                 train_base: Optional[Callable[[], Any]] = None):
        from .paths import models_root

        self.config = replace(config, data_dir=Path(config.data_dir),
                              models_dir=models_root(config.models_dir, config.data_dir))
        self.store = UserStore(self.config.data_dir)
        self.gallery = Gallery(self.config.data_dir / "templates")
        self.engine_factory = engine_factory or self._diffusers_engine
        self.on_lora_ready = on_lora_ready
        self.training_guard = training_guard or contextlib.nullcontext
        self.train_base = train_base
        self._models_lock = threading.Lock()
        self._engine: Optional[tuple[str, Any]] = None
        self._backends: dict[str, Any] = {}
        self._verified = False
        self.jobs = JobRunner(self.config.data_dir, gpu_lock, cleanups={TRAIN: self._clean_train})

    # -- models (created on first use, kept between jobs) --------------------------------------
    def _diffusers_engine(self, base_model: str) -> Any:
        from .engine.diffusers_engine import DiffusersEngine

        return DiffusersEngine(base_model=base_model, models_dir=self.config.models_dir)

    def verify_models(self) -> list[str]:
        """With ``config.verify_models``: the sha256 of every present model file with a known
        checksum, once per process (:class:`ChecksumMismatch` names a bad file). Returns the
        roles checked."""
        from .weights import ModelStore

        if not self.config.verify_models or self._verified:
            return []
        store = ModelStore(self.config.models_dir)
        checked = [spec.role for spec in store.specs() if store.verify(spec.role) == "ok"]
        self._verified = True
        log.info("model files verified: %s", ", ".join(checked) or "none with a checksum")
        return checked

    def release_face_models(self) -> None:
        """Unload every resident face backend (they load again on next use)."""
        with self._models_lock:
            backends, self._backends = list(self._backends.values()), {}
        for backend in backends:
            unload = getattr(backend, "unload", None)
            if unload:
                unload()

    def engine(self, base_model: str) -> Any:
        """The resident engine for ``base_model`` (a different base replaces it)."""
        self.verify_models()
        with self._models_lock:
            if self._engine is None or self._engine[0] != base_model:
                self.unload_engine()
                self._engine = (base_model, self.engine_factory(base_model))
            return self._engine[1]

    def unload_engine(self) -> None:
        if self._engine is not None:
            unload = getattr(self._engine[1], "unload", None)
            if unload:
                unload()
            self._engine = None

    def face_backend(self, name: str = "") -> Any:
        from .face import get_face_backend

        name = name or self.config.face_backend
        self.verify_models()
        with self._models_lock:
            if name not in self._backends:
                self._backends[name] = get_face_backend(name, self.config.models_dir)
            return self._backends[name]

    # -- photos and training -----------------------------------------------------------------
    def check_photos(self, paths: Sequence[Union[str, Path]], max_photos: int = 15,
                     face_backend: str = "") -> dict:
        """Verdict per photo (kept, flagged with a reason), identity scores, the reference."""
        from .train.photo_check import check_photos

        if not paths:
            raise InvalidRequest("no photos were given: upload 5-20 photos of one person")
        if len(paths) > MAX_PHOTOS_UPLOAD:
            raise InvalidRequest(f"{len(paths)} photos were given; at most {MAX_PHOTOS_UPLOAD} "
                                 "are accepted (the best 15 are kept)")
        report = check_photos([Path(p) for p in paths], self.face_backend(face_backend),
                              max_photos)
        return report.to_dict()

    def start_training(self, request: TrainRequest, photos: Sequence[Union[str, Path]]) -> str:
        """Queue a training of ``request.user_id`` on copies of ``photos``; returns the job id."""
        request = self._with_defaults(request)
        request.validate()
        if not photos:
            raise InvalidRequest("no photos were given: upload 5-20 photos of one person")
        if len(photos) > MAX_PHOTOS_UPLOAD:
            raise InvalidRequest(f"{len(photos)} photos were given; at most {MAX_PHOTOS_UPLOAD}")
        if self.store.exists(request.user_id) and not request.overwrite:
            raise UserExists(f"user id {request.user_id!r} already exists: choose another id or "
                             "allow overwriting (its current LoRA is kept until the new one is "
                             "ready)")
        sources = [Path(p) for p in photos]
        missing = [str(p) for p in sources if not p.is_file()]
        if missing:
            raise InvalidRequest(f"photo file(s) not found: {', '.join(missing[:5])}")
        job_id = new_job_id()
        staged = self._stage(job_id, "photos", sources)

        def work(ctx: JobContext) -> dict:
            return self._train(ctx, request, staged)

        return self.jobs.submit(TRAIN, f"train {request.user_id}", work, spans=TRAIN_SPANS,
                                request=request.to_dict(), job_id=job_id)

    def _stage(self, job_id: str, kind: str, items: Sequence[Any]) -> list:
        """Copy a job's input files (paths or bytes) into its folder now, so uploads that
        vanish later cannot break it; arrays and images stay in memory."""
        folder = self.jobs.jobs_dir / job_id / kind
        folder.mkdir(parents=True, exist_ok=True)
        staged = []
        try:
            for number, item in enumerate(items):
                if isinstance(item, (str, os.PathLike)):
                    target = folder / f"{number:03d}{Path(item).suffix.lower()[:6]}"
                    shutil.copyfile(item, target)
                    staged.append(target)
                elif isinstance(item, bytes):
                    target = folder / f"{number:03d}.img"
                    target.write_bytes(item)
                    staged.append(target)
                else:
                    staged.append(item)
        except OSError as error:
            shutil.rmtree(folder.parent, ignore_errors=True)
            raise InvalidRequest(f"could not read an uploaded file: {error}") from None
        return staged

    def _train(self, ctx: JobContext, request: TrainRequest, photos: list[Path]) -> dict:
        self.unload_engine()  # give training the GPU memory inference held
        with self.training_guard():  # inside the WebUI: the host's model leaves the GPU
            return self._run_training(ctx, request, photos)

    def _run_training(self, ctx: JobContext, request: TrainRequest, photos: list[Path]) -> dict:
        from .train.runner import TrainingRun

        run = TrainingRun(self.store, request, photos, self.config.data_dir / "logs",
                          progress=ctx.progress, models_dir=self.config.models_dir,
                          python=self.config.train_python, env=self.config.train_env,
                          on_line=ctx.log)
        run.start()
        ctx.set_pid(run.pid)
        (ctx.workdir / "run_dir").write_text(str(run.run_dir), encoding="utf-8")
        ctx.on_cancel(run.cancel)
        result = run.wait()
        if self.on_lora_ready is not None:
            self.on_lora_ready(result.record)
        return {**result.to_dict(), "summary": training_summary(result.record)}

    def _clean_train(self, view: JobView) -> None:
        """A training job died with the process: remove its half-written run folder."""
        marker = Path(view.workdir or "") / "run_dir"
        run_dir = Path(marker.read_text(encoding="utf-8")) if marker.is_file() else None
        if run_dir is not None and run_dir.exists() and run_dir.parent == self.store.users_dir:
            self.store.abort_run(run_dir)
        user_id = view.request.get("user_id")
        if user_id:
            self.store.recover(user_id)

    # -- inference ---------------------------------------------------------------------------
    def start_inference(self, request: InferRequest, templates: Sequence[Any],
                        choices: Any = None) -> str:
        """Queue portraits of ``request.user_ids`` on ``templates`` (paths/bytes/arrays) or on
        a template made from text ``choices`` (:class:`~easyphoto.infer.prompts.TemplateChoices`)."""
        request = self._with_defaults(request)
        request.validate()
        if not templates and choices is None:
            raise InvalidRequest("no template was given: pick one from the gallery, upload one "
                                 "or describe one in text")
        for user_id in request.people():
            if user_id.lower() != NO_USER:
                self.store.get(user_id)  # UserNotFound names the id
        if choices is not None:
            choices.validate()

        job_id = new_job_id()
        staged = self._stage(job_id, "templates", templates)
        names = [_template_name(item, n) for n, item in enumerate(templates)]

        def work(ctx: JobContext) -> dict:
            return self._infer(ctx, request, list(zip(staged, names)), choices)

        return self.jobs.submit(INFER, f"portrait of {', '.join(request.people())}", work,
                                spans=INFER_SPANS, request=request.to_dict(), job_id=job_id)

    def _infer(self, ctx: JobContext, request: InferRequest, templates: list, choices) -> dict:
        try:
            return self._run_inference(ctx, request, templates, choices)
        finally:
            if not self.config.keep_face_models:
                self.release_face_models()

    def _run_inference(self, ctx: JobContext, request: InferRequest, templates: list,
                       choices) -> dict:
        from PIL import Image

        from .infer.batch import BatchOptions, load_template, run_batch
        from .weights import ModelStore

        engine = self.engine(request.base_model)
        sources = [_named(item, name) for item, name in templates]
        files = {name: str(item) for item, name in templates if isinstance(item, Path)}
        if choices is not None:
            image = self._text_template(ctx, engine, request, choices)
            path = ctx.workdir / "templates" / "text-template.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
            sources.append(load_template(image, "text template"))
            files["text template"] = str(path)
        batch = run_batch(sources, request, engine=engine,
                          backend=self.face_backend(request.face_backend), store=self.store,
                          options=BatchOptions(models=ModelStore(self.config.models_dir)),
                          progress=ctx.progress, cancel=ctx.cancel)
        saved = save_batch(batch, ctx.workdir / "out")
        for item in saved["results"] + saved["errors"]:  # the "before" image of each result
            item["template_file"] = files.get(item.get("template"))
        return saved

    def _text_template(self, ctx: JobContext, engine: Any, request: InferRequest, choices):
        from .infer.prompts import text_to_template
        from .params import TINY_RANDOM
        from .progress import Progress

        ctx.progress(Progress("template", 0, 1, message="generating the template from text"))
        seed = request.seed if request.seed >= 0 else 0
        image = text_to_template(engine, choices, seed, tiny=request.base_model == TINY_RANDOM)
        ctx.progress(Progress("template", 1, 1, message="template ready"))
        return image

    # -- jobs, users, gallery ------------------------------------------------------------------
    def job(self, job_id: str) -> JobView:
        return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> JobView:
        return self.jobs.cancel(job_id)

    def users(self) -> list[dict]:
        """Every user id with its thumbnail (face_id), base model, date, score and status."""
        return [user_summary(record) for record in self.store.list()]

    def delete_user(self, user_id: str) -> None:
        self.store.delete(user_id)

    def export_user(self, user_id: str, include_photos: bool = False) -> Path:
        out = self.config.data_dir / "exports"
        return export_user(self.store, user_id, out, include_photos=include_photos)

    def import_user(self, archive: Union[str, Path], user_id: Optional[str] = None,
                    overwrite: bool = False) -> dict:
        record = import_user(self.store, Path(archive), user_id=user_id, overwrite=overwrite)
        if self.on_lora_ready is not None:
            self.on_lora_ready(record)
        return user_summary(record)

    def close(self) -> None:
        self.jobs.close()
        with self._models_lock:
            self.unload_engine()

    def _with_defaults(self, request):
        """Fill the base model and face backend the request leaves open from the config."""
        changes = {}
        if not request.base_model and self.train_base is not None and \
                isinstance(request, TrainRequest):
            changes["base_model"] = str(self.train_base())
        elif not request.base_model and self.config.base_model:
            changes["base_model"] = self.config.base_model
        if request.face_backend == "auto" and self.config.face_backend != "auto":
            changes["face_backend"] = self.config.face_backend
        return replace(request, **changes) if changes else request


def _template_name(item: Any, number: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return Path(item).name
    return getattr(item, "name", None) or f"template {number + 1}"


def _named(item: Any, name: str) -> Any:
    """A staged template file keeps the name the user knows it by."""
    from .infer.batch import Template, load_template

    if isinstance(item, Template):
        return item
    try:
        return load_template(item, name)
    except Exception:  # noqa: BLE001 — run_batch reports the failure for this template only
        return item


def user_summary(record: UserRecord) -> dict:
    meta = record.meta
    chosen = (meta.get("fusion") or {}).get("chosen") or [{}]
    return {"user_id": record.user_id, "status": meta.get("status", ""),
            "base_model": meta.get("base_model", ""), "family": meta.get("family", ""),
            "updated": meta.get("updated", ""), "score": chosen[0].get("score"),
            "face_id": str(record.face_id_path) if record.face_id_path.is_file() else None,
            "steps": meta.get("steps")}


def training_summary(record: UserRecord) -> dict:
    """What the Train tab shows at the end: face_id, renders with scores, fused checkpoints."""
    fusion = record.meta.get("fusion") or {}
    renders = []
    for item in fusion.get("renders", []):
        path = record.path / "validation" / Path(str(item.get("file", ""))).name
        renders.append({**item, "path": str(path) if path.is_file() else None})
    return {"face_id": str(record.face_id_path), "renders": renders,
            "checkpoints": fusion.get("weights") or fusion.get("checkpoints") or [],
            "message": fusion.get("message") or fusion.get("reason") or "",
            "fallback": bool(fusion.get("fallback"))}


def save_batch(batch: Any, out_dir: Path) -> dict:
    """Write each result as PNG (with its infotext) into ``out_dir``; results + errors."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for number, result in enumerate(batch.results):
        path = result.save(out_dir / f"{number:03d}.png")
        results.append({**result.to_dict(), "file": str(path)})
    return {"results": results, "errors": [error.to_dict() for error in batch.errors]}
