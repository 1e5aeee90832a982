"""HTTP API (FastAPI): the same service the UI uses, for scripts and other programs.

``mount_api(app, service)`` adds the routes to any FastAPI app — the standalone app's, or the
WebUI host's (``on_app_started``). Routes are plain ``def`` (FastAPI runs them in its thread
pool: GPU work never blocks the host's event loop) and long work is a job.

``/easyphoto/v1``: ``POST /train`` → job id; ``GET /jobs``, ``GET /jobs/{id}``,
``POST /jobs/{id}/cancel``, ``GET /jobs/{id}/images/{n}``; ``POST /infer`` (job id, or the
finished result with ``wait=true``); ``POST /photos/check``; ``GET /users``,
``DELETE /users/{id}``, ``GET /users/{id}/face_id``, ``GET /users/{id}/export``,
``POST /users/import``; ``GET /templates``, ``GET /templates/{name}/image``. Multipart
variants: ``POST /train/upload``, ``POST /infer/upload``. The reference extension's routes
(``/easyphoto/easyphoto_train_forward``, ``/easyphoto/easyphoto_infer_forward``) are in
:mod:`easyphoto.api_compat`.

Images travel as base64 (a ``data:`` prefix is accepted; URLs are refused: the server never
fetches addresses it is given) or multipart files. Errors are JSON ``{"detail": message}`` with
a 4xx status (5xx only for failures of the server itself).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import secrets
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse

from . import api_models as models
from .errors import EasyPhotoError, InvalidRequest
from .images import MAX_FILE_BYTES
from .infer.prompts import TemplateChoices
from .params import InferRequest, TrainRequest

log = logging.getLogger(__name__)

PREFIX = "/easyphoto/v1"
#: ``wait=true`` is for small requests: at most this many templates, this many seconds.
WAIT_MAX_TEMPLATES = 4
WAIT_TIMEOUT_S = 600.0
MAX_ARCHIVE_BYTES = 2 << 30


def http_errors(handler: Callable) -> Callable:
    """Turn EasyPhotoError into an HTTP error with its message (status from the error)."""
    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except HTTPException:
            raise
        except EasyPhotoError as error:
            raise HTTPException(getattr(error, "http_status", 400), str(error)) from None
        except KeyError as error:  # lookups (gallery names) say what was missing
            raise HTTPException(404, str(error.args[0]) if error.args else "not found") from None

    return wrapper


def decode_image(text: str, label: str) -> bytes:
    """The bytes of a base64 image (``data:`` prefix allowed); InvalidRequest naming ``label``."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidRequest(f"{label} is empty: send the image as base64")
    text = text.strip()
    if text.lower().startswith(("http://", "https://", "file:")):
        raise InvalidRequest(f"{label} is an address: send the image itself as base64 (the "
                             "server does not fetch URLs)")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > MAX_FILE_BYTES * 4 // 3 + 4:
        raise InvalidRequest(f"{label} is larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{label} is not valid base64") from None


def encode_file(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def auth_guard(credentials: Sequence[tuple[str, str]] = (), token: Optional[str] = None):
    """A dependency that requires HTTP Basic ``credentials`` or ``Bearer token`` (if any set)."""
    def check(request: Request) -> None:
        if not credentials and not token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if token and scheme.lower() == "bearer" and secrets.compare_digest(value, token):
            return
        if credentials and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                user, password = "", ""
            for known_user, known_password in credentials:
                if secrets.compare_digest(user, known_user) and \
                        secrets.compare_digest(password, known_password):
                    return
        raise HTTPException(401, "authentication required: send HTTP Basic credentials or a "
                                 "Bearer token", headers={"WWW-Authenticate": "Basic"})

    return check


def job_payload(service: Any, job_id: str, images: bool = False) -> dict:
    """A job as JSON; an inference job's results get image URLs (and base64 if ``images``)."""
    view = service.job(job_id)
    data = view.to_dict()
    result = data.get("result") or {}
    for number, item in enumerate(result.get("results", [])):
        item["url"] = f"{PREFIX}/jobs/{view.id}/images/{number}"
        if images:
            item["image"] = encode_file(Path(item["file"]))
        item.pop("file", None)
    for item in result.get("results", []) + result.get("errors", []):
        item.pop("template_file", None)  # server paths stay on the server
    return data


def save_uploads(service: Any, blobs: Sequence[bytes], prefix: str,
                 suffix: str = ".img") -> list[Path]:
    """Write uploaded files into a fresh folder under ``<data>/uploads`` (the service copies
    what it keeps; callers remove the folder)."""
    import tempfile

    uploads = Path(service.config.data_dir) / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=uploads))
    paths = []
    for number, data in enumerate(blobs):
        path = folder / f"{number:02d}{suffix}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _photo_files(service: Any, photos: Sequence[str], prefix: str) -> list[Path]:
    if not photos:
        raise InvalidRequest("no photos were given: send 5-20 photos of one person")
    blobs = [decode_image(text, f"photo {n + 1}") for n, text in enumerate(photos)]
    return save_uploads(service, blobs, prefix)


