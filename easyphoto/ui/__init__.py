"""EasyPhoto's gradio UI: one module set for the WebUI (gradio 3.41), Forge (4.40) and the
standalone app (5.x).

:func:`build_ui` returns a ``gr.Blocks`` with three sub-tabs — Train, Inference, Users — over
one :class:`~easyphoto.service.Service`; the WebUI adapter wraps it in its "EasyPhoto" tab, the
standalone app mounts it at "/". Building has no side effects: no threads, downloads, model
loads or file copies; lists (user ids, templates, the latest jobs) are filled when the page
loads and when a tab is opened. Every input has a stable ``easyphoto_*`` elem_id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from .follow import POLL_S
from .infer_handlers import InferHandlers
from .infer_tab import InferTab
from .train_handlers import TrainHandlers
from .train_tab import TrainTab
from .users_tab import UsersHandlers, UsersTab

__all__ = ("STYLE_PATH", "allowed_paths", "build_ui")

#: The extension's stylesheet (the WebUI injects it itself; the standalone app gets it here).
STYLE_PATH = Path(__file__).resolve().parents[2] / "style.css"


def _style() -> str:
    try:
        return STYLE_PATH.read_text(encoding="utf-8")
    except OSError:  # an installed wheel without the checkout's stylesheet: plain looks
        return ""


def build_ui(service: Any, *, poll_s: float = POLL_S) -> gr.Blocks:
    """The EasyPhoto Blocks over ``service`` (``poll_s``: seconds between job polls)."""
    with gr.Blocks(analytics_enabled=False, title="EasyPhoto", css=_style()) as blocks:
        with gr.Column(elem_id="easyphoto_root"), gr.Tabs(elem_id="easyphoto_tabs"):
            with gr.Tab("Train", id="easyphoto_train", elem_id="easyphoto_tab_train"):
                train = TrainTab(service, TrainHandlers(service, poll_s)).build()
            with gr.Tab("Inference", id="easyphoto_infer",
                        elem_id="easyphoto_tab_infer") as infer_tab:
                infer = InferTab(service, InferHandlers(service, poll_s)).build()
            with gr.Tab("Users", id="easyphoto_users", elem_id="easyphoto_tab_users") as users_tab:
                users = UsersTab(service, UsersHandlers(service)).build()
        train.wire(blocks)
        infer.wire(blocks, infer_tab)
        users.wire(blocks, users_tab)
    return blocks


def allowed_paths(service: Any) -> list[str]:
    """Folders the UI shows files from, for gradio's ``allowed_paths`` (gradio ≥ 4 serves
    only files under the working folder, the temp folder and these): the data folder (user
    thumbnails, validation renders, results, exports) and the template gallery's folders."""
    folders = {Path(service.config.data_dir).resolve()}
    folders.update(item.path.resolve().parent for item in service.gallery.items())
    return sorted(str(folder) for folder in folders)
