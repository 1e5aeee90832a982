"""Command line: ``easyphoto ui | train | infer | photos | models | doctor``.

Every sub-command module has ``register(subparsers, common)``: it adds its parser (with
``parents=[common]`` so ``--data-dir``/``--models-dir``/``--json`` work everywhere) and sets
``handler=`` to a function ``handler(args) -> int``. Results go through :func:`emit`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, Optional, Sequence

from .. import __version__
from ..errors import EasyPhotoError


def emit(args: argparse.Namespace, payload: Any, human: Optional[Callable[[Any], str]] = None) -> None:
    """Print ``payload`` as JSON with ``--json``, else as ``human(payload)`` (or JSON)."""
    if getattr(args, "json", False) or human is None:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(human(payload))


def common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=None,
                        help="data folder (default: $EASYPHOTO_DATA_DIR or a per-user folder)")
    common.add_argument("--models-dir", default=None,
                        help="model folder (default: $EASYPHOTO_MODELS_DIR or <data folder>/models)")
    common.add_argument("--json", action="store_true", help="print a machine-readable JSON result")
    common.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return common


def build_parser() -> argparse.ArgumentParser:
    from . import app, doctor, infer, models, photos, train

    parser = argparse.ArgumentParser(prog="easyphoto", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"easyphoto {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = common_parser()
    for module in (app, train, infer, photos, models, doctor):
        module.register(subparsers, common)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except EasyPhotoError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc), "type": type(exc).__name__}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
