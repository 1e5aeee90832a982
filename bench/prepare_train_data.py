"""Preprocess 10 real photos (from PyPI packages) into a training run folder for the GPU bench.

Runs SPEC 1.2 preprocessing with the lite face backend on this machine's CPU and reports its
wall time (the face stages run on the CPU in production too). Output: ``.bench/train10/``
(git-ignored) with dataset/, photos/, ref.jpg, embeddings.npy, preprocess.json.

    python bench/prepare_train_data.py
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from assets import asset  # noqa: E402

from easyphoto.face.lite import LiteBackend  # noqa: E402
from easyphoto.params import TrainRequest  # noqa: E402
from easyphoto.train.preprocess import preprocess  # noqa: E402

NAMES = ("obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg",
         "obama_partial_face2.jpg")


def _first_face(backend, path: Path):
    import numpy as np

    image = np.asarray(Image.open(path).convert("RGB"))
    backend.saliency(image)
    return image, backend.detect(image)[0]


def main() -> None:
    out = ROOT / ".bench" / "train10"
    shutil.rmtree(out, ignore_errors=True)
    source = ROOT / ".bench" / "photos10"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for name in NAMES:  # 5 photos + their mirror images = 10 distinct files
        image = Image.open(asset(name)).convert("RGB")
        image.save(source / name.replace(".jpg", ".png"))
        ImageOps.mirror(image).save(source / name.replace(".jpg", "_mirror.png"))
    request = TrainRequest(user_id="bench", face_backend="lite")
    backend = LiteBackend()
    backend.embed(*_first_face(backend, source / "obama.png"))  # load models before timing
    started = time.perf_counter()
    result = preprocess(sorted(source.iterdir()), out, backend, request)
    seconds = time.perf_counter() - started
    report = {"preprocess_s": round(seconds, 2), "photos": 10, "kept": result.kept,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    (out / "bench_preprocess.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