def _read_upload(upload: Any, limit: int = MAX_FILE_BYTES) -> bytes:
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise InvalidRequest(f"{upload.filename or 'upload'} is larger than {limit >> 20} MiB")
    return data


def start_training(service: Any, params: dict, photos: list[Path]) -> str:
    import shutil

    try:
        return service.start_training(TrainRequest.from_dict(params), photos)
    finally:
        if photos:
            shutil.rmtree(photos[0].parent, ignore_errors=True)


def start_inference(service: Any, params: dict, templates: list, gallery: Sequence[str],
                    text: Optional[dict]) -> str:
    request = InferRequest.from_dict(params)
    sources = list(templates) + [service.gallery.find(name).path for name in gallery]
    choices = TemplateChoices.from_dict(text) if text is not None else None
    return service.start_inference(request, sources, choices)


def _train_routes(router: APIRouter, service: Any) -> None:
    @router.post("/train", summary="start training a user id (job)")
    @http_errors
    def train(body: models.TrainBody) -> dict:
        params = models.dump(body, exclude=("photos",))
        TrainRequest.from_dict(params)  # parameter errors first, before any file is written
        return {"job_id": start_training(service, params, _photo_files(service, body.photos,
                                                                        "train-"))}

    @router.post("/train/upload", summary="start training, photos as multipart files")
    @http_errors
    def train_upload(photos: List[UploadFile] = File(...), params: str = Form("{}")) -> dict:
        files = save_uploads(service, [_read_upload(f) for f in photos], "train-")
        return {"job_id": start_training(service, _json_params(params), files)}

    @router.post("/photos/check", summary="check photos before training")
    @http_errors
    def check(body: models.PhotoCheckBody) -> dict:
        files = _photo_files(service, body.photos, "check-")
        try:
            return service.check_photos(files, body.max_photos)
        finally:
            import shutil

            shutil.rmtree(files[0].parent, ignore_errors=True)


def _json_params(text: str) -> dict:
    try:
        params = json.loads(text or "{}")
    except ValueError:
        raise InvalidRequest("params must be a JSON object of parameters") from None
    if not isinstance(params, dict):
        raise InvalidRequest("params must be a JSON object of parameters")
    return params


def _infer_routes(router: APIRouter, service: Any) -> None:
    @router.post("/infer", summary="make portraits (job, or the result with wait=true)")
    @http_errors
    def infer(body: models.InferBody) -> dict:
        params = models.dump(body, exclude=("templates", "gallery", "text", "wait"))
        templates = [decode_image(t, f"template {n + 1}") for n, t in enumerate(body.templates)]
        text = models.dump(body.text) if body.text is not None else None
        if body.wait and len(templates) + len(body.gallery) > WAIT_MAX_TEMPLATES:
            raise InvalidRequest(f"wait=true is for at most {WAIT_MAX_TEMPLATES} templates; "
                                 "submit without wait and poll the job")
        job_id = start_inference(service, params, templates, body.gallery, text)
        if not body.wait:
            return {"job_id": job_id}
        service.jobs.wait(job_id, WAIT_TIMEOUT_S)
        return job_payload(service, job_id, images=True)

    @router.post("/infer/upload", summary="make portraits, templates as multipart files")
    @http_errors
    def infer_upload(templates: List[UploadFile] = File(...), params: str = Form("{}")) -> dict:
        data = [_read_upload(f) for f in templates]
        return {"job_id": start_inference(service, _json_params(params), data, (), None)}


