"""``easyphoto infer --user-id ID [--user-id …] (--template FILE | --templates DIR) --out DIR``.

Runs the portrait pipeline (``easyphoto.infer.batch``) on each template and writes one PNG per
output image into ``--out`` with every parameter in its ``parameters`` text chunk (WebUI
infotext). A template that fails is reported with its reason and the others go on. Exit status
0 when every template succeeded, 3 when some failed, 1 when none produced an image.
``--base tiny-random`` runs the random tiny models (noise; for smoke tests).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..params import InferRequest
from .requests import add_request_arguments, request_from_args

#: exit status when some templates failed and others succeeded.
PARTIAL = 3


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "infer", parents=[common], help="make portraits of trained user ids on templates",
        description="Put trained user ids into template photos (faces map left to right; "
                    "'none' leaves a face as it is). '--base tiny-random' runs tiny random "
                    "models (noise; for smoke tests).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--template", action="append", metavar="FILE",
                        help="a template image (repeat for several)")
    source.add_argument("--templates", metavar="DIR", help="a folder of template images")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG results")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA if present)")
    add_request_arguments(parser, InferRequest)
    parser.set_defaults(handler=run)


def _printer(as_json: bool):
    def show(progress) -> None:
        if not as_json:
            sys.stderr.write("\r" + progress.describe()[:110].ljust(110))
            sys.stderr.flush()

    return show


def _file_name(template: str, index: int, batch_size: int, taken: set[str]) -> str:
    """``<stem>.png`` (``<stem>-<k>.png`` for several per template), unique within the run."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(template).stem) or "template"
    base = stem if batch_size == 1 else f"{stem}-{index + 1}"
    name, n = f"{base}.png", 2
    while name in taken:
        name, n = f"{base}_{n}.png", n + 1
    taken.add(name)
    return name


def _human(payload: dict) -> str:
    lines = []
    for item in payload["results"]:
        extra = "; ".join(item["scores"] + item["notes"])
        lines.append(f"ok     {item['template']} → {item['file']} (seed {item['seed']})"
                     + (f": {extra}" if extra else ""))
    for error in payload["errors"]:
        message = error["error"]  # errors usually name their template already
        if not message.startswith(error["template"]):
            message = f"{error['template']}: {message}"
        lines.append(f"failed {message}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..cli import emit
    from ..engine.diffusers_engine import DiffusersEngine
    from ..face import get_face_backend
    from ..infer.batch import BatchOptions, collect_templates, run_batch
    from ..paths import data_root, models_root
    from ..store import UserStore
    from ..weights import ModelStore

    request = request_from_args(InferRequest, args)
    root = data_root(args.data_dir)
    models_dir = models_root(args.models_dir, root)
    sources = collect_templates(args.template or (), args.templates)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    backend = get_face_backend(request.face_backend, models_dir)
    engine = DiffusersEngine(base_model=request.base_model, models_dir=models_dir,
                             device=args.device)
    try:
        options = BatchOptions(models=ModelStore(models_dir))
        batch = run_batch(sources, request, engine=engine, backend=backend,
                          store=UserStore(root), options=options, progress=_printer(args.json))
    finally:
        if not args.json:
            sys.stderr.write("\n")
    taken: set[str] = set()
    results = []
    for result in batch.results:
        path = result.save(out / _file_name(result.template, result.index, request.batch_size,
                                            taken))
        results.append({**result.to_dict(), "file": str(path)})
    payload = {"ok": not batch.errors, "results": results,
               "errors": [e.to_dict() for e in batch.errors]}
    emit(args, payload, _human)
    if batch.errors:
        return PARTIAL if batch.results else 1
    return 0
