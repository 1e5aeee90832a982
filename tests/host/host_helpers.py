"""Helpers of the host-adapter tests: the fake WebUI installer (fixtures: ``conftest.py``),
small safetensors checkpoints, unit images and the EasyPhoto requests the engine gets."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FAKES = Path(__file__).resolve().parent / "fakes"
REPO = Path(__file__).resolve().parents[2]
FAKE_TOP_LEVEL = ("modules", "modules_forge", "fake_host_config", "networks", "cn_common",
                  "cn_dataclass", "cn_pydantic", "cn_forge", "cn_forge_state")


@dataclass(frozen=True)
class HostCase:
    """One host flavour/version and the ControlNet generation installed in it."""

    webui: tuple[int, int]
    tag: str
    controlnet: str  # "dataclass" | "pydantic" | "forge"
    cn_version: str | None = None
    forge: bool = False


CASES = {
    "a1111-1.6": HostCase((1, 6), "v1.6.0", "dataclass", "v1.1.440"),
    "a1111-1.9": HostCase((1, 9), "v1.9.4", "pydantic", "v1.1.448"),
    "a1111-1.10": HostCase((1, 10), "v1.10.1", "pydantic", "v1.1.455"),
    "forge": HostCase((1, 10), "f2.0.1v1.10.1-v1.10.1", "forge", forge=True),
}
FAMILY_KEYS = {
    "sd15": "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    "sd2": "cond_stage_model.model.ln_final.weight",
    "sdxl": "conditioner.embedders.1.model.ln_final.weight",
}


def write_checkpoint(path: Path, family: str, metadata: dict | None = None) -> Path:
    """A tiny safetensors file with the tensor names of ``family`` (a few bytes each)."""
    from safetensors.numpy import save_file

    tensors = {FAMILY_KEYS[family]: np.zeros(4, np.float16),
               "model.diffusion_model.input_blocks.0.0.weight": np.zeros((4, 4, 1, 1),
                                                                          np.float16)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def purge_fake_modules() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in FAKE_TOP_LEVEL:
            del sys.modules[name]


def load_preload() -> Any:
    """The extension's ``preload.py`` (loaded by path, as the host does)."""
    spec = importlib.util.spec_from_file_location("easyphoto_preload", REPO / "preload.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def host_cmd_opts(case: HostCase, root: Path, models: Path, **changes: Any) -> dict:
    """The host's ``cmd_opts`` with the Lora extension's and EasyPhoto's flags added."""
    parser = argparse.ArgumentParser()
    load_preload().preload(parser)
    values = {"ckpt_dir": None, "vae_dir": None, "lora_dir": str(models / "Lora"),
              "controlnet_dir": None, "api_auth": None, "nowebui": False, "data_dir": str(root),
              **vars(parser.parse_args([]))}
    if case.webui >= (1, 10):
        values["models_dir"] = None
    values.update(changes)
    return values


@dataclass
class FakeHost:
    """An installed fake WebUI: the adapter's ``host`` record, folders and handy modules."""

    host: Any
    case: HostCase
    root: Path
    models: Path
    checkpoints: dict = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        for prefix in ("modules.", "modules_forge.", ""):
            if prefix + name in sys.modules:
                return sys.modules[prefix + name]
        raise AttributeError(name)

    @property
    def calls(self) -> list:
        return sys.modules["modules.processing"].calls

    @property
    def cn_models(self) -> list:
        return sys.modules["cn_common"].MODELS


def _config_text(case: HostCase, root: Path, models_dir: Path | None, cmd_opts: dict,
                 opts: dict, unit_key_new: bool) -> str:
    module = {"dataclass": "cn_dataclass", "pydantic": "cn_pydantic", "forge": "cn_forge"}
    return "\n".join([
        f"WEBUI = {case.webui!r}", f"FORGE = {case.forge!r}", f"TAG = {case.tag!r}",
        f"CONTROLNET_MODULE = {module[case.controlnet]!r}",
        f"CONTROLNET_VERSION = {case.cn_version!r}", f"CONTROLNET_UNIT_KEY_NEW = {unit_key_new!r}",
        f"ROOT = {str(root)!r}", f"MODELS_DIR = {str(models_dir) if models_dir else None!r}",
        f"CMD_OPTS = {cmd_opts!r}", f"OPTS = {opts!r}", ""])


def _runner(fake_scripts: Any, cn_module: Any, webui: tuple, slots: int) -> Any:
    """A runner laid out as the host's UI would: Seed, (Sampler), ControlNet, another extension."""
    runner = fake_scripts.ScriptRunner()
    layout = [(fake_scripts.SeedScript(), 6)]
    if webui >= (1, 9):
        layout.append((fake_scripts.SamplerScript(), 3))
    if cn_module is not None:
        layout.append((cn_module.Script(), slots))
    layout.append((fake_scripts.OtherExtensionScript(), 1))
    position = 1
    for script, width in layout:
        script.args_from, script.args_to = position, position + width
        position += width
    runner.scripts = [script for script, _ in layout]
    runner.alwayson_scripts = list(runner.scripts)
    return runner


def install(tmp_path: Path, monkeypatch: Any, case_name: str, *, unit_slots: int = 3,
            cn_version: str | None = None, cmd_opts: dict | None = None,
            opts: dict | None = None, models_dir: Path | None = None,
            controlnet: bool = True) -> FakeHost:
    """Install the fake WebUI ``case_name`` for one test (undone by the fixture)."""
    from dataclasses import replace

    from easyphoto.engine.webui import load_host

    case = CASES[case_name]
    case = replace(case, cn_version=cn_version) if cn_version else case
    root = tmp_path / "webui"
    models = Path(models_dir) if models_dir else root / "models"
    for sub in ("Stable-diffusion", "Lora", "ControlNet", "VAE"):
        (models / sub).mkdir(parents=True, exist_ok=True)
    unit_key_new = case.forge or case.cn_version is None or \
        tuple(int(x) for x in case.cn_version.lstrip("v").split(".")) >= (1, 1, 400)
    unit_key = "control_net_unit_count" if unit_key_new else "control_net_max_models_num"
    saved = {unit_key: unit_slots, "control_net_model_cache_size": 2, **(opts or {})}
    config = tmp_path / "fake_config"
    config.mkdir(exist_ok=True)
    (config / "fake_host_config.py").write_text(_config_text(
        case, root, models_dir, host_cmd_opts(case, root, models, **(cmd_opts or {})), saved,
        unit_key_new))
    purge_fake_modules()
    for folder in (config, FAKES / "controlnet", FAKES / "host"):
        monkeypatch.syspath_prepend(str(folder))
    host = load_host()
    fake = FakeHost(host, case, root, models)
    folder = Path(fake.shared.cmd_opts.ckpt_dir or models / "Stable-diffusion")
    for key, family in (("sd15", "sd15"), ("sd15b", "sd15"), ("sdxl", "sdxl")):
        name = {"sd15": "realistic", "sd15b": "other15", "sdxl": "sd_xl_base_1.0"}[key]
        path = write_checkpoint(folder / f"{name}.safetensors", family)
        fake.checkpoints[key] = fake.sd_models.CheckpointInfo(str(path)).register()
    fake.shared.opts.data.setdefault("sd_model_checkpoint", fake.checkpoints["sd15"].title)
    importlib.import_module("networks")
    cn_module = _load_cn_script(fake.scripts) if controlnet else None
    fake.scripts.scripts_img2img = _runner(fake.scripts, cn_module, case.webui, unit_slots)
    fake.scripts.scripts_txt2img = _runner(fake.scripts, cn_module, case.webui, unit_slots)
    return fake


def _load_cn_script(fake_scripts: Any) -> Any:
    path = FAKES / "controlnet" / "cn_script.py"
    spec = importlib.util.spec_from_file_location("controlnet.py", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fake_scripts.scripts_data.append(fake_scripts.ScriptClassData(module.Script, str(path),
                                                                  str(path.parent), module))
    return module


# ---- requests ---------------------------------------------------------------------------------
def control_images(height: int = 64, width: int = 96, count: int = 3, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]


def square_mask(height: int = 64, width: int = 96) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[16:48, 32:64] = 255
    return mask
