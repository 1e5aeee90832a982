"""The Inference tab: people and their user ids, the template source, InferRequest
parameters, the job, and the results (before/after, similarity, downloads, errors).

Layout only; what the events do is :class:`~easyphoto.ui.infer_handlers.InferHandlers`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import gradio as gr

from ..infer.prompts import (
    CLOTH_COLOURS,
    CLOTHES,
    GENDERS,
    PLACES,
    PORTRAIT_RATIOS,
    POSES,
    SEASONS,
    TEMPLATE_SIZES,
    TIMES_OF_DAY,
    WEATHERS,
    TemplateChoices,
)
from ..params import MAX_PEOPLE, NO_USER, InferRequest
from . import fields, render
from .infer_handlers import ANY, SOURCES, TEXT_FIELDS, USER_SLOTS, InferHandlers
from .slots import Slots, connect

PREFIX = "infer"
#: The SPEC 2.9 choice list of each TemplateChoices field (free text is a text box).
TEXT_CHOICES = MappingProxyType({
    "portrait_ratio": tuple(PORTRAIT_RATIOS), "gender": GENDERS, "cloth_colour": CLOTH_COLOURS,
    "cloth": CLOTHES, "pose": POSES, "place": PLACES, "season": SEASONS,
    "time_of_day": TIMES_OF_DAY, "weather": WEATHERS, "orientation": tuple(TEMPLATE_SIZES)})


def _id(name: str) -> str:
    return fields.elem_id(PREFIX, name)


class InferTab:
    """Builds the tab inside the current Blocks context; :meth:`wire` connects its events."""

    def __init__(self, service: Any, handlers: InferHandlers):
        self.service, self.handlers = service, handlers
        self.c: dict[str, Any] = {}
        self.source_tabs: dict[str, Any] = {}

    def build(self) -> InferTab:
        c = self.c
        for name, value in (("templates", []), ("selected", None), ("source", "gallery"),
                            ("job", None), ("items", []), ("sources", {})):
            c[name] = gr.State(value)
        with gr.Row(elem_id=_id("main")):
            with gr.Column(scale=1, elem_id=_id("input_column")):
                self._people()
                self._template_sources()
                self._settings()
            with gr.Column(scale=1, elem_id=_id("output_column")):
                self._outputs()
        return self

    def _people(self) -> None:
        c = self.c
        gr.Markdown("### 1 · Who")
        start = min(MAX_PEOPLE, max(1, int(getattr(self.service.config, "default_people", 1))))
        c["people"] = gr.Slider(minimum=1, maximum=MAX_PEOPLE, step=1, value=start,
                                label="Number of people", info="faces are counted left to right",
                                elem_id=_id("people"))
        with gr.Row(elem_id=_id("users")):
            for number, slot in enumerate(USER_SLOTS, start=1):
                c[slot] = gr.Dropdown(choices=[NO_USER], value=NO_USER,
                                      label=f"Face {number} (from the left)",
                                      visible=number <= start, elem_id=_id(slot))
        c["refresh_users"] = gr.Button("Refresh user ids", size="sm",
                                       elem_id=_id("refresh_users"))

    def _template_sources(self) -> None:
        c = self.c
        gr.Markdown("### 2 · Template")
        with gr.Tabs(elem_id=_id("sources")):
            with gr.Tab("Gallery", elem_id=_id("source_gallery")) as tab:
                self.source_tabs["gallery"] = tab
                c["template_gallery"] = gr.Gallery(label="Click a template", columns=4,
                                                   height=300, object_fit="contain",
                                                   allow_preview=False,
                                                   elem_id=_id("template_gallery"))
                c["selected_msg"] = gr.HTML("", elem_id=_id("selected_msg"))
            with gr.Tab("Upload", elem_id=_id("source_upload")) as tab:
                self.source_tabs["upload"] = tab
                c["upload"] = gr.Image(label="Template", type="filepath", height=300,
                                       elem_id=_id("upload"))
                c["add_template"] = gr.Button("Add to gallery", size="sm",
                                              elem_id=_id("add_template"))
            with gr.Tab("Batch", elem_id=_id("source_batch")) as tab:
                self.source_tabs["batch"] = tab
                c["batch"] = gr.File(label="Templates (many files)", file_count="multiple",
                                     file_types=["image"], elem_id=_id("batch"))
            with gr.Tab("From text", elem_id=_id("source_text")) as tab:
                self.source_tabs["text"] = tab
                self._text_choices()

    def _text_choices(self) -> None:
        defaults = TemplateChoices()
        gr.Markdown("A template is drawn from these words first (SDXL), then used as usual.")
        with gr.Row(elem_id=_id("text_row")):
            for name in TEXT_FIELDS:
                if name == "free_text":
                    continue
                self.c[f"text_{name}"] = gr.Dropdown(
                    choices=[choice or ANY for choice in TEXT_CHOICES[name]],
                    value=getattr(defaults, name) or ANY,
                    label=fields.label_of(name), elem_id=_id(f"text_{name}"))
        self.c["text_free_text"] = gr.Textbox(label="Free text", lines=2,
                                              placeholder="anything else to add to the prompt",
                                              elem_id=_id("text_free_text"))

    def _settings(self) -> None:
        gr.Markdown("### 3 · Settings")
        hints = {"base_model": "default: " + (self.service.config.base_model or
                                              "the registry's SD1.5 base")}
        basic = fields.build(InferRequest, PREFIX, "basic", skip={"user_ids"},
                             placeholders=hints)
        with gr.Accordion("Advanced", open=False, elem_id=_id("advanced")):
            advanced = fields.build(InferRequest, PREFIX, "advanced")
        self.params = basic + advanced

    def _outputs(self) -> None:
        c = self.c
        with gr.Row(elem_id=_id("buttons")):
            c["generate"] = gr.Button("Generate", variant="primary", elem_id=_id("generate"))
            c["cancel"] = gr.Button("Cancel", variant="stop", elem_id=_id("cancel"))
            c["refresh"] = gr.Button("Refresh status", elem_id=_id("refresh"))
        c["message"] = gr.HTML("", elem_id=_id("message"))
        c["progress"] = gr.HTML(render.progress(None), elem_id=_id("progress"))
        c["results"] = gr.Gallery(label="Results (click one to compare with its template)",
                                  columns=3, height=300, object_fit="contain",
                                  allow_preview=False, elem_id=_id("results"))
        with gr.Row(elem_id=_id("compare")):
            c["before"] = gr.Image(label="Template", type="filepath", interactive=False,
                                   height=320, elem_id=_id("before"))
            c["after"] = gr.Image(label="Result", type="filepath", interactive=False,
                                  height=320, elem_id=_id("after"))
        c["detail"] = gr.HTML("", elem_id=_id("detail"))
        c["errors"] = gr.HTML("", elem_id=_id("errors"))
        c["files"] = gr.File(label="Download (PNG with the parameters inside)",
                             file_count="multiple", interactive=False, elem_id=_id("files"))

    # -- events ------------------------------------------------------------------------------------
    def slots(self, *names: str) -> Slots:
        return Slots({name: self.c[name] for name in names})

    def job_outputs(self) -> Slots:
        return self.slots("job", "progress", "message", "results", "items", "files", "before",
                          "after", "detail", "errors")

    def wire(self, blocks: gr.Blocks, main_tab: Any) -> None:
        h, c = self.handlers, self.c
        users = self.slots(*USER_SLOTS)
        for trigger in (c["refresh_users"].click, main_tab.select, blocks.load):
            connect(trigger, h.refresh_users, users, users, progress="hidden")
        for trigger in (c["people"].change, c["people"].release):  # release: the final value
            connect(trigger, h.people_changed, self.slots("people"), users, progress="hidden")
        gallery_out = self.slots("templates", "template_gallery")
        for trigger in (main_tab.select, blocks.load):
            connect(trigger, h.refresh_templates, Slots(), gallery_out, progress="hidden")
        connect(c["template_gallery"].select, h.select_template, self.slots("templates"),
                self.slots("selected", "selected_msg"), with_event=True, progress="hidden")
        connect(c["add_template"].click, h.add_template, self.slots("upload"),
                gallery_out + self.slots("selected", "message"))
        for source in SOURCES:
            connect(self.source_tabs[source].select, h.source_setter(source), Slots(),
                    self.slots("source"), progress="hidden")
        connect(c["results"].select, h.select_result, self.slots("items"),
                self.slots("before", "after", "detail"), with_event=True, progress="hidden")
        self._wire_job(blocks)

    def _wire_job(self, blocks: gr.Blocks) -> None:
        h, c = self.handlers, self.c
        load = connect(blocks.load, h.restore, Slots(), self.job_outputs(), progress="hidden",
                       polls=True)
        refresh = connect(c["refresh"].click, h.restore, Slots(), self.job_outputs(),
                          progress="hidden", polls=True, cancels=[load])
        inputs = (self.slots("people", *USER_SLOTS, "source", "selected", "upload", "batch")
                  + self.slots(*(f"text_{name}" for name in TEXT_FIELDS)) + self.params)
        connect(c["generate"].click, h.generate, inputs, self.job_outputs() +
                self.slots("sources"), progress="hidden", polls=True, cancels=[load, refresh])
        connect(c["cancel"].click, h.cancel, self.slots("job"), self.slots("message"),
                progress="hidden")
