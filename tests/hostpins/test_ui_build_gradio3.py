"""The UI under the WebUI's gradio 3.41.2: it builds, its wiring matches, and gradio 3's own
request path (preprocess → handler → postprocess) runs the events that need no face models.

Proves: ``build_ui`` builds the Train / Inference / Users sub-tabs under gradio 3.41.2 with a
real Service; every event's function takes exactly its inputs and returns exactly its outputs
(the same check as tests/ui, shared helper); elem_ids are unique and ``easyphoto_``-prefixed;
building starts no thread and writes no file; through ``Blocks.process_api`` — the user id
verdict, the face dropdowns' visibility (``gr.update``), a gallery select (``SelectData``),
an uploaded file (gradio 3's tempfile wrapper) and Start/Generate request errors all come back
as values and messages, never as exceptions.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import gradio as gr
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ui"))

from ui_helpers import elem_id_problems, tab_labels, wiring_problems

from easyphoto.service import Service, ServiceConfig
from easyphoto.ui import build_ui


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ui-data")
    service = Service(ServiceConfig(data_dir=data_dir, base_model="tiny-random",
                                    face_backend="lite"))
    files_before = sorted(data_dir.rglob("*"))
    threads_before = set(threading.enumerate())
    blocks = build_ui(service)
    side_effects = (set(threading.enumerate()) - threads_before,
                    sorted(data_dir.rglob("*")) != files_before)
    blocks.queue()  # as the WebUI does: gradio 3 runs generator handlers only through it
    yield service, blocks, side_effects
    service.close()


def _index(blocks, elem_id: str, event: str, name: str = "") -> int:
    found = [i for i, (fn, dep) in enumerate(zip(blocks.fns, blocks.dependencies))
             if dep["trigger"] == event and getattr(fn.fn, "easyphoto_inputs", None) is not None
             and (not name or fn.fn.__qualname__.endswith(name))
             and any(blocks.blocks[t].elem_id == elem_id for t in dep["targets"])]
    assert len(found) == 1, (elem_id, event, found)
    return found[0]


def _process(blocks, elem_id: str, event: str, event_data=None, **values) -> dict:
    """Run one event through gradio 3's process_api, inputs as the browser sends them."""
    index = _index(blocks, elem_id, event)
    fn = blocks.fns[index]
    names = fn.fn.easyphoto_inputs
    inputs, state = [], {}
    for name, component in zip(names, fn.inputs):
        value = values.get(name, component.value)
        inputs.append(value)
        if getattr(component, "stateful", False):
            state[component._id] = value
    output = asyncio.run(blocks.process_api(index, inputs, state, iterators={},
                                            event_data=event_data))
    shown = dict(zip(fn.fn.easyphoto_outputs, output["data"]))
    for name, component in zip(fn.fn.easyphoto_outputs, fn.outputs):
        if getattr(component, "stateful", False):  # gradio 3 keeps these server-side
            shown[name] = state.get(component._id)
    return shown


def test_builds_under_gradio_3(built):
    _, blocks, (new_threads, wrote_files) = built
    assert gr.__version__ == "3.41.2"
    assert isinstance(blocks, gr.Blocks)
    assert tab_labels(blocks) == ["Train", "Inference", "Users"]
    assert not new_threads and not wrote_files


def test_wiring_and_elem_ids(built):
    _, blocks, _ = built
    assert wiring_problems(blocks) == []
    assert elem_id_problems(blocks) == []
    assert len(blocks.fns) >= 30


def test_user_id_verdict(built):
    _, blocks, _ = built
    out = _process(blocks, "easyphoto_train_user_id", "change", user_id="al ice")
    assert "easyphoto-error" in out["user_id_msg"] and "contains ' '" in out["user_id_msg"]
    out = _process(blocks, "easyphoto_train_user_id", "change", user_id="alice")
    assert "is free" in out["user_id_msg"]


def test_updates_and_select_data(built):
    _, blocks, _ = built
    out = _process(blocks, "easyphoto_infer_people", "change", people=2)
    assert [out[f"user_{n}"]["visible"] for n in (1, 2, 3)] == [True, True, False]
    select = gr.SelectData(None, {"index": 1, "value": None})
    out = _process(blocks, "easyphoto_train_gallery", "select", event_data=select,
                   photos=["a.jpg", "b.jpg"])
    assert out["selected"] == 1 and "Photo 2 selected" in out["photo_message"]


def test_uploaded_file_reaches_the_service(built, tmp_path):
    _, blocks, _ = built
    fake = tmp_path / "notes.zip"
    fake.write_text("not a zip")
    upload = {"name": str(fake), "data": None, "is_file": True}  # how 3.41's browser sends it
    out = _process(blocks, "easyphoto_users_import", "click", archive=upload)
    assert "is not a zip archive" in out["message"]


def test_request_errors_are_messages(built):
    _, blocks, _ = built
    out = _process(blocks, "easyphoto_train_start", "click", photos=[], user_id="alice")
    assert "Add photos first" in out["message"]
    out = _process(blocks, "easyphoto_infer_generate", "click", user_1="none", selected=None)
    assert "Pick a template in the gallery first" in out["message"]
