"""Named inputs and outputs: handlers take and return dicts keyed by name, never positions.

A :class:`Slots` is an ordered ``name → component`` map. :func:`connect` wires a handler
``handler(values: dict) -> dict`` (or a generator of dicts) to an event: the function gradio
calls takes one positional parameter per input slot, named after it (so its signature can be
checked against the event's inputs, see :mod:`tests.ui`), and turns the handler's dict back
into the output list (outputs the dict leaves out stay unchanged).

A user-facing error (:class:`~easyphoto.errors.EasyPhotoError`) raised by a handler is shown
in the event's ``message`` output (else its first ``*_message`` output) when it has one;
anything else is logged and shown as an "unexpected error" sentence there.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gradio as gr

from ..errors import EasyPhotoError
from . import compat, render

log = logging.getLogger(__name__)

#: The input slot name under which a select event's ``gr.SelectData`` arrives.
EVENT = "event"


class Slots:
    """An ordered, read-only ``name → component`` map."""

    def __init__(self, items: Mapping[str, Any] | None = None, **more: Any):
        merged = dict(items or {})
        for name, component in more.items():
            if name in merged:
                raise ValueError(f"slot {name!r} given twice")
            merged[name] = component
        for name in merged:
            if not name.isidentifier() or name == EVENT:
                raise ValueError(f"slot name {name!r} must be an identifier other than {EVENT!r}")
        self._items = merged

    def __add__(self, other: Slots) -> Slots:
        return Slots(self._items, **other._items)

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    @property
    def names(self) -> list[str]:
        return list(self._items)

    @property
    def components(self) -> list[Any]:
        return list(self._items.values())

    def pick(self, names: Iterable[str]) -> Slots:
        return Slots({name: self._items[name] for name in names})

    def pack(self, values: Mapping[str, Any]) -> Any:
        """The output value(s) gradio expects: one value, a list, or ``None`` for no outputs."""
        unknown = sorted(set(values) - set(self._items))
        if unknown:
            raise KeyError(f"handler returned unknown output(s): {', '.join(unknown)}")
        packed = [values[name] if name in values else gr.update() for name in self._items]
        if not packed:
            return None
        return packed[0] if len(packed) == 1 else packed


def _failure(outputs: Slots, error: Exception) -> Any:
    """The outputs showing ``error`` in the message slot (a gr.Error when there is none)."""
    if isinstance(error, EasyPhotoError):
        text = str(error)
    else:
        log.exception("EasyPhoto UI handler failed")
        text = f"Unexpected error ({type(error).__name__}: {error}). The log has the details."
    target = "message" if "message" in outputs else next(
        (name for name in outputs.names if name.endswith("_message")), None)
    if target is None:
        raise gr.Error(text) from error
    return outputs.pack({target: render.message(text, ok=False)})


def _signature(inputs: Slots, with_event: bool) -> inspect.Signature:
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(name, kind) for name in inputs.names]
    if with_event:
        params.append(inspect.Parameter(EVENT, kind, annotation=gr.SelectData))
    return inspect.Signature(params)


def make_fn(handler: Callable, inputs: Slots, outputs: Slots, with_event: bool = False) -> Callable:
    """The positional function gradio calls for ``handler`` (see the module doc)."""
    names = inputs.names + ([EVENT] if with_event else [])

    def values_of(args: tuple) -> dict:
        if len(args) != len(names):
            raise TypeError(f"{handler.__name__} takes {len(names)} values, got {len(args)}")
        return dict(zip(names, args))

    if inspect.isgeneratorfunction(handler):
        def fn(*args: Any) -> Any:
            try:
                for result in handler(values_of(args)):
                    yield outputs.pack(result)
            except Exception as error:  # noqa: BLE001 — shown in the UI, see _failure
                yield _failure(outputs, error)
    else:
        def fn(*args: Any) -> Any:
            try:
                return outputs.pack(handler(values_of(args)))
            except Exception as error:  # noqa: BLE001 — shown in the UI, see _failure
                return _failure(outputs, error)

    functools.update_wrapper(fn, handler, assigned=("__module__", "__name__", "__qualname__",
                                                    "__doc__"), updated=())
    fn.__signature__ = _signature(inputs, with_event)
    fn.__annotations__ = {EVENT: gr.SelectData} if with_event else {}
    fn.easyphoto_inputs = tuple(names)
    fn.easyphoto_outputs = tuple(outputs.names)
    return fn


def connect(listener: Callable, handler: Callable, inputs: Slots, outputs: Slots, *,
            with_event: bool = False, progress: str = "minimal", polls: bool = False,
            cancels: list | None = None) -> Any:
    """Wire ``handler`` to ``listener`` (e.g. ``button.click``); returns the dependency.

    ``cancels``: dependencies (e.g. a page-load follower) to stop when this event starts.
    """
    fn = make_fn(handler, inputs, outputs, with_event)
    options = compat.event_options(progress=progress, polls=polls)
    if cancels:
        options["cancels"] = list(cancels)
    return listener(fn, inputs=inputs.components, outputs=outputs.components, **options)
