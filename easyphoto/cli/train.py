"""``easyphoto train --user-id ID --photos DIR [--base CKPT] [--sdxl] [flags] [--json]``.

Runs the training subprocess (see ``easyphoto.train.runner``) and prints its progress; Ctrl+C
cancels cleanly (the previous LoRA of that id stays as it was).
"""

from __future__ import annotations

import argparse
import sys

from ..params import TrainRequest
from .requests import add_request_arguments, request_from_args


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "train", parents=[common], help="train a user id's face LoRA from photos",
        description="Preprocess the photos, train the face LoRA, validate and fuse the best "
                    "checkpoints. '--base tiny-random' trains a tiny random model (noise; for "
                    "smoke tests).")
    parser.add_argument("--photos", required=True, metavar="DIR", help="folder of 5-20 photos")
    add_request_arguments(parser, TrainRequest)
    parser.set_defaults(handler=run)


def _printer(as_json: bool):
    last = {"stage": None}

    def show(progress) -> None:
        if as_json:
            return
        end = "\n" if progress.stage != last["stage"] and last["stage"] else "\r"
        last["stage"] = progress.stage
        sys.stderr.write(("\n" if end == "\n" else "") + progress.describe()[:110].ljust(110) + "\r")
        sys.stderr.flush()

    return show


def run(args: argparse.Namespace) -> int:
    from ..cli import emit
    from ..images import list_images
    from ..paths import data_root
    from ..store import UserStore
    from ..train.runner import TrainingRun

    request = request_from_args(TrainRequest, args)
    root = data_root(args.data_dir)
    training = TrainingRun(UserStore(root), request, list_images(args.photos), root / "logs",
                           progress=_printer(args.json), models_dir=args.models_dir)
    try:
        result = training.run()
    except KeyboardInterrupt:
        training.cancel()
        raise
    if not args.json:
        sys.stderr.write("\n")
    emit(args, {"ok": True, **result.to_dict()},
         lambda r: f"trained {r['user_id']}: {r['lora']} ({r['steps']} steps); log {r['log']}")
    return 0
