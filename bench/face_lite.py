"""Benchmark of the lite face backend's per-photo stages on the CPU (a benchmark, not a test).

For each photo: warm up (loads every model), then time, as the median of ``--runs`` runs,
detect (whole photo), embed and part_masks (every part, one call) for every detected face, and
saliency (whole photo). Prints ms per stage, the total, and the CPU it ran on.

    python bench/face_lite.py [--runs 10] [PHOTO ...]

PHOTO is a path or the name of a test photo (tests/assets.py fetches and caches it);
default: obama.jpg and t1.jpg (a group of six). Target: detect + embed + masks ≤ 1 s per photo.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from easyphoto.face.lite import LiteBackend  # noqa: E402
from easyphoto.face.types import FACE_PARTS  # noqa: E402
from easyphoto.images import load_rgb_array  # noqa: E402


def cpu_info() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}; {usable} usable cores; Python {platform.python_version()}"


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def load(photo: str):
    path = Path(photo)
    if not path.is_file():
        from assets import asset  # tests/assets.py: fetches and caches the test photos

        path = asset(photo)
    return path.name, load_rgb_array(path)


def bench_photo(backend: LiteBackend, name: str, image, runs: int) -> dict[str, float]:
    faces = backend.detect(image)
    for face in faces:  # warm-up: loads dlib, the mesh graph and the segmenter
        backend.embed(image, face)
        backend.part_masks(image, face, FACE_PARTS)
    backend.saliency(image)
    stages = {
        "detect": median_ms(lambda: backend.detect(image), runs),
        "embed": median_ms(lambda: [backend.embed(image, f) for f in faces], runs),
        "part_masks": median_ms(lambda: [backend.part_masks(image, f, FACE_PARTS)
                                         for f in faces], runs),
        "saliency": median_ms(lambda: backend.saliency(image), runs),
    }
    height, width = image.shape[:2]
    print(f"\n{name}: {width}×{height}, {len(faces)} face(s), median of {runs} runs")
    for stage, ms in stages.items():
        per_face = ""
        if faces and stage in ("embed", "part_masks"):
            per_face = f"  ({ms / len(faces):6.1f} ms/face)"
        print(f"  {stage:<11} {ms:8.1f} ms{per_face}")
    print(f"  {'total':<11} {sum(stages.values()):8.1f} ms")
    core = stages["detect"] + stages["embed"] + stages["part_masks"]
    verdict = "OK" if core <= 1000.0 else "OVER"
    print(f"  detect+embed+masks {core:.1f} ms (target ≤ 1000 ms: {verdict})")
    print(f"  (retouch, whole photo: {median_ms(lambda: backend.retouch(image), runs):.1f} ms)")
    return stages


def bench_fusion(backend: LiteBackend, runs: int) -> None:
    (_, template), (_, source) = load("biden.jpg"), load("obama.jpg")
    backend.fuse(template, source, 0.6)
    ms = median_ms(lambda: backend.fuse(template, source, 0.6), runs)
    print(f"\nfuse(biden.jpg ← obama.jpg, 0.6), both detections and masks included: {ms:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photos", nargs="*", default=["obama.jpg", "t1.jpg"])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"CPU: {cpu_info()}")
    import onnxruntime

    import cv2

    print(f"onnxruntime {onnxruntime.__version__}, OpenCV threads {cv2.getNumThreads()}")
    backend = LiteBackend()
    start = time.perf_counter()
    backend.detect(load(args.photos[0])[1])
    print(f"first detect (loads RetinaFace): {(time.perf_counter() - start) * 1000:.0f} ms")
    for photo in args.photos:
        bench_photo(backend, *load(photo), args.runs)
    bench_fusion(backend, args.runs)
    backend.unload()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
