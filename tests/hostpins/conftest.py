"""Fixtures of the host-pins suite: an environment that looks like a WebUI 1.10 install.

This suite runs under ``.venv-host/bin/python -m pytest tests/hostpins`` (``bash
dev/host_env.sh`` makes .venv-host; ``bash dev/test.sh`` does both). It is its own pytest
project (``pytest.ini`` here), so the main suite's fixtures are not loaded and the main run
does not collect it.

``webui_env`` is a fresh virtual environment layered on .venv-host: a ``.pth`` file makes
.venv-host's packages (the WebUI's pins) visible after its own, so what install.py installs
lands in the layer and .venv-host itself is never modified. install.py then runs in it twice,
through a fake ``launch`` module whose ``run_pip`` behaves like the WebUI's.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import site
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAKE_WEBUI = HERE / "fake_webui"
PINS_FILE = HERE / "host-pins.txt"
#: What install.py promises never to change (its NEVER_TOUCH), checked independently here.
WEBUI_OWN = ("gradio", "fastapi", "pydantic", "torch", "transformers", "numpy", "accelerate",
             "safetensors")


def read_pins() -> dict[str, str]:
    """``name → version`` from host-pins.txt."""
    pins = {}
    for line in PINS_FILE.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


@pytest.fixture(scope="session", autouse=True)
def host_pins_in_force():
    """Refuse to run anywhere but in an environment with the WebUI's pins (.venv-host)."""
    wrong = []
    for name, version in read_pins().items():
        try:
            found = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found = "missing"
        if found.split("+")[0] != version:
            wrong.append(f"{name} {found} (want {version})")
    if wrong:
        pytest.fail(f"tests/hostpins must run under .venv-host (bash dev/host_env.sh), but here "
                    f"{sys.executable} has: {', '.join(wrong)}", pytrace=False)


@dataclass(frozen=True)
class Run:
    """One run of install.py: its exit status, output, duration and the pip calls it made."""

    returncode: int
    output: str
    seconds: float
    pip_calls: tuple[str, ...]


@dataclass(frozen=True)
class WebuiEnv:
    python: Path
    root: Path           # the fake WebUI root (working directory, data folder)
    freeze_before: str   # `pip freeze` as seen from the layer, before install.py
    host_freeze_before: str   # .venv-host's own `pip freeze`, before
    runs: tuple[Run, ...]

    def env(self, **extra: str) -> dict[str, str]:
        return webui_process_env(self.root, **extra)

    def freeze(self) -> str:
        return pip_freeze(self.python)


def webui_process_env(root: Path, **extra: str) -> dict[str, str]:
    """Environment of a WebUI child process: its root (here: the fake one) on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(FAKE_WEBUI), FAKE_WEBUI_ROOT=str(root),
               FAKE_WEBUI_EXTENSION_DIR=str(ROOT), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def pip_freeze(python: Path) -> str:
    result = subprocess.run([str(python), "-m", "pip", "freeze", "--all"], capture_output=True,
                            text=True, check=True)
    return result.stdout


def make_layer(folder: Path) -> Path:
    """A venv at ``folder`` that also sees this interpreter's (.venv-host's) packages."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    parents = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(own) / "zz-webui-host-packages.pth").write_text("".join(p + "\n" for p in parents))
    return python


def run_install(python: Path, root: Path, log: Path) -> Run:
    """Run install.py as the WebUI does: its python, the WebUI root as working directory."""
    before = log.read_text().splitlines() if log.exists() else []
    started = time.monotonic()
    result = subprocess.run([str(python), str(ROOT / "install.py")], cwd=root,
                            env=webui_process_env(root, FAKE_WEBUI_PIP_LOG=str(log)),
                            capture_output=True, text=True, timeout=1800)
    seconds = time.monotonic() - started
    after = log.read_text().splitlines() if log.exists() else []
    return Run(result.returncode, result.stdout + result.stderr, seconds,
               tuple(after[len(before):]))


@pytest.fixture(scope="session")
def webui_env(tmp_path_factory):
    """The layered environment after install.py ran twice in it (removed afterwards: ~1 GB)."""
    base = tmp_path_factory.mktemp("webui")
    root = base / "root"
    root.mkdir()
    try:
        python = make_layer(base / "venv")
        host_before = pip_freeze(Path(sys.executable))
        before = pip_freeze(python)
        log = base / "pip-calls.log"
        runs = (run_install(python, root, log), run_install(python, root, log))
        yield WebuiEnv(python, root, before, host_before, runs)
    finally:
        shutil.rmtree(base / "venv", ignore_errors=True)


@pytest.fixture(scope="session")
def smoke(webui_env: WebuiEnv):
    """``smoke(check)`` runs one check of webui_smoke.py in the WebUI-like environment (after
    install.py) and returns its RESULT; a failing check fails with its output."""
    def run(check: str) -> dict:
        result = subprocess.run([str(webui_env.python), str(HERE / "webui_smoke.py"), check],
                                cwd=webui_env.root, env=webui_env.env(), capture_output=True,
                                text=True, timeout=600)
        lines = [x for x in result.stdout.splitlines() if x.startswith("RESULT ")]
        assert result.returncode == 0 and lines, (
            f"webui_smoke.py {check} failed (exit {result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
        return json.loads(lines[-1][len("RESULT "):])

    return run
