"""Shared fixtures: real photos from PyPI packages (see tests/assets.py), image factories."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from assets import ASSETS, asset  # noqa: E402


def pytest_ignore_collect(collection_path, config):
    """tests/hostpins runs in its own environment (.venv-host, see its conftest.py), not here."""
    if collection_path.name == "hostpins" and collection_path.parent == Path(__file__).parent:
        return True
    return None


@pytest.fixture(scope="session", autouse=True)
def prefetched_photos():
    """Fetch (or find cached) every test photo before any test runs, so tests that forbid
    network access still have them on a fresh machine."""
    return {name: asset(name) for name in ASSETS}


@pytest.fixture(scope="session")
def photo():
    """``photo("obama.jpg")`` → Path of a cached real test photo."""
    return asset


@pytest.fixture(scope="session")
def rgb():
    """``rgb("obama.jpg")`` → (H, W, 3) uint8 RGB array of a cached real test photo."""
    from easyphoto.images import load_rgb_array

    cache: dict[str, np.ndarray] = {}

    def load(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = load_rgb_array(asset(name))
        return cache[name].copy()

    return load


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded (and do not stall on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
