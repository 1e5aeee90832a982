"""Fixtures of the UI tests: one real Service (tiny-random models, lite face backend) on a
temporary data folder, the Blocks built over it, and ONE training run driven through the
Train tab's own events (upload → check → start → followed to the end), shared by every test
that needs a trained user id."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from ui_helpers import PHOTOS, QUICK_TRAINING, USER_ID, run_event


def pytest_configure(config):
    # gradio 5.x announces 6.0 changes (css in launch(), HTML padding) on every build
    config.addinivalue_line("filterwarnings", "ignore:.*Gradio 6.0:DeprecationWarning")


@dataclass
class UI:
    service: object
    blocks: object
    data_dir: Path


@pytest.fixture(scope="session")
def ui(tmp_path_factory):
    from easyphoto.service import Service, ServiceConfig
    from easyphoto.ui import build_ui

    data_dir = tmp_path_factory.mktemp("ui-data")
    service = Service(ServiceConfig(data_dir=data_dir, base_model="tiny-random",
                                    face_backend="lite"))
    try:
        yield UI(service, build_ui(service, poll_s=0.1), data_dir)
    finally:
        service.close()


@pytest.fixture(scope="session")
def uploads(tmp_path_factory, photo):
    """The test photos as an upload hands them over: copies in a temporary folder."""
    folder = tmp_path_factory.mktemp("uploads")
    paths = []
    for name in PHOTOS:
        shutil.copy(photo(name), folder / name)
        paths.append(str(folder / name))
    return paths


@dataclass
class Training:
    upload: dict        # the outputs of the upload event (photos checked)
    steps: list         # every output dict the Start button's handler yielded
    seconds: float


@pytest.fixture(scope="session")
def trained(ui, uploads):
    """``obama`` trained through the Train tab: upload, then Start, followed to the end."""
    upload = run_event(ui.blocks, "easyphoto_train_upload", "upload", photos=[], upload=uploads)
    started = time.monotonic()
    steps = run_event(ui.blocks, "easyphoto_train_start", "click", photos=upload["photos"],
                      user_id=USER_ID, **QUICK_TRAINING)
    return Training(upload, steps, time.monotonic() - started)
