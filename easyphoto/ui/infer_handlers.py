"""What the Inference tab's events do. Each handler takes and returns a dict keyed by slot name.

Slots: ``people`` and ``user_1`` … ``user_5`` (one dropdown per face, left to right);
``templates`` (state: gallery paths), ``template_gallery``, ``selected`` (state: the chosen
gallery path), ``selected_msg``, ``source`` (state: gallery | upload | batch | text),
``upload``, ``batch``, ``text_<choice>`` (TemplateChoices fields), the InferRequest fields by
name, ``job`` (state), ``progress``, ``message``, ``results`` (gallery), ``items`` (state:
what each result shows), ``sources`` (state: template name → file), ``files`` (downloads),
``before``/``after`` (the template next to a result), ``detail``, ``errors``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from ..errors import InvalidRequest
from ..infer.prompts import TemplateChoices
from ..jobs import DONE, JobView
from ..params import MAX_PEOPLE, NO_USER, InferRequest
from ..service import INFER
from . import compat, fields, render
from .follow import POLL_S, cancel_job, follow, latest

USER_SLOTS = tuple(f"user_{number}" for number in range(1, MAX_PEOPLE + 1))
TEXT_FIELDS = tuple(f.name for f in dataclasses.fields(TemplateChoices))
SOURCES = ("gallery", "upload", "batch", "text")
#: How a text choice's "not specified" ("") is shown (gradio 3.41 dropdowns take strings only).
ANY = "(any)"


def _count(value: Any) -> int:
    try:
        return min(MAX_PEOPLE, max(1, int(value)))
    except (TypeError, ValueError):
        return 1


class InferHandlers:
    """The Inference tab's handlers over one :class:`~easyphoto.service.Service`."""

    def __init__(self, service: Any, poll_s: float = POLL_S):
        self.service, self.poll_s = service, poll_s

    # -- people --------------------------------------------------------------------------------
    def refresh_users(self, values: dict) -> dict:
        """Fill every face's dropdown with the ready user ids (kept choices stay selected)."""
        ids = [u["user_id"] for u in self.service.users() if u.get("status") == "ready"]
        choices = [NO_USER] + ids
        shown = {}
        for number, slot in enumerate(USER_SLOTS):
            value = values.get(slot)
            if value not in choices or (number == 0 and value == NO_USER and ids):
                value = ids[0] if number == 0 and ids else NO_USER
            shown[slot] = gr.update(choices=choices, value=value)
        return shown

    def people_changed(self, values: dict) -> dict:
        count = _count(values.get("people"))
        return {slot: gr.update(visible=number < count) for number, slot in enumerate(USER_SLOTS)}

    # -- templates -----------------------------------------------------------------------------
    def refresh_templates(self, values: dict) -> dict:
        items = self.service.gallery.items()
        return {"templates": [str(i.path) for i in items],
                "template_gallery": [(str(i.path), i.name) for i in items]}

    def select_template(self, values: dict) -> dict:
        index = getattr(values.get("event"), "index", None)
        paths = values.get("templates") or []
        if not isinstance(index, int) or not 0 <= index < len(paths):
            return {"selected": None, "selected_msg": ""}
        try:
            item = self.service.gallery.find(paths[index])
            note = f"Template: {item.name}" + (f" ({item.licence})" if item.licence else "")
        except KeyError:  # removed since the gallery was listed; the file is still usable
            note = f"Template: {Path(paths[index]).stem}"
        return {"selected": paths[index], "selected_msg": render.message(note, ok=True)}

    def add_template(self, values: dict) -> dict:
        """Keep the uploaded image as a gallery template (checked like any template file)."""
        path = compat.file_path(values.get("upload"))
        if not path:
            raise InvalidRequest("Upload an image first, then “Add to gallery”.")
        item = self.service.gallery.add(Path(path).read_bytes(), Path(path).name)
        return {**self.refresh_templates(values), "selected": str(item.path),
                "message": render.message(f"Added {item.name} to the gallery.", ok=True)}

    @staticmethod
    def source_setter(source: str):
        """A handler that records which template source tab is open."""
        def set_source(values: dict) -> dict:
            return {"source": source}

        set_source.__name__ = f"set_source_{source}"
        return set_source

    # -- the job -------------------------------------------------------------------------------
    def _templates(self, values: dict) -> tuple[list[str], TemplateChoices | None]:
        source = values.get("source") or "gallery"
        if source == "gallery":
            if not values.get("selected"):
                raise InvalidRequest("Pick a template in the gallery first (click one).")
            return [values["selected"]], None
        if source == "upload":
            path = compat.file_path(values.get("upload"))
            if not path:
                raise InvalidRequest("Upload a template image first.")
            return [path], None
        if source == "batch":
            paths = compat.file_paths(values.get("batch"))
            if not paths:
                raise InvalidRequest("Add the template files of the batch first.")
            return paths, None
        if source == "text":
            choices = {name: str(values.get(f"text_{name}") or "") for name in TEXT_FIELDS}
            choices = {name: "" if value == ANY else value for name, value in choices.items()}
            return [], TemplateChoices(**choices)
        raise InvalidRequest(f"unknown template source {source!r}")

    def generate(self, values: dict) -> Iterator[dict]:
        """Submit the portraits, then follow the job until it has finished."""
        count = _count(values.get("people"))
        user_ids = [str(values.get(slot) or NO_USER) for slot in USER_SLOTS[:count]]
        request = fields.collect(InferRequest, values, user_ids=user_ids)
        templates, choices = self._templates(values)
        job_id = self.service.start_inference(request, templates, choices)
        sources = {Path(p).name: p for p in templates}
        yield {"job": job_id, "sources": sources, "results": [], "items": [], "files": None,
               "before": None, "after": None, "detail": "", "errors": ""}
        yield from follow(self.service, job_id, lambda view: self.show(view, sources),
                          self.poll_s)

    def _gallery_sources(self) -> dict:
        return {i.path.name: str(i.path) for i in self.service.gallery.items()}

    def show(self, view: JobView, sources: dict | None = None) -> dict:
        """An inference job's state as the tab's outputs (the results once it has finished)."""
        shown = {"job": view.id, "progress": render.progress(view),
                 "message": render.job_message(view)}
        if view.status != DONE or not view.result:
            return shown
        known = {**self._gallery_sources(), **(sources or {})}
        items = [{"before": r.get("template_file") or known.get(r.get("template")),
                  "after": r.get("file"),
                  "caption": render.result_caption(r),
                  "detail": render.result_detail(r, bool(view.request.get("display_score")))}
                 for r in view.result.get("results", []) if r.get("file")]
        errors = view.result.get("errors", [])
        items += [{"before": e.get("template_file") or known[e.get("template")], "after": None,
                   "caption": f"✗ {e.get('template')}: {e.get('error')}",
                   "detail": render.message(str(e.get("error")), ok=False)}
                  for e in errors if e.get("template_file") or e.get("template") in known]
        first = items[0] if items else {}
        shown.update(results=[(i["after"] or i["before"], i["caption"]) for i in items],
                     items=items, files=[i["after"] for i in items if i["after"]] or None,
                     before=first.get("before"), after=first.get("after"),
                     detail=first.get("detail", ""), errors=render.template_errors(errors))
        return shown

    def select_result(self, values: dict) -> dict:
        index = getattr(values.get("event"), "index", None)
        items = values.get("items") or []
        if not isinstance(index, int) or not 0 <= index < len(items):
            return {}
        item = items[index]
        return {"before": item["before"], "after": item["after"], "detail": item["detail"]}

    def cancel(self, values: dict) -> dict:
        return cancel_job(self.service, values.get("job"), "No generation is running.")

    def restore(self, values: dict) -> Iterator[dict]:
        """After a page load (or "Refresh status"): the latest generation, followed while it
        runs."""
        view = latest(self.service, INFER)
        if view is None:
            yield {"progress": render.progress(None)}
            return
        yield from follow(self.service, view.id, self.show, self.poll_s)
