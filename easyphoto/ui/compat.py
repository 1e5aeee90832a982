"""The few gradio differences the UI meets: 3.41 (WebUI), 4.40 (Forge) and 5.x (standalone).

Everything else in :mod:`easyphoto.ui` uses only what all three accept: ``gr.Blocks``,
``Tabs``/``Tab``, ``Row``/``Column``/``Accordion`` (``elem_id`` only), plain components with
``label``/``info``/``elem_id``/``elem_classes``/``visible``, ``gr.update``, ``gr.State``,
``gr.SelectData`` and the event listeners' ``fn, inputs, outputs, show_progress, api_name``.
No ``gr.Box``, no ``tool=``, no ``source(s)=``, no component-specific ``update`` classes and
no client-side JavaScript in event listeners (``_js`` in 3.x, ``js`` from 4.0).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

GRADIO_VERSION = tuple(int(part) for part in gr.__version__.split(".")[:2] if part.isdigit())
GRADIO_MAJOR = GRADIO_VERSION[0]


def event_options(*, progress: str = "minimal", polls: bool = False) -> dict:
    """Keyword arguments for an event listener, valid in every supported gradio.

    ``progress`` is the busy indicator ("full", "minimal", "hidden"; 3.41 accepts the same
    strings). Gradio < 5 gets ``api_name=False``: the UI's events are no API endpoints (the
    HTTP API is ``easyphoto.api``). ``polls=True`` marks a handler that follows a job for minutes: from gradio 4 each
    event runs one call at a time by default, so a reloaded page would wait behind the poller
    of the page it replaced; such events get no concurrency limit (3.x has no per-event limit).
    """
    options: dict[str, Any] = {"show_progress": progress}
    if GRADIO_MAJOR < 5:  # no API endpoint for UI events (5.x deprecates the switch: default)
        options["api_name"] = False
    if polls and GRADIO_MAJOR >= 4:
        options["concurrency_limit"] = None
    return options


def file_path(value: Any) -> str | None:
    """The local path of one uploaded file, whatever shape this gradio hands it over in.

    3.41 gives a tempfile wrapper with ``.name``; 4.x/5.x a path string (``type="filepath"``)
    or a ``FileData``/dict with ``path``; ``None`` when nothing was uploaded.
    """
    if value is None or value == "":
        return None
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, dict):
        found = value.get("path") or value.get("name")
        return str(found) if found else None
    for attribute in ("path", "name"):
        found = getattr(value, attribute, None)
        if isinstance(found, str) and found:
            return found
    raise TypeError(f"cannot read the path of an uploaded {type(value).__name__}")


def file_paths(value: Any) -> list[str]:
    """Paths of a ``file_count="multiple"`` upload (``[]`` when empty)."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    return [path for path in (file_path(item) for item in items) if path]


@dataclass(frozen=True)
class Dependency:
    """One wired event, the same in every gradio: handler, inputs, outputs, triggers.

    ``triggers`` lists ``(elem_id or block id, event name)``; a page-load event names the
    Blocks itself.
    """

    fn: Callable | None
    inputs: tuple
    outputs: tuple
    triggers: tuple


def _target_name(blocks: gr.Blocks, block_id: Any) -> str:
    block = blocks.blocks.get(block_id)
    if block is None:
        return "page" if block_id in (None, getattr(blocks, "_id", None)) else str(block_id)
    if block is blocks:
        return "page"
    return getattr(block, "elem_id", None) or str(block_id)


def dependencies(blocks: gr.Blocks) -> list[Dependency]:
    """Every event of ``blocks`` (3.41 keeps them in two parallel lists, 4.x/5.x in one map)."""
    if isinstance(blocks.fns, dict):  # gradio >= 4
        found = []
        for block_fn in blocks.fns.values():
            triggers = tuple((_target_name(blocks, target), event)
                             for target, event in block_fn.targets)
            found.append(Dependency(block_fn.fn, tuple(block_fn.inputs),
                                    tuple(block_fn.outputs), triggers))
        return found
    found = []
    for block_fn, config in zip(blocks.fns, blocks.dependencies):
        targets = config.get("targets") or [None]
        triggers = tuple((_target_name(blocks, target), config["trigger"]) for target in targets)
        found.append(Dependency(block_fn.fn, tuple(block_fn.inputs), tuple(block_fn.outputs),
                                triggers))
    return found
