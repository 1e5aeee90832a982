"""Choosing the training interpreter: this one, or a dedicated venv beside the host's pins."""

from __future__ import annotations

import subprocess
import sys

import pytest

from easyphoto.train.env import TrainEnvError, ensure_train_env, training_python, unmet

HOST_PINS = {"diffusers": None, "transformers": "4.30.2", "peft": None, "accelerate": "0.21.0",
             "safetensors": "0.4.2"}
RECENT = {"diffusers": "0.42.1", "transformers": "5.23.0", "peft": "0.21.2",
          "accelerate": "1.15.0", "safetensors": "0.8.0"}


class FakeRun:
    def __init__(self, code=0):
        self.calls, self.code = [], code

    def __call__(self, command, **kwargs):
        self.calls.append(command)
        if command[1:3] == ["-m", "venv"]:
            python = __import__("pathlib").Path(command[-1]) / "bin" / "python"
            python.parent.mkdir(parents=True)
            python.write_text("")
        return subprocess.CompletedProcess(command, self.code, "pip said\nERROR: no match", "")


def test_host_pins_are_unmet_recent_ones_met():
    assert unmet(HOST_PINS) == ["diffusers>=0.32", "transformers>=4.44", "peft>=0.13",
                                "accelerate>=0.33", "safetensors>=0.4.3"]
    assert unmet(RECENT) == []
    assert unmet({**RECENT, "transformers": "4.44.0"}) == []


def test_current_interpreter_when_requirements_met(tmp_path, monkeypatch):
    monkeypatch.delenv("EASYPHOTO_TRAIN_PYTHON", raising=False)
    run = FakeRun()
    assert training_python(tmp_path, versions=RECENT, run=run) == sys.executable
    assert run.calls == [] and not (tmp_path / "envs").exists()


def test_dedicated_env_made_once_for_host_pins(tmp_path, monkeypatch):
    monkeypatch.delenv("EASYPHOTO_TRAIN_PYTHON", raising=False)
    run = FakeRun()
    python = training_python(tmp_path, versions=HOST_PINS, run=run)
    assert python == str(tmp_path / "envs" / "train" / "bin" / "python")
    assert run.calls[0][1:3] == ["-m", "venv"]
    assert run.calls[1][1:5] == ["-m", "pip", "install", "--upgrade"]
    assert "transformers>=4.44" in run.calls[1]
    assert training_python(tmp_path, versions=HOST_PINS, run=run) == python
    assert len(run.calls) == 2  # second time: nothing created or installed


def test_env_failure_names_the_step(tmp_path):
    with pytest.raises(TrainEnvError, match="(?s)could not create the virtual environment.*no match"):
        ensure_train_env(tmp_path / "env", ["peft>=0.13"], run=FakeRun(code=1))


def test_override_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("EASYPHOTO_TRAIN_PYTHON", "/opt/py/bin/python")
    assert training_python(tmp_path, versions=HOST_PINS, run=FakeRun()) == "/opt/py/bin/python"


def test_real_venv_sees_this_interpreters_packages_after_its_own(tmp_path):
    """A real venv made from this (possibly virtual) interpreter: the host's packages (numpy,
    torch) stay importable, and the venv's own site-packages come first so its installs win."""
    python = ensure_train_env(tmp_path / "env", [])
    script = ("import numpy, sys, site; own = site.getsitepackages()[0]; "
              "host = [p for p in sys.path if p.endswith('site-packages') and p != own]; "
              "print(sys.prefix); print(sys.path.index(own) < sys.path.index(host[0])); "
              "print(numpy.__file__.startswith(tuple(host)))")
    out = subprocess.run([str(python), "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(tmp_path / "env"), "True", "True"]
