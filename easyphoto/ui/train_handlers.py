"""What the Train tab's events do. Each handler takes and returns a dict keyed by slot name.

Slots: ``photos`` (state: uploaded paths), ``report`` (state: the last photo check),
``selected`` (state: the gallery index picked for removal), ``upload`` (file drop),
``gallery`` (thumbnails captioned with verdicts), ``verdicts`` (the table), ``photo_message``,
``user_id`` and
``user_id_msg``, the TrainRequest fields by name, ``job`` (state: the job id), ``progress``,
``log``, ``message``, ``face_id``, ``renders``, ``summary``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..errors import InvalidRequest, InvalidUserId
from ..jobs import DONE, JobView
from ..params import TrainRequest
from ..service import MAX_PHOTOS_UPLOAD, TRAIN
from ..store import validate_user_id
from . import compat, fields, render
from .follow import POLL_S, cancel_job, follow, latest


def _no_photos() -> dict:
    """The outputs of an empty photo list (fresh lists each time: they become session state)."""
    return {"photos": [], "report": None, "selected": None, "gallery": [],
            "verdicts": render.verdicts(None)}


def _backend(value: Any) -> str:
    """The face backend for the photo check: ``auto`` defers to the service's configuration."""
    return "" if value in (None, "", "auto") else str(value)


def _max_photos(value: Any) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return TrainRequest.max_photos


class TrainHandlers:
    """The Train tab's handlers over one :class:`~easyphoto.service.Service`."""

    def __init__(self, service: Any, poll_s: float = POLL_S):
        self.service, self.poll_s = service, poll_s

    # -- photos --------------------------------------------------------------------------------
    def _checked(self, photos: list, values: dict, note: str = "") -> dict:
        """Check ``photos`` now; the gallery captions and the table show the verdicts."""
        if not photos:
            return {**_no_photos(), "photo_message": render.message(note, ok=None)}
        report = self.service.check_photos(photos, _max_photos(values.get("max_photos")),
                                           _backend(values.get("face_backend")))
        checks = report.get("photos", [])
        gallery = [(path, render.photo_caption(number, checks[number - 1]
                                               if number <= len(checks) else None))
                   for number, path in enumerate(photos, start=1)]
        flagged = sum(1 for c in checks if c.get("verdict") != "ok")
        text = note or f"{len(photos)} photo(s) checked: {report.get('kept', 0)} kept"
        if flagged:
            text += f", {flagged} flagged (see the reasons below)"
        return {"photos": photos, "report": report, "selected": None, "gallery": gallery,
                "verdicts": render.verdicts(report),
                "photo_message": render.message(text, ok=bool(report.get("kept")))}

    def add_photos(self, values: dict) -> dict:
        """Photos dropped on the upload box join the list, which is checked again."""
        added = compat.file_paths(values.get("upload"))
        photos = list(values.get("photos") or [])
        known = set(photos)
        photos += [p for p in added if p not in known]
        if len(photos) > MAX_PHOTOS_UPLOAD:
            raise InvalidRequest(f"{len(photos)} photos: at most {MAX_PHOTOS_UPLOAD} are "
                                 "accepted; remove some first")
        return {**self._checked(photos, values), "upload": None}

    def select_photo(self, values: dict) -> dict:
        index = getattr(values.get("event"), "index", None)
        photos = values.get("photos") or []
        if isinstance(index, (list, tuple)):
            index = index[0]
        if not isinstance(index, int) or not 0 <= index < len(photos):
            return {"selected": None}
        return {"selected": index, "photo_message": render.message(
            f"Photo {index + 1} selected: “Remove selected” takes it out.", ok=None)}

    def remove_photo(self, values: dict) -> dict:
        photos = list(values.get("photos") or [])
        index = values.get("selected")
        if index is None or not 0 <= index < len(photos):
            return {"photo_message": render.message("Click a photo in the gallery first, then "
                                              "“Remove selected”.", ok=None)}
        del photos[index]
        return self._checked(photos, values, note=f"Photo {index + 1} removed; "
                             f"{len(photos)} left.")

    def clear_photos(self, values: dict) -> dict:
        return {**_no_photos(), "upload": None,
                "photo_message": render.message("All photos removed.", ok=None)}

    # -- user id -------------------------------------------------------------------------------
    def check_user_id(self, values: dict) -> dict:
        """The inline verdict on the typed user id (free, taken, invalid)."""
        user_id = (values.get("user_id") or "").strip()
        if not user_id:
            return {"user_id_msg": render.message(
                "Choose a user id: 1–64 letters, digits, '_', '-' or '.'.", ok=None)}
        try:
            validate_user_id(user_id)
        except InvalidUserId as error:
            return {"user_id_msg": render.message(str(error), ok=False)}
        taken = {u["user_id"].casefold() for u in self.service.users()}
        if user_id.casefold() not in taken:
            return {"user_id_msg": render.message(f"“{user_id}” is free.", ok=True)}
        if values.get("overwrite"):
            return {"user_id_msg": render.message(
                f"“{user_id}” exists and will be replaced when the new training succeeds.",
                ok=None)}
        return {"user_id_msg": render.message(
            f"“{user_id}” already exists: choose another id or tick “Overwrite”.", ok=False)}

    # -- the job -------------------------------------------------------------------------------
    def show(self, view: JobView) -> dict:
        """A training job's state as the tab's outputs (results once it has finished)."""
        shown = {"job": view.id, "progress": render.progress(view), "log": view.log_tail,
                 "message": render.job_message(view)}
        summary = (view.result or {}).get("summary") if view.status == DONE else None
        if summary:
            renders = [(r["path"], render.render_caption(r)) for r in summary.get("renders", [])
                       if r.get("path")]
            user_id = (view.result or {}).get("user_id") or view.request.get("user_id", "")
            shown.update(face_id=summary.get("face_id"), renders=renders,
                         summary=render.training_summary(summary),
                         user_id_msg=render.message(f"Last training: “{user_id}” is ready; pick "
                                                    "it on the Inference tab.", ok=True))
        return shown

    def start(self, values: dict) -> Iterator[dict]:
        """Submit the training, then follow it until it has finished."""
        photos = list(values.get("photos") or [])
        if not photos:
            raise InvalidRequest("Add photos first: 5–20 photos of one person.")
        request = fields.collect(TrainRequest, values,
                                 user_id=(values.get("user_id") or "").strip())
        job_id = self.service.start_training(request, photos)
        yield {"job": job_id, "face_id": None, "renders": [], "summary": "", "log": ""}
        yield from follow(self.service, job_id, self.show, self.poll_s)

    def cancel(self, values: dict) -> dict:
        return cancel_job(self.service, values.get("job"), "No training is running.")

    def restore(self, values: dict) -> Iterator[dict]:
        """After a page load (or "Refresh status"): the latest training, followed while it
        runs."""
        view: JobView | None = latest(self.service, TRAIN)
        if view is None:
            yield {"progress": render.progress(None)}
            return
        yield from follow(self.service, view.id, self.show, self.poll_s)
