"""Read the GPU libraries into the OS page cache on a background thread (training start-up).

Why: on a machine that has just started (or whose page cache was dropped), the first training
pays for reading cuDNN, cuBLAS and PyTorch's CUDA code from disk *while it trains*: those
libraries are gigabytes, loaded lazily as each kernel is first used, one page fault at a time.
Measured on an H100 (bench/README.md, session 5): a machine's first run took 10–18 s longer
in its first 100 steps than the next run in a new process. Reading the files sequentially
while photos are preprocessed and models load turns those page faults into cache hits.

Only the libraries training and validation use are read (:data:`WANTED`); communication,
FFT, sparse and solver libraries are not. Nothing is loaded or executed: the bytes are read and
dropped, and any file that cannot be read is skipped.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

logger = logging.getLogger(__name__)

#: library file-name prefixes worth reading (cuDNN, cuBLAS, NVRTC, the CUDA runtime, JIT
#: linker, PyTorch's CUDA code)
WANTED = ("libcudnn", "libcublas", "libnvrtc", "libcudart", "libnvJitLink", "libtorch_cuda",
          "libc10_cuda", "libtorch_cpu")
CHUNK = 8 << 20


@dataclass
class PrefetchReport:
    """What a prefetch read: files, bytes, seconds, and the files it could not read."""

    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list = field(default_factory=list)


def library_dirs() -> list[Path]:
    """The folders holding PyTorch's libraries and the ``nvidia-*`` wheels' libraries."""
    dirs = []
    torch_spec = importlib.util.find_spec("torch")
    if torch_spec is not None and torch_spec.origin:
        dirs.append(Path(torch_spec.origin).parent / "lib")
    nvidia = importlib.util.find_spec("nvidia")
    for root in (nvidia.submodule_search_locations or []) if nvidia is not None else []:
        dirs += sorted(p / "lib" for p in Path(root).iterdir() if (p / "lib").is_dir())
    return [d for d in dirs if d.is_dir()]


def gpu_library_files(dirs: Optional[Iterable[Path]] = None,
                      wanted: Sequence[str] = WANTED) -> list[Path]:
    """The shared libraries in ``dirs`` (default :func:`library_dirs`) whose names start with
    one of ``wanted``, largest first (the ones most worth having in memory early)."""
    found = {}
    for folder in library_dirs() if dirs is None else dirs:
        for path in Path(folder).iterdir():
            if path.name.startswith(tuple(wanted)) and ".so" in path.name and path.is_file():
                found[path.resolve()] = path.stat().st_size
    return sorted(found, key=lambda p: -found[p])


def read_through(paths: Iterable[Path], report: Optional[PrefetchReport] = None,
                 stop: Optional[threading.Event] = None) -> PrefetchReport:
    """Read every file once (bytes dropped); returns (fills) the report."""
    report = report or PrefetchReport()
    started = time.perf_counter()
    for path in paths:
        if stop is not None and stop.is_set():
            break
        try:
            with open(path, "rb", buffering=0) as handle:
                while chunk := handle.read(CHUNK):
                    report.bytes += len(chunk)
            report.files += 1
        except OSError as error:
            report.skipped.append(f"{path}: {error}")
    report.seconds = time.perf_counter() - started
    return report


class LibraryPrefetch:
    """:func:`read_through` of :func:`gpu_library_files` on a daemon thread.

    ``join()`` waits and returns the report; ``stop()`` ends it after the current chunk.
    """

    def __init__(self, paths: Optional[Sequence[Path]] = None) -> None:
        self.paths = list(gpu_library_files() if paths is None else paths)
        self.report, self._stop = PrefetchReport(), threading.Event()
        self._thread = threading.Thread(target=read_through, name="easyphoto-prefetch",
                                        args=(self.paths, self.report, self._stop), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: Optional[float] = None) -> PrefetchReport:
        self._thread.join(timeout)
        if not self._thread.is_alive():
            logger.info("prefetched %d GPU libraries (%.2f GB) in %.2f s", self.report.files,
                        self.report.bytes / 1e9, self.report.seconds)
        return self.report


def start_library_prefetch(device) -> Optional[LibraryPrefetch]:
    """A running :class:`LibraryPrefetch` where training will use CUDA; None elsewhere."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    return LibraryPrefetch()
