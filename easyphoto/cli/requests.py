"""CLI flags derived from the request dataclasses (``easyphoto.params``).

Field ``max_train_steps`` becomes ``--max-train-steps N``; a boolean ``random_flip`` becomes
``--random-flip`` / ``--no-random-flip``; a list field takes its flag once per item
(``--user-id A --user-id B``). Flags the user did not give are absent from the namespace
(``argparse.SUPPRESS``), so the dataclass default applies: no default is restated here.
"""

from __future__ import annotations

import argparse
from typing import Any, Iterable, Optional

from ..params import _Request


def _flag(info: dict) -> str:
    return info.get("flag") or "--" + info["name"].replace("_", "-")


def _describe(info: dict) -> str:
    text = info["help"]
    if info["choices"]:
        return text
    bounds = [f"≥ {info['min']}" if info["min"] is not None else "",
              f"≤ {info['max']}" if info["max"] is not None else ""]
    extra = ", ".join(b for b in bounds if b)
    default = info["default"]
    if default not in (None, "", []) and info["type"] is not bool:
        extra = f"default {default}" + (f"; {extra}" if extra else "")
    return f"{text} ({extra})" if extra else text


def add_request_arguments(parser: argparse.ArgumentParser, cls: type[_Request],
                          skip: Iterable[str] = ()) -> None:
    """Add one flag per field of ``cls`` (except ``skip``) in an argument group per section."""
    groups: dict[str, Any] = {}
    for info in cls.fields_info():
        if info["name"] in skip:
            continue
        group = groups.setdefault(info["group"], parser.add_argument_group(
            f"{cls.__name__} parameters ({info['group']})"))
        kwargs: dict[str, Any] = {"dest": info["name"], "default": argparse.SUPPRESS,
                                  "help": _describe(info)}
        kind = info["type"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["help"] += f" (default {'on' if info['default'] else 'off'})"
        elif getattr(kind, "__origin__", None) is list or kind is list:
            kwargs.update(action="append", metavar="ID", required=info["required"])
        else:
            kwargs["type"] = kind if kind in (int, float) else str
            if info["choices"]:
                kwargs["choices"] = info["choices"]
            if info["required"]:
                kwargs["required"] = True
        group.add_argument(_flag(info), **kwargs)


def request_from_args(cls: type[_Request], args: argparse.Namespace,
                      extra: Optional[dict] = None) -> Any:
    """Build and validate ``cls`` from the flags present in ``args`` (plus ``extra``)."""
    names = {info["name"] for info in cls.fields_info()}
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values.update(extra or {})
    return cls.from_dict(values)
