"""``easyphoto models ...`` and ``easyphoto doctor``: in-process and as a real subprocess.

In-process tests build a fresh argparse parser from the two modules' ``register`` (so they run
whatever state the other CLI modules are in); the ``easyphoto.cli.main`` and ``python -m
easyphoto`` tests skip until ``easyphoto/cli/app.py`` and ``photos.py`` exist.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import easyphoto.cli.models as models_cli
from easyphoto.cli import common_parser, doctor, models
from easyphoto.errors import EasyPhotoError
from easyphoto.weights import ModelStore
from easyphoto.weights_registry import REGISTRY
from test_weights import SPEC_ROLES, FileServer, clean_env, payload, sha, url_spec  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch):
    """``clean_env`` (imported, autouse) clears the environment; stdin is not a terminal."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # no prompts


@pytest.fixture
def cli(capsys, tmp_path):
    """``cli(*argv)`` → ``(exit code, stdout, stderr)``, with ``--models-dir tmp_path/models``.

    Uses only ``models.register`` and ``doctor.register`` on a fresh parser; EasyPhotoError
    becomes exit 1 with the message on stderr, as ``easyphoto.cli.main`` does.
    """
    def run(*argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="easyphoto")
        sub = parser.add_subparsers(dest="command")
        common = common_parser()
        models.register(sub, common)
        doctor.register(sub, common)
        args = parser.parse_args([*argv, "--models-dir", str(tmp_path / "models"),
                                  "--data-dir", str(tmp_path / "data")])
        try:
            code = args.handler(args)
        except EasyPhotoError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 1
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _check_list_payload(data: dict, models_dir: Path) -> None:
    rows = {r["role"]: r for r in data["models"]}
    assert SPEC_ROLES <= set(rows) and len(rows) == len(REGISTRY)
    for row in rows.values():
        assert row["licence"] and isinstance(row["commercial_use"], bool)
        assert row["present"] is False and row["path"].startswith(str(models_dir))
        assert "size" in row and "sha256" in row
    assert rows["insightface_buffalo_l"]["commercial_use"] is False
    assert rows["sdxl_base"]["size"] == 6938078334


# ---- list ---------------------------------------------------------------------------------
def test_list_json_has_every_role_with_licence(cli, tmp_path):
    code, out, _ = cli("models", "list", "--json")
    assert code == 0
    _check_list_payload(json.loads(out), tmp_path / "models")


