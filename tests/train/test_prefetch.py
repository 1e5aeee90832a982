"""The GPU-library read-ahead: which files, every byte read, unreadable files skipped."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from easyphoto.train.prefetch import (LibraryPrefetch, gpu_library_files, library_dirs,
                                      read_through, start_library_prefetch)


def _libs(tmp_path: Path) -> Path:
    folder = tmp_path / "lib"
    folder.mkdir()
    sizes = {"libcudnn_engines_precompiled.so.9": 3000, "libcublasLt.so.12": 5000,
             "libtorch_cuda.so": 1000, "libnccl.so.2": 9000, "libcufft.so.11": 7000,
             "libcudnn.txt": 10, "README": 4}
    for name, size in sizes.items():
        (folder / name).write_bytes(b"x" * size)
    (folder / "libcudnn_dir.so").mkdir()  # a folder named like a library: not a file
    return folder


def test_wanted_libraries_largest_first(tmp_path):
    folder = _libs(tmp_path)
    names = [p.name for p in gpu_library_files([folder])]
    assert names == ["libcublasLt.so.12", "libcudnn_engines_precompiled.so.9", "libtorch_cuda.so"]


def test_symlinked_library_read_once(tmp_path):
    folder = _libs(tmp_path)
    (folder / "libcublasLt.so").symlink_to(folder / "libcublasLt.so.12")
    files = gpu_library_files([folder])
    assert len(files) == 3 and len(set(files)) == 3


def test_read_through_counts_every_byte_and_skips_missing(tmp_path):
    folder = _libs(tmp_path)
    files = gpu_library_files([folder]) + [folder / "libcudnn_gone.so"]
    report = read_through(files)
    assert report.files == 3 and report.bytes == 5000 + 3000 + 1000
    assert len(report.skipped) == 1 and "libcudnn_gone.so" in report.skipped[0]


def test_stopped_prefetch_reads_nothing(tmp_path):
    stop = threading.Event()
    stop.set()
    report = read_through(gpu_library_files([_libs(tmp_path)]), stop=stop)
    assert report.files == 0 and report.bytes == 0


def test_background_prefetch_reports(tmp_path):
    prefetch = LibraryPrefetch(gpu_library_files([_libs(tmp_path)]))
    report = prefetch.join(timeout=30)
    assert report.files == 3 and report.bytes == 9000 and report.seconds >= 0


def test_library_dirs_hold_torch_libraries():
    dirs = library_dirs()
    assert any((d / "libtorch_cpu.so").exists() or any(d.glob("libtorch_cpu*")) for d in dirs)


def test_no_prefetch_for_the_cpu():
    assert start_library_prefetch("cpu") is None


@pytest.mark.parametrize("bad", ["libcudnn.so"])
def test_prefetch_list_ignores_unreadable_folder_entries(tmp_path, bad):
    folder = _libs(tmp_path)
    (folder / bad).symlink_to(folder / "missing-target")  # a dangling link
    assert bad not in [p.name for p in gpu_library_files([folder])]
