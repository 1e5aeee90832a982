"""``easyphoto photos check DIR``: per-photo verdicts before training (the training's own check)."""

from __future__ import annotations

import argparse

from ..images import list_images
from ..params import FACE_BACKENDS, TrainRequest


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser("photos", help="check training photos")
    actions = parser.add_subparsers(dest="photos_command", metavar="ACTION", required=True)
    check = actions.add_parser("check", parents=[common], help="verdict per photo in a folder",
                               description="Read every file in DIR, find the face, score identity "
                               "consistency and pick the reference photo, as training does.")
    check.add_argument("folder", metavar="DIR", help="folder of photos of one person")
    check.add_argument("--face-backend", choices=FACE_BACKENDS, default="auto",
                       help="face models to use (default auto)")
    default_max = next(i["default"] for i in TrainRequest.fields_info() if i["name"] == "max_photos")
    check.add_argument("--max-photos", type=int, default=default_max,
                       help=f"keep at most this many photos (default {default_max})")
    check.set_defaults(handler=run_check)


def _human(report: dict) -> str:
    lines = [f"{'file':32} {'verdict':13} {'id':>5} {'angle':>5}  reason"]
    for photo in report["photos"]:
        mark = "*" if photo["is_reference"] else " "
        score = "" if photo["id_score"] is None else f"{photo['id_score']:.2f}"
        angle = "" if photo["angle_score"] is None else f"{photo['angle_score']:.2f}"
        lines.append(f"{mark}{photo['file'][:31]:31} {photo['verdict']:13} {score:>5} {angle:>5}"
                     f"  {photo['reason']}")
    lines.append(f"kept {report['kept']}, dropped {report['dropped']}; reference (*): "
                 f"{report['reference'] or 'none'}; face backend {report['backend']}")
    return "\n".join(lines)


def run_check(args: argparse.Namespace) -> int:
    from ..cli import emit
    from ..face import get_face_backend
    from ..train.photo_check import check_photos

    backend = get_face_backend(args.face_backend, models_dir=args.models_dir)
    report = check_photos(list_images(args.folder), backend, max_photos=args.max_photos).to_dict()
    emit(args, report, _human)
    return 0 if report["kept"] else 1
