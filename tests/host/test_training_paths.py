"""Training inside the host and the host's folders, against the fake WebUI.

Proves: training gets the selected checkpoint's file without loading it; ``free_vram`` frees
the model per version (1.6 unloads and reloads after, 1.7+ moves the same model object to the
CPU and back, Forge unloads and reloads lazily, nothing is touched when no model is loaded);
``install_lora`` puts a user's LoRA in the host's Lora folder under its stable name, refreshes the
host's list only when the file changed and replaces it after a retraining; the data folder and
the model folders follow the host's flags (``--ckpt-dir``, ``--lora-dir``, ``--controlnet-dir``,
``--vae-dir``, 1.10's ``--models-dir``), settings and EasyPhoto's own flags; the model store
finds the host folders through the environment the runtime publishes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from easyphoto.engine import webui, webui_ext
from easyphoto.errors import ModelUnavailable
from easyphoto.weights import HOST_FOLDERS_ENV, ModelStore, host_folders_from_env


def test_selected_checkpoint_file(make_host):
    fake = make_host("a1111-1.10")
    assert webui.selected_checkpoint_file(fake.host) == Path(fake.checkpoints["sd15"].filename)
    assert fake.sd_models.model_data.sd_model is None   # nothing was loaded
    fake.sd_models.checkpoints_list.clear()
    fake.sd_models.checkpoint_aliases.clear()
    with pytest.raises(ModelUnavailable, match="no checkpoint"):
        webui.selected_checkpoint_file(fake.host)


def _load_model(fake):
    fake.sd_models.reload_model_weights()
    fake.sd_models.events.clear()
    return fake.sd_models.model_data.sd_model


def test_free_vram_16_unloads_and_reloads(make_host):
    fake = make_host("a1111-1.6")
    _load_model(fake)
    with webui.free_vram(fake.host):
        assert fake.sd_models.model_data.sd_model is None
    assert fake.sd_models.model_data.sd_model.device == "cuda"
    assert [e[0] for e in fake.sd_models.events] == ["unload", "reload"]


@pytest.mark.parametrize("case", ["a1111-1.9", "a1111-1.10"])
def test_free_vram_17_plus_moves_the_model(make_host, case):
    fake = make_host(case)
    model = _load_model(fake)
    with pytest.raises(RuntimeError, match="training failed"), webui.free_vram(fake.host):
        assert model.device == "cpu" and fake.sd_models.model_data.sd_model is model
        raise RuntimeError("training failed")
    assert model.device == "cuda"   # restored even when training fails
    title = fake.checkpoints["sd15"].title
    assert fake.sd_models.events == [("to_cpu", title), ("to_device", title)]


def test_service_frees_vram_while_training(make_host):
    fake = make_host("a1111-1.10")
    model = _load_model(fake)
    with webui_ext.runtime(fake.host).service.training_guard():
        assert model.device == "cpu"
    assert model.device == "cuda"


def test_training_without_a_base_uses_the_hosts_selected_checkpoint(make_host):
    from easyphoto.params import InferRequest, TrainRequest

    fake = make_host("a1111-1.10")
    service = webui_ext.runtime(fake.host).service
    chosen = service._with_defaults(TrainRequest(user_id="ann"))
    assert chosen.base_model == str(Path(fake.checkpoints["sd15"].filename))
    named = service._with_defaults(TrainRequest(user_id="ann", base_model="/x/other.safetensors"))
    assert named.base_model == "/x/other.safetensors"
    # inference leaves it empty: the WebUI engine then uses the host's current checkpoint
    assert service._with_defaults(InferRequest(user_ids=["ann"])).base_model == ""
    assert fake.sd_models.model_data.sd_model is None   # nothing was loaded


def test_free_vram_without_a_loaded_model_touches_nothing(make_host):
    fake = make_host("a1111-1.10")
    with webui.free_vram(fake.host):
        pass
    assert fake.sd_models.events == [] and fake.sd_models.model_data.sd_model is None


def test_free_vram_forge(make_host):
    fake = make_host("forge")
    with webui.free_vram(fake.host):
        assert ("unload_all_models",) in fake.sd_models.events
    assert [e for e in fake.sd_models.events if e[0] in ("reload", "to_device")] == []


def test_install_lora_and_refresh(make_host, tmp_path):
    fake = make_host("a1111-1.10")
    source = tmp_path / "data" / "users" / "ann-0123456789" / "lora.safetensors"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"first")
    assert webui.install_lora(fake.host, source) == "easyphoto_ann-0123456789"
    target = fake.models / "Lora" / "easyphoto_ann-0123456789.safetensors"
    assert target.read_bytes() == b"first"
    assert fake.networks.refreshes == [["easyphoto_ann-0123456789"]]
    webui.install_lora(fake.host, source)           # unchanged: no copy, no refresh
    assert len(fake.networks.refreshes) == 1
    source.unlink()                                  # a retraining swaps in a new file
    source.write_bytes(b"second!")
    os.utime(source, ns=(time.time_ns() + 10 ** 9,) * 2)
    webui.install_lora(fake.host, source)
    assert target.read_bytes() == b"second!" and len(fake.networks.refreshes) == 2
    assert [p.name for p in target.parent.iterdir()] == [target.name]   # no temp files left


def test_lora_ready_hook_installs_the_record(make_host, tmp_path):
    fake = make_host("forge")
    lora = tmp_path / "users" / "bob-9876543210" / "lora.safetensors"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"x")
    webui_ext.lora_ready(fake.host, SimpleNamespace(lora_path=lora))
    assert (fake.models / "Lora" / "easyphoto_bob-9876543210.safetensors").is_file()


def test_install_lora_missing_file(make_host, tmp_path):
    fake = make_host("a1111-1.10")
    with pytest.raises(ModelUnavailable, match="does not exist"):
        webui.install_lora(fake.host, tmp_path / "none.safetensors")


@pytest.mark.parametrize("case, outputs", [("a1111-1.6", "outputs"), ("a1111-1.10", "outputs"),
                                           ("forge", "outputs")])
def test_default_data_dir(make_host, case, outputs):
    fake = make_host(case)
    assert hasattr(fake.paths_internal, "default_output_dir") is (case != "a1111-1.6")
    assert webui.host_data_dir(fake.host) == fake.root / outputs / "easyphoto"


def test_data_dir_setting_and_flag(make_host, tmp_path):
    fake = make_host("a1111-1.9", opts={"easyphoto_data_dir": str(tmp_path / "from-setting")})
    assert webui.host_data_dir(fake.host) == tmp_path / "from-setting"
    fake.shared.cmd_opts.easyphoto_data_dir = str(tmp_path / "from-flag")
    assert webui.host_data_dir(fake.host) == tmp_path / "from-flag"


def test_default_model_folders(fake):
    folders = webui.host_model_folders(fake.host)
    models = fake.models
    assert folders == {"Stable-diffusion": models / "Stable-diffusion", "VAE": models / "VAE",
                       "Lora": models / "Lora", "ControlNet": models / "ControlNet"}
    assert webui.host_models_root(fake.host) == models / "EasyPhoto"


def test_model_folders_follow_the_flags(make_host, tmp_path):
    flags = {name: str(tmp_path / name) for name in ("ckpt_dir", "lora_dir", "controlnet_dir",
                                                     "vae_dir", "easyphoto_models_dir")}
    fake = make_host("a1111-1.10", cmd_opts=flags)
    assert webui.host_model_folders(fake.host) == {
        "Stable-diffusion": tmp_path / "ckpt_dir", "VAE": tmp_path / "vae_dir",
        "Lora": tmp_path / "lora_dir", "ControlNet": tmp_path / "controlnet_dir"}
    assert webui.host_models_root(fake.host) == tmp_path / "easyphoto_models_dir"
    # the checkpoint the host lists from --ckpt-dir is the one training gets
    assert webui.selected_checkpoint_file(fake.host).parent == tmp_path / "ckpt_dir"


def test_models_dir_of_110(make_host, tmp_path):
    fake = make_host("a1111-1.10", models_dir=tmp_path / "big-disk")
    folders = webui.host_model_folders(fake.host)
    assert folders["ControlNet"] == tmp_path / "big-disk" / "ControlNet"
    assert folders["Stable-diffusion"] == tmp_path / "big-disk" / "Stable-diffusion"


def test_legacy_controlnet_models_folder(make_host):
    fake = make_host("a1111-1.6")
    (fake.models / "ControlNet").rmdir()
    legacy = fake.root / "extensions" / "sd-webui-controlnet" / "models"
    legacy.mkdir(parents=True)
    assert webui.host_model_folders(fake.host)["ControlNet"] == legacy


def test_model_store_uses_the_published_host_folders(make_host, tmp_path):
    fake = make_host("a1111-1.10", cmd_opts={"controlnet_dir": str(tmp_path / "cn")})
    service = webui_ext.runtime(fake.host).service
    assert service.config.data_dir == fake.root / "outputs" / "easyphoto"
    assert host_folders_from_env()["ControlNet"] == tmp_path / "cn"
    store = ModelStore(tmp_path / "own-models")
    assert store.folder("controlnet_sd15_canny") == tmp_path / "cn"
    assert store.folder("sd15_base") == fake.models / "Stable-diffusion"
    assert store.folder("annotator_openpose_body").parent.parent == tmp_path / "own-models"
    assert host_folders_from_env({HOST_FOLDERS_ENV: "not json"}) == {}