def test_list_human_is_a_table(cli):
    code, out, _ = cli("models", "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:2] == ["ROLE", "KIND"] and "LICENCE" in lines[0]
    buffalo = next(line for line in lines if line.startswith("insightface_buffalo_l"))
    assert " NO " in buffalo and "non-commercial" in buffalo
    assert f"0/{len(REGISTRY)} present" in out


def test_main_entry_point_lists_models(capsys, tmp_path):
    from easyphoto.cli import main

    assert main(["models", "list", "--json", "--models-dir", str(tmp_path)]) == 0
    _check_list_payload(json.loads(capsys.readouterr().out), tmp_path)


def test_python_dash_m_lists_models(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "easyphoto", "models", "list", "--json",
                           "--models-dir", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    _check_list_payload(json.loads(proc.stdout), tmp_path)


# ---- download -----------------------------------------------------------------------------
def test_download_non_commercial_without_consent_is_refused(cli, tmp_path, monkeypatch):
    with FileServer({"/mirror/buffalo_l.zip": b"never fetched"}) as srv:
        monkeypatch.setenv("EASYPHOTO_MODEL_URL_BASE", srv.base_url + "/mirror")
        code, out, err = cli("models", "download", "insightface_buffalo_l")
    assert code == 1 and srv.requests == []
    assert out.startswith("insightface_buffalo_l: licence InsightFace pretrained models: "
                          "non-commercial")
    assert "--accept-licence" in err
    assert not (tmp_path / "models/insightface/models/buffalo_l.zip").exists()


def test_download_with_accept_prints_licence_then_refuses_bad_data(cli, tmp_path, monkeypatch):
    bogus = payload(4000)
    with FileServer({"/mirror/buffalo_l.zip": bogus}) as srv:
        monkeypatch.setenv("EASYPHOTO_MODEL_URL_BASE", srv.base_url + "/mirror")
        code, out, err = cli("models", "download", "insightface_buffalo_l", "--accept-licence")
    assert code == 1 and [r[0] for r in srv.requests] == ["GET"]
    assert out.index("licence InsightFace") < out.index("insightface_buffalo_l: FAILED")
    assert REGISTRY["insightface_buffalo_l"].sha256 in err and sha(bogus) in err
    assert not (tmp_path / "models/insightface/models/buffalo_l.zip").exists()


def test_interactive_consent_then_download(cli, tmp_path, monkeypatch):
    data = payload(3000)
    with FileServer({"/m/tiny.safetensors": data}) as srv:
        spec = url_spec(srv.base_url + "/m/tiny.safetensors", data, commercial_use=False,
                        licence="research only")
        monkeypatch.setattr(models_cli, "build_store",
                            lambda args: ModelStore(args.models_dir, specs=[spec]))
        monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
        answers = iter(["n", "y"])
        monkeypatch.setattr("builtins.input", lambda prompt: next(answers))
        refused = cli("models", "download", "tiny_url")
        code, out, _ = cli("models", "download", "tiny_url")
    assert refused[0] == 1 and len(srv.requests) == 1
    assert code == 0 and "licence research only" in out and "tiny_url: downloaded ->" in out
    assert (tmp_path / "models/Lora/tiny.safetensors").read_bytes() == data


def test_download_json_keeps_stdout_machine_readable(cli, tmp_path, monkeypatch):
    data = payload(3000)
    with FileServer({"/m/tiny.safetensors": data}) as srv:
        spec = url_spec(srv.base_url + "/m/tiny.safetensors", data)
        monkeypatch.setattr(models_cli, "build_store",
                            lambda args: ModelStore(args.models_dir, specs=[spec]))
        code, out, err = cli("models", "download", "tiny_url", "--json")
    result = json.loads(out)
    assert code == 0 and result["ok"] and result["results"][0]["sha256"] == sha(data)
    assert "licence MIT" in err


def test_download_unknown_role_fails_before_fetching(cli):
    code, _, err = cli("models", "download", "vae_sd15", "no_such_model")
    assert code == 1 and "unknown model role 'no_such_model'" in err


def test_download_offline_names_manual_path(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = cli("models", "download", "vae_sd15", "--json")
    result = json.loads(out)["results"][0]
    assert code == 1 and result["type"] == "ModelUnavailable"
    assert str(tmp_path / "models/VAE/vae-ft-mse-840000-ema-pruned.safetensors") in result["error"]


# ---- verify -------------------------------------------------------------------------------
def test_verify_reports_mismatch_and_missing(cli, tmp_path):
    assert cli("models", "verify")[0] == 0  # nothing present: nothing to complain about
    code, out, _ = cli("models", "verify", "vae_sd15", "--json")
    assert code == 1 and json.loads(out)["results"][0]["status"] == "missing"
    bad = tmp_path / "models/VAE/vae-ft-mse-840000-ema-pruned.safetensors"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a VAE")
    code, out, _ = cli("models", "verify", "--json")
    row = json.loads(out)["results"][0]
    assert code == 1 and row["role"] == "vae_sd15" and row["status"] == "mismatch"
    assert REGISTRY["vae_sd15"].sha256 in row["error"] and sha(b"not a VAE") in row["error"]
    assert bad.exists()


# ---- doctor -------------------------------------------------------------------------------
def test_doctor_json_reports_everything(cli, tmp_path):
    code, out, _ = cli("doctor", "--json")
    report = json.loads(out)
    assert code == 0
    for key in ("python", "platform", "torch", "onnxruntime", "packages", "face_backend",
                "data_dir", "models_dir", "models"):
        assert key in report
    assert report["models_dir"] == str(tmp_path / "models")
    assert report["data_dir"] == str(tmp_path / "data")
    assert report["models"]["total"] == len(REGISTRY) and report["models"]["present"] == 0
    assert isinstance(report["torch"]["installed"], bool)
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert "available" in report["face_backend"]


def test_doctor_survives_face_backend_errors_and_missing_torch(cli, monkeypatch):
    import easyphoto.face as face

    def boom():
        raise RuntimeError("boom")

    monkeypatch.setattr(face, "describe_backend", boom, raising=False)
    monkeypatch.setitem(sys.modules, "torch", None)
    code, out, _ = cli("doctor")
    assert code == 0
    assert "face backend: unavailable (RuntimeError: boom)" in out
    assert "torch: not installed" in out
