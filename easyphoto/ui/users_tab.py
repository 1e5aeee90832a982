"""The Users tab: every user id with its face_id thumbnail, base model, date and score;
delete (confirmed by a tick, no pop-up), export to a zip (training photos optional), import.

Slots: ``ids`` (state: the gallery's user ids in order), ``gallery``, ``table``, ``selected``
(dropdown), ``confirm``, ``include_photos``, ``export_file``, ``archive``, ``import_id``,
``import_overwrite``, ``message``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..errors import InvalidRequest
from . import compat, fields, render
from .slots import Slots, connect

PREFIX = "users"


def _id(name: str) -> str:
    return fields.elem_id(PREFIX, name)


class UsersHandlers:
    """The Users tab's handlers over one :class:`~easyphoto.service.Service`."""

    def __init__(self, service: Any):
        self.service = service

    def refresh(self, values: dict) -> dict:
        users = self.service.users()
        with_face = [u for u in users if u.get("face_id")]
        ids = [u["user_id"] for u in users]
        current = values.get("selected")
        current = current if current in ids else (ids[0] if ids else None)
        return {"ids": [u["user_id"] for u in with_face],
                "gallery": [(u["face_id"], render.user_caption(u)) for u in with_face],
                "table": render.users_table(users),
                "selected": gr.update(choices=ids, value=current)}

    def select(self, values: dict) -> dict:
        index = getattr(values.get("event"), "index", None)
        ids = values.get("ids") or []
        if not isinstance(index, int) or not 0 <= index < len(ids):
            return {}
        return {"selected": ids[index], "confirm": False}

    @staticmethod
    def _chosen(values: dict) -> str:
        user_id = values.get("selected")
        if not user_id:
            raise InvalidRequest("Choose a user id first (click its thumbnail or pick it in the "
                                 "list).")
        return str(user_id)

    def delete(self, values: dict) -> dict:
        user_id = self._chosen(values)
        if not values.get("confirm"):
            return {"message": render.message(
                f"Tick “Yes, delete” to confirm deleting “{user_id}” and all its files.",
                ok=None)}
        self.service.delete_user(user_id)
        return {**self.refresh({}), "confirm": False,
                "message": render.message(f"Deleted “{user_id}”.", ok=True)}

    def export(self, values: dict) -> dict:
        user_id = self._chosen(values)
        path = self.service.export_user(user_id, bool(values.get("include_photos")))
        return {"export_file": str(path),
                "message": render.message(f"Exported “{user_id}”: download {path.name} below.",
                                          ok=True)}

    def import_archive(self, values: dict) -> dict:
        path = compat.file_path(values.get("archive"))
        if not path:
            raise InvalidRequest("Choose an EasyPhoto user archive (.zip) to import first.")
        new_id = (values.get("import_id") or "").strip() or None
        user = self.service.import_user(path, new_id, bool(values.get("import_overwrite")))
        return {**self.refresh({"selected": user["user_id"]}), "archive": None,
                "message": render.message(f"Imported “{user['user_id']}”.", ok=True)}


class UsersTab:
    """Builds the tab inside the current Blocks context; :meth:`wire` connects its events."""

    def __init__(self, service: Any, handlers: UsersHandlers):
        self.service, self.handlers = service, handlers
        self.c: dict[str, Any] = {}

    def build(self) -> UsersTab:
        c = self.c
        c["ids"] = gr.State([])
        with gr.Row(elem_id=_id("main")):
            with gr.Column(scale=3, elem_id=_id("list_column")):
                c["refresh"] = gr.Button("Refresh", size="sm", elem_id=_id("refresh"))
                c["gallery"] = gr.Gallery(label="User ids (face_id image)", columns=4,
                                          height=260, object_fit="contain", allow_preview=False,
                                          elem_id=_id("gallery"))
                c["table"] = gr.HTML(render.users_table([]), elem_id=_id("table"))
            with gr.Column(scale=2, elem_id=_id("actions_column")):
                self._actions()
        return self

    def _actions(self) -> None:
        c = self.c
        c["selected"] = gr.Dropdown(choices=[], value=None, label="User id",
                                    elem_id=_id("selected"))
        c["message"] = gr.HTML("", elem_id=_id("message"))
        with gr.Accordion("Delete", open=True, elem_id=_id("delete_section")):
            c["confirm"] = gr.Checkbox(value=False, label="Yes, delete this user id and its files",
                                       elem_id=_id("confirm"))
            c["delete"] = gr.Button("Delete", variant="stop", elem_id=_id("delete"))
        with gr.Accordion("Export", open=True, elem_id=_id("export_section")):
            c["include_photos"] = gr.Checkbox(value=False, label="Include the training photos",
                                              elem_id=_id("include_photos"))
            c["export"] = gr.Button("Export", elem_id=_id("export"))
            c["export_file"] = gr.File(label="Archive", interactive=False,
                                       elem_id=_id("export_file"))
        with gr.Accordion("Import", open=True, elem_id=_id("import_section")):
            c["archive"] = gr.File(label="EasyPhoto user archive (.zip)", file_types=[".zip"],
                                   elem_id=_id("archive"))
            c["import_id"] = gr.Textbox(label="Import as (optional)", max_lines=1,
                                        placeholder="empty = the id stored in the archive",
                                        elem_id=_id("import_id"))
            c["import_overwrite"] = gr.Checkbox(value=False, label="Replace an existing id",
                                                elem_id=_id("import_overwrite"))
            c["import"] = gr.Button("Import", elem_id=_id("import"))

    def slots(self, *names: str) -> Slots:
        return Slots({name: self.c[name] for name in names})

    def wire(self, blocks: gr.Blocks, main_tab: Any) -> None:
        h, c = self.handlers, self.c
        listing = self.slots("ids", "gallery", "table", "selected")
        for trigger in (c["refresh"].click, main_tab.select, blocks.load):
            connect(trigger, h.refresh, self.slots("selected"), listing, progress="hidden")
        connect(c["gallery"].select, h.select, self.slots("ids"),
                self.slots("selected", "confirm"), with_event=True, progress="hidden")
        connect(c["delete"].click, h.delete, self.slots("selected", "confirm"),
                listing + self.slots("confirm", "message"))
        connect(c["export"].click, h.export, self.slots("selected", "include_photos"),
                self.slots("export_file", "message"))
        connect(c["import"].click, h.import_archive,
                self.slots("archive", "import_id", "import_overwrite"),
                listing + self.slots("archive", "message"))
