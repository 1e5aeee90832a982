"""The Train tab: photos with their verdicts, the user id, TrainRequest parameters, the job.

Layout only; what the events do is :class:`~easyphoto.ui.train_handlers.TrainHandlers`.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..params import TrainRequest
from . import fields, render
from .slots import Slots, connect
from .train_handlers import TrainHandlers

PREFIX = "train"


def _id(name: str) -> str:
    return fields.elem_id(PREFIX, name)


class TrainTab:
    """Builds the tab inside the current Blocks context; :meth:`wire` connects its events."""

    def __init__(self, service: Any, handlers: TrainHandlers):
        self.service, self.handlers = service, handlers
        self.c: dict[str, Any] = {}

    def build(self) -> TrainTab:
        c = self.c
        c["photos"], c["report"] = gr.State([]), gr.State(None)
        c["selected"], c["job"] = gr.State(None), gr.State(None)
        with gr.Row(elem_id=_id("main")):
            with gr.Column(scale=3, elem_id=_id("photos_column")):
                self._photos()
            with gr.Column(scale=2, elem_id=_id("settings_column")):
                self._settings()
        self._job()
        return self

    def _photos(self) -> None:
        c = self.c
        gr.Markdown("### 1 · Photos of one person (5–20)")
        c["upload"] = gr.File(label="Add photos: drop image files here or click",
                              file_count="multiple", file_types=["image"], elem_id=_id("upload"))
        c["gallery"] = gr.Gallery(label="Photos (click one to select it)", columns=4, height=360,
                                  object_fit="contain", allow_preview=False,
                                  elem_id=_id("gallery"))
        with gr.Row(elem_id=_id("photo_buttons")):
            c["remove"] = gr.Button("Remove selected", size="sm", elem_id=_id("remove"))
            c["clear"] = gr.Button("Clear all", size="sm", elem_id=_id("clear"))
        c["photo_message"] = gr.HTML("", elem_id=_id("photo_message"))
        c["verdicts"] = gr.HTML(render.verdicts(None), elem_id=_id("verdicts"))

    def _settings(self) -> None:
        c = self.c
        gr.Markdown("### 2 · User id and settings")
        c["user_id"] = gr.Textbox(label="User id", placeholder="e.g. alice", max_lines=1,
                                  info="1–64 letters, digits, '_', '-' or '.'; the name you "
                                  "pick at inference", elem_id=_id("user_id"))
        c["user_id_msg"] = gr.HTML("", elem_id=_id("user_id_msg"))
        hints = {"base_model": "default: " + (self.service.config.base_model or
                                              "the registry's SD1.5 base")}
        self.basic = fields.build(TrainRequest, PREFIX, "basic", skip={"user_id"},
                                  placeholders=hints)
        with gr.Accordion("Advanced", open=False, elem_id=_id("advanced")):
            self.advanced = fields.build(TrainRequest, PREFIX, "advanced")
        self.params = self.basic + self.advanced

    def _job(self) -> None:
        c = self.c
        gr.Markdown("### 3 · Train")
        with gr.Row(elem_id=_id("buttons")):
            c["start"] = gr.Button("Start training", variant="primary", elem_id=_id("start"))
            c["cancel"] = gr.Button("Cancel", variant="stop", elem_id=_id("cancel"))
            c["refresh"] = gr.Button("Refresh status", elem_id=_id("refresh"))
        c["message"] = gr.HTML("", elem_id=_id("message"))
        c["progress"] = gr.HTML(render.progress(None), elem_id=_id("progress"))
        c["log"] = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False,
                              elem_id=_id("log"))
        with gr.Row(elem_id=_id("results")):
            c["face_id"] = gr.Image(label="face_id image", type="filepath", interactive=False,
                                    height=256, scale=1, elem_id=_id("face_id"))
            c["renders"] = gr.Gallery(label="Validation renders (score per render)", columns=4,
                                      height=256, scale=2, object_fit="contain",
                                      elem_id=_id("renders"))
        c["summary"] = gr.HTML("", elem_id=_id("summary"))

    # -- events ------------------------------------------------------------------------------------
    def slots(self, *names: str) -> Slots:
        return Slots({name: self.c[name] for name in names})

    def job_outputs(self) -> Slots:
        return self.slots("job", "progress", "log", "message", "face_id", "renders", "summary",
                          "user_id_msg")

    def wire(self, blocks: gr.Blocks) -> None:
        h, c = self.handlers, self.c
        photo_out = self.slots("photos", "report", "selected", "gallery", "verdicts",
                               "photo_message", "upload")
        check_in = self.slots("photos", "upload") + self.params.pick(["max_photos",
                                                                      "face_backend"])
        connect(c["upload"].upload, h.add_photos, check_in, photo_out, progress="full")
        connect(c["gallery"].select, h.select_photo, self.slots("photos"),
                self.slots("selected", "photo_message"), with_event=True, progress="hidden")
        connect(c["remove"].click, h.remove_photo,
                self.slots("photos", "selected") + self.params.pick(["max_photos",
                                                                     "face_backend"]),
                photo_out, progress="full")
        connect(c["clear"].click, h.clear_photos, Slots(), photo_out, progress="hidden")
        id_in = self.slots("user_id") + self.params.pick(["overwrite"])
        # gradio 3 skips a change event while the previous one runs: blur sends the last value
        for trigger in (c["user_id"].change, c["user_id"].blur, self.params["overwrite"].change):
            connect(trigger, h.check_user_id, id_in, self.slots("user_id_msg"),
                    progress="hidden")
        load = connect(blocks.load, h.restore, Slots(), self.job_outputs(),
                       progress="hidden", polls=True)
        refresh = connect(c["refresh"].click, h.restore, Slots(), self.job_outputs(),
                          progress="hidden", polls=True, cancels=[load])
        connect(c["start"].click, h.start, self.slots("photos", "user_id") + self.params,
                self.job_outputs(), progress="hidden", polls=True, cancels=[load, refresh])
        connect(c["cancel"].click, h.cancel, self.slots("job"), self.slots("message"),
                progress="hidden")
