"""The reference extension's HTTP routes, so existing clients keep working.

``POST /easyphoto/easyphoto_train_forward`` and ``POST /easyphoto/easyphoto_infer_forward``
take the reference's JSON field names, run synchronously like the reference did, and answer in
its shape (``{"message": ...}``; ``{"message", "outputs": [base64 PNG], "face_id_outputs"}``).
Differences, on purpose: a bad request is an HTTP 4xx with a message (the reference answered 200
with "error info" in the message); ``enable_rl`` is refused with a message (not built);
template URLs are refused (the server never fetches addresses). Fields the reference accepted
but that have no meaning here (``id_task``, ``dataloader_num_workers``, ``args`` …) are ignored.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from fastapi import APIRouter, Body

from .api import decode_image, encode_file, http_errors, start_inference, start_training
from .errors import InvalidRequest

log = logging.getLogger(__name__)

#: reference train field → our TrainRequest field.
TRAIN_FIELDS = {"user_id": "user_id", "sd_model_checkpoint": "base_model",
                "resolution": "resolution", "val_and_checkpointing_steps": "validation_steps",
                "max_train_steps": "max_train_steps", "steps_per_photos": "steps_per_photo",
                "train_batch_size": "train_batch_size",
                "gradient_accumulation_steps": "gradient_accumulation_steps",
                "learning_rate": "learning_rate", "rank": "rank", "network_alpha": "network_alpha",
                "validation": "validation", "skin_retouching_bool": "skin_retouch"}
TRAIN_IGNORED = ("id_task", "dataloader_num_workers", "args", "max_rl_time",
                 "timestep_fraction", "unique_id", "train_mode_choose", "instance_images",
                 "enable_rl")
#: reference infer field → our InferRequest field.
INFER_FIELDS = {"sd_model_checkpoint": "base_model", "additional_prompt": "additional_prompt",
                "first_diffusion_steps": "first_diffusion_steps",
                "first_denoising_strength": "first_denoising_strength",
                "second_diffusion_steps": "second_diffusion_steps",
                "second_denoising_strength": "second_denoising_strength", "seed": "seed",
                "crop_face_preprocess": "crop_face_preprocess",
                "before_face_fusion_ratio": "face_fusion_ratio_before",
                "after_face_fusion_ratio": "face_fusion_ratio_after",
                "apply_face_fusion_before": "apply_face_fusion_before",
                "apply_face_fusion_after": "apply_face_fusion_after",
                "color_shift_middle": "color_shift_first", "color_shift_last": "color_shift_last",
                "super_resolution": "super_resolution", "display_score": "display_score",
                "background_restore": "background_restore",
                "background_restore_denoising_strength": "background_restore_denoising_strength",
                "skin_retouching_bool": "skin_retouching"}
INFER_IGNORED = ("user_ids", "selected_template_images", "init_image",
                 "uploaded_template_images", "tabs", "sd_xl_input_prompt", "sd_xl_resolution",
                 "super_resolution_method", "id_task", "args")
#: the reference's default checkpoint name: means "the configured base model" here.
REFERENCE_DEFAULT_CHECKPOINT = "Chilloutmix-Ni-pruned-fp16-fix.safetensors"
#: reference ``tabs``: which template source the request uses.
TAB_GALLERY, TAB_UPLOAD, TAB_BATCH, TAB_TEXT = 0, 1, 2, 3


def _translate(data: dict, fields: dict, ignored: tuple) -> dict:
    unknown = sorted(set(data) - set(fields) - set(ignored))
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}")
    params = {ours: data[theirs] for theirs, ours in fields.items() if theirs in data}
    if params.get("base_model") in ("", REFERENCE_DEFAULT_CHECKPOINT):
        params.pop("base_model")
    return params


def train_forward(service: Any, data: dict) -> dict:
    if data.get("enable_rl"):
        raise InvalidRequest("enable_rl (DDPO identity reinforcement) is not available in this "
                             "version; send enable_rl=false")
    params = _translate(data, TRAIN_FIELDS, TRAIN_IGNORED)
    params.setdefault("user_id", "tmp")
    images = data.get("instance_images") or []
    if not isinstance(images, list):
        raise InvalidRequest("instance_images must be a list of base64 images")
    from .api import save_uploads

    photos = save_uploads(service, [decode_image(t, f"instance image {n + 1}")
                                    for n, t in enumerate(images)], "train-") if images else []
    job_id = start_training(service, params, photos)
    view = service.jobs.wait(job_id)
    if view.status != "done":
        return {"message": f"Train error: {view.error or view.status}", "job_id": job_id}
    return {"message": "The training has been completed.", "job_id": job_id}


def _templates(data: dict) -> tuple[list, Optional[dict]]:
    """The template images the reference request carries, by its ``tabs`` value."""
    tabs = int(data.get("tabs", TAB_UPLOAD))
    if tabs == TAB_TEXT:
        return [], {"free_text": str(data.get("sd_xl_input_prompt", ""))[:1000]}
    field = {TAB_GALLERY: "selected_template_images", TAB_UPLOAD: "init_image",
             TAB_BATCH: "uploaded_template_images"}.get(tabs)
    if field is None:
        raise InvalidRequest(f"tabs must be 0 (gallery), 1 (upload), 2 (batch) or 3 (text); "
                             f"got {tabs}")
    items = data.get(field)
    items = [items] if isinstance(items, str) else list(items or [])
    if not items:
        raise InvalidRequest(f"{field} is empty: send the template image(s) as base64")
    return [decode_image(t, f"{field} {n + 1}") for n, t in enumerate(items)], None


def infer_forward(service: Any, data: dict) -> dict:
    params = _translate(data, INFER_FIELDS, INFER_IGNORED)
    user_ids = data.get("user_ids", [])
    params["user_ids"] = [user_ids] if isinstance(user_ids, str) else list(user_ids)
    templates, text = _templates(data)
    job_id = start_inference(service, params, templates, (), text)
    view = service.jobs.wait(job_id)
    if view.status != "done":
        return {"message": f"Infer error: {view.error or view.status}", "outputs": [],
                "face_id_outputs": [], "job_id": job_id}
    result = view.result or {}
    outputs = [encode_file(item["file"]) for item in result.get("results", [])]
    errors = [f"{e['template']}: {e['error']}" for e in result.get("errors", [])]
    face_ids = []
    for user_id in params["user_ids"]:
        if user_id.lower() != "none":
            path = service.store.get(user_id).face_id_path
            face_ids.append(encode_file(path) if path.is_file() else None)
    message = "Success" if not errors else "Some templates failed: " + "; ".join(errors)
    return {"message": message, "outputs": outputs, "face_id_outputs": face_ids,
            "job_id": job_id}


def compat_routes(router: APIRouter, service: Any) -> None:
    @router.post("/easyphoto/easyphoto_train_forward", summary="reference: train (waits)")
    @http_errors
    def _train(datas: dict = Body(...)) -> dict:
        return train_forward(service, datas)

    @router.post("/easyphoto/easyphoto_infer_forward", summary="reference: infer (waits)")
    @http_errors
    def _infer(datas: dict = Body(...)) -> dict:
        return infer_forward(service, datas)
