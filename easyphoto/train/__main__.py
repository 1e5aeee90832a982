"""Child side of a training run: ``python -m easyphoto.train --run-dir DIR``.

Reads ``request.json`` and ``photos.json`` from the run folder (written by
:class:`easyphoto.train.runner.TrainingRun`), trains into that folder and reports through event
lines on stdout. SIGTERM asks for a clean stop at the next step.

``EASYPHOTO_FAIL_AT_STEP=N`` makes the run fail on purpose at training step N (fault injection
for tests of the failure path).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import traceback
from pathlib import Path

from ..errors import EasyPhotoError
from ..params import TrainRequest
from ..progress import CancelToken, Cancelled, Progress
from .runner import emit_event


def _progress_reporter(fail_at: int):
    def report(progress: Progress) -> None:
        emit_event("progress", progress.to_dict())
        if fail_at and progress.stage == "train" and progress.done >= fail_at:
            raise RuntimeError(f"injected failure at training step {progress.done} "
                               "(EASYPHOTO_FAIL_AT_STEP)")

    return report


def _exit_when_parent_dies() -> None:
    """Read stdin to its end (the parent never writes); EOF means the parent is gone."""
    def watch() -> None:
        while sys.stdin.read(4096):
            pass
        os._exit(4)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m easyphoto.train")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--models-dir", type=Path, default=None)
    parser.add_argument("--watch-parent", action="store_true",
                        help="exit when stdin closes (the parent process died)")
    args = parser.parse_args(argv)
    if args.watch_parent:
        _exit_when_parent_dies()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cancel = CancelToken()
    signal.signal(signal.SIGTERM, lambda *_: cancel.cancel())
    fail_at = int(os.environ.get("EASYPHOTO_FAIL_AT_STEP", "0") or 0)
    try:
        from .pipeline import train_into

        request = TrainRequest.from_dict(json.loads((args.run_dir / "request.json").read_text()))
        photos = [Path(p) for p in json.loads((args.run_dir / "photos.json").read_text())]
        summary = train_into(args.run_dir, request, photos, progress=_progress_reporter(fail_at),
                             cancel=cancel, models_dir=args.models_dir)
    except Cancelled as exc:
        emit_event("error", {"type": "Cancelled", "message": str(exc)})
        return 3
    except EasyPhotoError as exc:
        logging.getLogger("easyphoto.train").error("%s", exc)
        emit_event("error", {"type": type(exc).__name__, "message": str(exc)})
        return 1
    except Exception as exc:  # noqa: BLE001 — any crash must reach the user with its reason
        traceback.print_exc(file=sys.stdout)
        emit_event("error", {"type": type(exc).__name__, "message": f"{type(exc).__name__}: {exc}"})
        return 1
    emit_event("result", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
