"""Which Python runs training: this one, or a dedicated environment made on first use.

Training needs recent diffusers / transformers / peft / accelerate. The WebUI pins old ones
(transformers 4.30.2, accelerate 0.21, safetensors 0.3/0.4 — HOST.md) and an extension must
never upgrade them. Training already runs in a subprocess, so when the current interpreter is
too old EasyPhoto makes ``<data>/envs/train`` — a venv that also sees this interpreter's
packages (it reuses the host's torch, numpy, Pillow: no multi-GB download) — and installs only
the training packages into it, where they shadow the host's copies for the training process alone. The host's
own environment is never modified. Standalone installs already satisfy the requirements, so
there the current interpreter is used.

``$EASYPHOTO_TRAIN_PYTHON`` overrides the choice.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import site
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping, Optional

from ..errors import EasyPhotoError

log = logging.getLogger(__name__)

#: Minimum versions the training code needs (distribution → version).
TRAIN_REQUIREMENTS: Mapping[str, str] = {
    "diffusers": "0.32", "transformers": "4.44", "peft": "0.13", "accelerate": "0.33",
    "safetensors": "0.4.3",
}


class TrainEnvError(EasyPhotoError):
    """The dedicated training environment could not be created."""

    http_status = 500


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def installed_versions(names=TRAIN_REQUIREMENTS) -> dict[str, Optional[str]]:
    """Installed version of each distribution in this interpreter (``None`` if absent)."""
    found: dict[str, Optional[str]] = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def unmet(versions: Mapping[str, Optional[str]],
          requirements: Mapping[str, str] = TRAIN_REQUIREMENTS) -> list[str]:
    """Pip requirement strings for every package that is missing or older than required."""
    return [f"{name}>={minimum}" for name, minimum in requirements.items()
            if versions.get(name) is None
            or _version_tuple(versions[name]) < _version_tuple(minimum)]


def _env_python(folder: Path) -> Path:
    return folder / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _env_site_packages(folder: Path) -> Path:
    if os.name == "nt":
        return folder / "Lib" / "site-packages"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return folder / "lib" / version / "site-packages"


def link_parent_packages(folder: Path) -> Path:
    """Make the venv at ``folder`` see this interpreter's site-packages, after its own."""
    parents = [p for p in dict.fromkeys(site.getsitepackages() + [site.getusersitepackages()])
               if Path(p).is_dir()]
    target = _env_site_packages(folder)
    target.mkdir(parents=True, exist_ok=True)
    pth = target / "easyphoto-parent-packages.pth"
    pth.write_text("".join(f"{p}\n" for p in parents), encoding="utf-8")
    return pth


def ensure_train_env(folder: Path, requirements: list[str],
                     run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Path:
    """Create (once) the venv at ``folder`` and install ``requirements`` into it.

    Returns its interpreter. Raises :class:`TrainEnvError` naming the step that failed and
    pip's last lines.
    """
    python = _env_python(folder)
    if not python.exists():
        log.info("creating the training environment %s (reuses this interpreter's packages)", folder)
        _checked(run, [sys.executable, "-m", "venv", str(folder)], "create the virtual environment")
        link_parent_packages(folder)
    if requirements:
        log.info("installing into the training environment: %s", " ".join(requirements))
        _checked(run, [str(python), "-m", "pip", "install", "--upgrade", *requirements],
                 f"install {' '.join(requirements)}")
    return python


def _checked(run, command: list[str], what: str) -> None:
    result = run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise TrainEnvError(f"could not {what} for training (exit {result.returncode}):\n{tail}")


def training_python(data_dir: Path, versions: Optional[Mapping[str, Optional[str]]] = None,
                    run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> str:
    """The interpreter for ``python -m easyphoto.train``: ``$EASYPHOTO_TRAIN_PYTHON``, else this
    one when it meets :data:`TRAIN_REQUIREMENTS`, else the dedicated environment (made now)."""
    override = os.environ.get("EASYPHOTO_TRAIN_PYTHON")
    if override:
        return override
    missing = unmet(installed_versions() if versions is None else versions)
    if not missing:
        return sys.executable
    folder = Path(data_dir) / "envs" / "train"
    marker = folder / "easyphoto-requirements.txt"
    wanted = "\n".join(missing)
    if marker.is_file() and marker.read_text() == wanted and _env_python(folder).exists():
        return str(_env_python(folder))
    python = ensure_train_env(folder, missing, run=run)
    marker.write_text(wanted)
    return str(python)