def _job_routes(router: APIRouter, service: Any) -> None:
    @router.get("/jobs", summary="recent jobs")
    @http_errors
    def jobs(limit: int = 50) -> list:
        return [job_payload(service, view.id) for view in service.jobs.list(min(limit, 500))]

    @router.get("/jobs/{job_id}", summary="a job's status, progress and result")
    @http_errors
    def job(job_id: str) -> dict:
        return job_payload(service, job_id)

    @router.post("/jobs/{job_id}/cancel", summary="cancel a job")
    @http_errors
    def cancel(job_id: str) -> dict:
        service.cancel(job_id)
        return job_payload(service, job_id)

    @router.get("/jobs/{job_id}/images/{number}", summary="a result image (PNG)")
    @http_errors
    def image(job_id: str, number: int) -> FileResponse:
        results = (service.job(job_id).result or {}).get("results", [])
        if not 0 <= number < len(results):
            raise HTTPException(404, f"job {job_id} has no result image {number}")
        return FileResponse(results[number]["file"], media_type="image/png")


def _user_routes(router: APIRouter, service: Any) -> None:
    @router.get("/users", summary="trained user ids")
    @http_errors
    def users() -> list:
        return [{**u, "face_id": f"{PREFIX}/users/{u['user_id']}/face_id" if u["face_id"] else None}
                for u in service.users()]

    @router.delete("/users/{user_id}", summary="delete a user id and all its files")
    @http_errors
    def delete(user_id: str) -> dict:
        service.delete_user(user_id)
        return {"deleted": user_id}

    @router.get("/users/{user_id}/face_id", summary="a user id's face_id image")
    @http_errors
    def face_id(user_id: str) -> FileResponse:
        path = service.store.get(user_id).face_id_path
        if not path.is_file():
            raise HTTPException(404, f"user id {user_id!r} has no face_id image")
        return FileResponse(path, media_type="image/jpeg")

    @router.get("/users/{user_id}/export", summary="a user id as one zip archive")
    @http_errors
    def export(user_id: str, photos: bool = False) -> FileResponse:
        path = service.export_user(user_id, include_photos=photos)
        return FileResponse(path, media_type="application/zip", filename=path.name)

    @router.post("/users/import", summary="import a user id archive (zip, multipart)")
    @http_errors
    def import_(archive: UploadFile = File(...), user_id: str = Form(""),
                overwrite: bool = Form(False)) -> dict:
        files = save_uploads(service, [_read_upload(archive, MAX_ARCHIVE_BYTES)], "import-",
                             ".zip")
        try:
            return service.import_user(files[0], user_id or None, overwrite)
        finally:
            import shutil

            shutil.rmtree(files[0].parent, ignore_errors=True)


def _template_routes(router: APIRouter, service: Any) -> None:
    @router.get("/templates", summary="the template gallery")
    @http_errors
    def templates() -> list:
        return [{"name": item.name, "origin": item.origin, "licence": item.licence,
                 "provenance": item.provenance, "url": f"{PREFIX}/templates/{item.name}/image"}
                for item in service.gallery.items()]

    @router.get("/templates/{name}/image", summary="a gallery template's image")
    @http_errors
    def template_image(name: str) -> FileResponse:
        return FileResponse(service.gallery.find(name).path)


def mount_api(app: FastAPI, service: Any, *, auth: Sequence[tuple[str, str]] = (),
              token: Optional[str] = None) -> None:
    """Add every route to ``app``. With ``auth`` (user, password) pairs and/or ``token`` set,
    every route requires them (the WebUI's ``--api-auth`` does not cover extension routes)."""
    from .api_compat import compat_routes

    guard = [Depends(auth_guard(list(auth), token))]
    router = APIRouter(prefix=PREFIX, dependencies=guard, tags=["easyphoto"])
    for add in (_train_routes, _infer_routes, _job_routes, _user_routes, _template_routes):
        add(router, service)
    app.include_router(router)
    compat = APIRouter(dependencies=guard, tags=["easyphoto (reference routes)"])
    compat_routes(compat, service)
    app.include_router(compat)
