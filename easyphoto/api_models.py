"""Pydantic request models generated from the request dataclasses (pydantic 1 and 2).

``TrainRequest`` / ``InferRequest`` are the single source of truth: every field's type,
default, help text, range and choices become the model's field (so the OpenAPI docs show them),
and unknown fields are rejected. After pydantic has parsed a body the dataclass validates it
again (``from_dict``), which gives the same messages the UI and the CLI give.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, List, Literal, Optional

import pydantic
from pydantic import BaseModel, Field, create_model

from .infer.prompts import TemplateChoices
from .params import InferRequest, TrainRequest

PYDANTIC_2 = pydantic.VERSION.startswith("2")

if PYDANTIC_2:
    class Strict(BaseModel):
        """Rejects unknown fields (a misspelt parameter must not be ignored silently)."""

        model_config = pydantic.ConfigDict(extra="forbid", protected_namespaces=())
else:
    class Strict(BaseModel):  # type: ignore[no-redef]
        """Rejects unknown fields (a misspelt parameter must not be ignored silently)."""

        class Config:
            extra = "forbid"


def _hint(hint: Any, meta: dict) -> Any:
    """The field's type, with its choices as a Literal (an enum in the OpenAPI docs)."""
    choices = meta.get("choices")
    if choices:
        literal = Literal.__getitem__(tuple(choices))
        args = typing.get_args(hint)
        return Optional[literal] if type(None) in args else literal
    return hint


def _field(default: Any, hint: Any, meta: dict) -> Any:
    kwargs: dict = {"description": meta.get("help", "")}
    base = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    if base[0] in (int, float):
        if meta.get("min") is not None:
            kwargs["ge"] = meta["min"]
        if meta.get("max") is not None:
            kwargs["le"] = meta["max"]
    elif base[0] is str and meta.get("max") is not None:
        kwargs["max_length"] = int(meta["max"])
    return Field(default, **kwargs)


def fields_of(cls: type, skip: tuple = ()) -> dict:
    """``{name: (type, Field)}`` for every field of the dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    fields = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = (f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else f.default)
        fields[f.name] = (_hint(hints[f.name], dict(f.metadata)),
                          _field(default, hints[f.name], dict(f.metadata)))
    return fields


def dump(model: BaseModel, exclude: tuple = ()) -> dict:
    """The fields the client set (pydantic 1 and 2)."""
    data = model.model_dump(exclude_unset=True) if PYDANTIC_2 else model.dict(exclude_unset=True)
    return {k: v for k, v in data.items() if k not in exclude}


TemplateChoicesModel = create_model("TemplateChoices", __base__=Strict,
                                    **fields_of(TemplateChoices))

TrainBody = create_model(
    "TrainBody", __base__=Strict,
    photos=(List[str], Field(..., description="5-20 photos of one person, base64 (a data: "
                                              "URL prefix is accepted)")),
    **fields_of(TrainRequest))

InferBody = create_model(
    "InferBody", __base__=Strict,
    templates=(List[str], Field([], description="template images, base64")),
    gallery=(List[str], Field([], description="names of gallery templates (GET /templates)")),
    text=(Optional[TemplateChoicesModel], Field(None, description="make the template from text "
                                                                  "(SDXL, SPEC 2.9)")),
    wait=(bool, Field(False, description="answer with the finished result (small requests: at "
                                         "most 4 templates; waits up to 10 minutes)")),
    **fields_of(InferRequest))

PhotoCheckBody = create_model(
    "PhotoCheckBody", __base__=Strict,
    photos=(List[str], Field(..., description="photos, base64")),
    max_photos=(int, Field(15, ge=1, le=40, description="photos kept at most")))
