"""Helpers of the UI tests; they work under gradio 3.41 (tests/hostpins) and 5.x (tests/ui).

* :func:`wiring_problems` walks every event of a built Blocks and compares the function gradio
  will call with the event's inputs and outputs (count, names against elem_ids).
* :func:`elem_id_problems` checks that elem_ids are unique and ``easyphoto_``-prefixed and that
  every input has one.
* :func:`run_event` calls an event's function the way gradio does — positional values in the
  order of its inputs, the components' current values where a test gives none — and returns
  the outputs by slot name (a list of them for a generator).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import gradio as gr

from easyphoto.ui.compat import Dependency, dependencies

#: The photos, user id and quick settings of the one training the UI tests share.
PHOTOS = ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "biden.jpg")
USER_ID = "obama"
#: The tiny-random preset's quick settings (see tests/train/test_runner.py), typed into the UI
#: the way a user would: "max train steps" is an optional number, so it is a text box.
QUICK_TRAINING = MappingProxyType({"max_train_steps": "3", "validation_steps": 2,
                                   "skin_retouch": False})

LAYOUTS = ("Blocks", "Row", "Column", "Tabs", "Tab", "TabItem", "Accordion", "Form", "Group",
           "Box")


def _label(dep: Dependency) -> str:
    name = getattr(dep.fn, "__name__", dep.fn)
    return f"{name} on {', '.join(f'{t}.{e}' for t, e in dep.triggers)}"


def _positional(fn: Any) -> tuple[list[inspect.Parameter], bool]:
    params = list(inspect.signature(fn).parameters.values())
    variadic = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)
    return [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)], variadic


def _one_problem(dep: Dependency) -> list[str]:
    label = _label(dep)
    names_in = getattr(dep.fn, "easyphoto_inputs", None)
    if names_in is None:  # gradio's own "cancel these events" helper: no data flows
        return [] if not dep.inputs and not dep.outputs else [
            f"{label}: not wired through easyphoto.ui.slots.connect"]
    positional, variadic = _positional(dep.fn)
    events = [p for p in positional if p.annotation is gr.SelectData]
    problems = []
    if variadic:
        problems.append(f"{label}: takes *args/**kwargs")
    if len(positional) - len(events) != len(dep.inputs):
        problems.append(f"{label}: {len(positional) - len(events)} parameters for "
                        f"{len(dep.inputs)} inputs")
    if len(dep.fn.easyphoto_outputs) != len(dep.outputs):
        problems.append(f"{label}: returns {len(dep.fn.easyphoto_outputs)} outputs for "
                        f"{len(dep.outputs)} output components")
    pairs = list(zip(names_in, dep.inputs)) + list(zip(dep.fn.easyphoto_outputs, dep.outputs))
    for name, component in pairs:
        elem_id = getattr(component, "elem_id", None)
        if elem_id and not elem_id.endswith("_" + name):
            problems.append(f"{label}: slot {name!r} is wired to {elem_id!r}")
    return problems


def wiring_problems(blocks: gr.Blocks) -> list[str]:
    """Every mismatch between an event's function and its inputs/outputs (empty = none)."""
    problems = []
    for dep in dependencies(blocks):
        problems.extend(_one_problem(dep))
    return problems


def components(blocks: gr.Blocks) -> list[Any]:
    return [b for b in blocks.blocks.values() if type(b).__name__ not in LAYOUTS]


def elem_id_problems(blocks: gr.Blocks) -> list[str]:
    problems, seen = [], {}
    for block in blocks.blocks.values():
        elem_id = getattr(block, "elem_id", None)
        if not elem_id:
            continue
        if not elem_id.startswith("easyphoto_"):
            problems.append(f"{type(block).__name__} elem_id {elem_id!r} lacks easyphoto_")
        if elem_id in seen:
            problems.append(f"elem_id {elem_id!r} used twice")
        seen[elem_id] = block
    for dep in dependencies(blocks):
        for component in dep.inputs:
            if type(component).__name__ != "State" and not getattr(component, "elem_id", None):
                problems.append(f"{_label(dep)}: an input {type(component).__name__} has no "
                                "elem_id")
    return problems


def find_event(blocks: gr.Blocks, trigger: str, event: str, fn_name: str = "") -> Dependency:
    found = [d for d in dependencies(blocks) if (trigger, event) in d.triggers
             and getattr(d.fn, "easyphoto_inputs", None) is not None
             and (not fn_name or fn_name in (d.fn.__name__, d.fn.__qualname__))]
    assert len(found) == 1, f"{len(found)} events {fn_name or ''} on {trigger}.{event}"
    return found[0]


def initial_value(component: Any) -> Any:
    return copy.deepcopy(getattr(component, "value", None))


def outputs_by_name(dep: Dependency, result: Any) -> dict:
    """The outputs the call set, by slot name (``gr.update()`` = "unchanged" is left out)."""
    names = dep.fn.easyphoto_outputs
    values = [result] if len(names) == 1 else list(result or [])
    assert len(values) == len(names), f"{len(values)} values for outputs {names}"
    return {name: value for name, value in zip(names, values) if value != {"__type__": "update"}}


def _call(blocks: gr.Blocks, trigger: str, event: str, fn_name: str,
          values: dict) -> tuple[Dependency, Any]:
    dep = find_event(blocks, trigger, event, fn_name)
    names = dep.fn.easyphoto_inputs
    unknown = set(values) - set(names)
    assert not unknown, f"{dep.fn.__name__} has no input(s) {unknown}; it has {names}"
    args = [values[name] if name in values else initial_value(component)
            for name, component in zip(names, dep.inputs)]
    if len(names) > len(dep.inputs):  # the select event's data
        args.append(values.get(names[-1]))
    return dep, dep.fn(*args)


def run_event(blocks: gr.Blocks, trigger: str, event: str, fn_name: str = "", /,
              **values: Any) -> Any:
    """Call the event's function as gradio would; outputs by slot name (list for generators).

    ``values`` give inputs by slot name (``event=`` for a select event's data); the others are
    the components' current values. ``fn_name`` (``__name__`` or ``__qualname__``) picks one
    of several events on the same trigger.
    """
    dep, result = _call(blocks, trigger, event, fn_name, values)
    if inspect.isgenerator(result):
        return [outputs_by_name(dep, item) for item in result]
    return outputs_by_name(dep, result)


def stream_event(blocks: gr.Blocks, trigger: str, event: str, fn_name: str = "", /,
                 **values: Any) -> Iterator[dict]:
    """Like :func:`run_event` for a generator, one output dict at a time."""
    dep, result = _call(blocks, trigger, event, fn_name, values)
    for item in result:
        yield outputs_by_name(dep, item)


def is_update(value: Any) -> bool:
    """A ``gr.update(...)`` (3.41: a dict with ``__type__``; 5.x: the same dict)."""
    return isinstance(value, dict) and value.get("__type__") == "update"


def tab_labels(blocks: gr.Blocks, tabs_elem_id: str = "easyphoto_tabs") -> list[str]:
    """Labels of the tabs directly inside the Tabs ``tabs_elem_id``, in order."""
    return [b.label for b in blocks.blocks.values() if type(b).__name__ in ("Tab", "TabItem")
            and getattr(b.parent, "elem_id", None) == tabs_elem_id]
