"""Building the UI (gradio 5): tabs, wiring, elem_ids, parameters from the dataclasses only,
no side effects at build time.

Proves: the Blocks has the Train / Inference / Users sub-tabs and no top-level "Train" clash
(the host wraps it); every event's function takes exactly its inputs and returns exactly its
outputs, each slot wired to the component of the same name; elem_ids are unique and
``easyphoto_``-prefixed; every TrainRequest / InferRequest field has one control with the
dataclass's default, advanced ones inside the "Advanced" accordion; the default UI values give
back the dataclass defaults; building starts no thread, writes no file, opens no socket.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import warnings
from types import MappingProxyType

import gradio as gr
import pytest
from ui_helpers import components, elem_id_problems, tab_labels, wiring_problems

from easyphoto.params import InferRequest, TrainRequest
from easyphoto.ui import build_ui, fields
from easyphoto.ui.compat import dependencies, event_options, file_path, file_paths

SPECIAL = MappingProxyType({TrainRequest: ("train", frozenset({"user_id"})),
                            InferRequest: ("infer", frozenset({"user_ids"}))})


def test_tabs_and_wiring(ui):
    assert tab_labels(ui.blocks) == ["Train", "Inference", "Users"]
    assert wiring_problems(ui.blocks) == []
    assert elem_id_problems(ui.blocks) == []
    wired = [d for d in dependencies(ui.blocks)
             if getattr(d.fn, "easyphoto_inputs", None) is not None]
    assert len(wired) >= 30  # every button, upload, select and page load
    triggers = {t for d in wired for t in d.triggers}
    for needed in [("easyphoto_train_start", "click"), ("easyphoto_train_cancel", "click"),
                   ("easyphoto_train_upload", "upload"), ("easyphoto_infer_generate", "click"),
                   ("easyphoto_users_delete", "click"), ("page", "load")]:
        assert needed in triggers


def test_wiring_check_catches_mismatches(ui):
    """The check itself: a hand-wired function, one input too many, a slot on the wrong
    component are each reported."""
    from easyphoto.ui.slots import Slots, make_fn

    def echo(values):
        return {"a": values["a"]}

    with gr.Blocks() as blocks, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gradio itself warns about the count
        a, b = gr.Textbox(elem_id="easyphoto_x_a"), gr.Textbox(elem_id="easyphoto_x_b")
        button = gr.Button(elem_id="easyphoto_x_go")
        button.click(lambda x: x, inputs=[a], outputs=[a])
        button.click(make_fn(echo, Slots(a=a), Slots(a=a)), inputs=[a, b], outputs=[a])
        button.click(make_fn(echo, Slots(a=b), Slots(a=a)), inputs=[b], outputs=[a])
    problems = wiring_problems(blocks)
    assert len(problems) == 3, problems
    assert "not wired through" in problems[0]
    assert "1 parameters for 2 inputs" in problems[1]
    assert "slot 'a' is wired to 'easyphoto_x_b'" in problems[2]


def _controls(blocks, prefix):
    return {c.elem_id[len(f"easyphoto_{prefix}_"):]: c for c in components(blocks)
            if (c.elem_id or "").startswith(f"easyphoto_{prefix}_")}


def _in_accordion(component) -> bool:
    parent = getattr(component, "parent", None)
    while parent is not None:
        if type(parent).__name__ == "Accordion":
            return parent.label == "Advanced"
        parent = getattr(parent, "parent", None)
    return False


@pytest.mark.parametrize("request_cls", [TrainRequest, InferRequest])
def test_every_field_has_one_control_with_its_default(ui, request_cls):
    prefix, special = SPECIAL[request_cls]
    controls = _controls(ui.blocks, prefix)
    for info in request_cls.fields_info():
        if info["name"] in special:
            continue
        control = controls[info["name"]]
        assert control.label == fields.label_of(info["name"])
        assert _in_accordion(control) == (info["group"] == "advanced"), info["name"]
        expected = info["default"]
        if info.get("optional"):
            expected = "" if expected is None else str(expected)
        assert control.value == expected, info["name"]
        if isinstance(control, gr.Slider):
            steps = (info["default"] - info["min"]) / control.step
            assert abs(steps - round(steps)) < 1e-9, f"{info['name']}: default off the slider grid"
        if info.get("choices"):
            assert isinstance(control, gr.Dropdown)


@pytest.mark.parametrize("request_cls", [TrainRequest, InferRequest])
def test_default_ui_values_give_the_dataclass_defaults(ui, request_cls):
    prefix, _ = SPECIAL[request_cls]
    controls = _controls(ui.blocks, prefix)
    values = {name: c.value for name, c in controls.items()}
    fixed = {"user_id": "alice"} if request_cls is TrainRequest else {"user_ids": ["alice"]}
    assert fields.collect(request_cls, values, **fixed) == request_cls(**fixed)


def test_field_values_are_converted_with_readable_errors():
    request = fields.collect(TrainRequest, {"rank": " 16 ", "resolution": "", "seed": 7.0,
                                            "learning_rate": 0.0002, "base_model": " x "},
                             user_id="a")
    assert (request.rank, request.resolution, request.seed, request.base_model) == (16, None, 7, "x")
    assert isinstance(request.seed, int)
    with pytest.raises(ValueError, match="Rank: 'sixteen' is not a number"):
        fields.collect(TrainRequest, {"rank": "sixteen"}, user_id="a")
    with pytest.raises(ValueError, match="Steps per photo needs a value"):
        fields.collect(TrainRequest, {"steps_per_photo": ""}, user_id="a")


def test_uploaded_file_shapes_of_every_gradio(tmp_path):
    class TempFile:  # gradio 3.41 hands over tempfile wrappers
        name = "/tmp/a.jpg"

    assert file_paths([TempFile(), "/tmp/b.jpg", {"path": "/tmp/c.jpg"}, None]) == [
        "/tmp/a.jpg", "/tmp/b.jpg", "/tmp/c.jpg"]
    assert file_paths(None) == [] and file_path("") is None
    assert file_path(tmp_path) == str(tmp_path)
    assert event_options(polls=True)["concurrency_limit"] is None  # gradio 5 here


def test_building_has_no_side_effects(tmp_path, monkeypatch):
    from easyphoto.service import Service, ServiceConfig

    service = Service(ServiceConfig(data_dir=tmp_path / "data", base_model="tiny-random",
                                    face_backend="lite"))
    try:
        monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
        files_before = sorted(p for p in tmp_path.rglob("*"))
        threads_before = set(threading.enumerate())

        def refuse(*args, **kwargs):
            raise AssertionError(f"network access while building the UI: {args!r}")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        blocks = build_ui(service)
        assert isinstance(blocks, gr.Blocks)
        assert set(threading.enumerate()) - threads_before == set()
        assert sorted(p for p in tmp_path.rglob("*")) == files_before
        assert service._engine is None and service._backends == {}  # no model loaded
    finally:
        service.close()


def test_request_fields_cover_both_dataclasses():
    """Guards the skip lists above: only the id fields are built by hand."""
    for request_cls, (_, special) in SPECIAL.items():
        names = {f.name for f in dataclasses.fields(request_cls)}
        assert special <= names


def test_handler_failures_become_messages():
    """A user-facing error shows its sentence, a bug an "unexpected error" line (logged), in
    the event's message output; an event without one raises gr.Error (a toast)."""
    from easyphoto.errors import UserNotFound
    from easyphoto.ui.slots import Slots, make_fn

    with gr.Blocks():
        box, message = gr.Textbox(), gr.HTML()

    def fails(values):
        raise values["box"]

    def fails_later(values):
        yield {"box": "started"}
        raise RuntimeError("disk on fire")

    fn = make_fn(fails, Slots(box=box), Slots(box=box, message=message))
    kept, shown = fn(UserNotFound("user id 'x' does not exist"))
    assert kept == {"__type__": "update"} and "user id 'x' does not exist" in shown
    assert "easyphoto-error" in shown
    _, shown = fn(RuntimeError("boom"))
    assert "Unexpected error (RuntimeError: boom)" in shown
    steps = list(make_fn(fails_later, Slots(box=box), Slots(box=box, message=message))("x"))
    assert steps[0][0] == "started" and "disk on fire" in steps[1][1]
    with pytest.raises(gr.Error, match="does not exist"):
        make_fn(fails, Slots(box=box), Slots(box=box))(UserNotFound("user id 'x' does not exist"))
