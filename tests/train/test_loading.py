"""Loading a training run's models: tiny preset, diffusers folder, single-file checks, registry.

A real single-file load (UNet/VAE/CLIP from a WebUI checkpoint) needs real weights and is not
run here; what is checked instead: the shipped configs build the published architectures
(exact parameter counts), the header checks (format, family, inpainting) refuse bad files
before any tensor is read, and the tokenizer derivation reproduces CLIP's id layout.
"""

from __future__ import annotations

import gzip
import re

import pytest
import torch
from safetensors.torch import save_file

from easyphoto.errors import ModelUnavailable
from easyphoto.train import clip_tokenizer
from easyphoto.train.loading import load_components, weight_dtype
from easyphoto.train.single_file import CONFIGS_DIR, CheckpointError, _controlnet_config
from easyphoto.train.tiny import build_tiny_sd15, build_tiny_sdxl, save_tiny_sd15


pytestmark = pytest.mark.usefixtures("offline", "one_thread")


def _frozen(module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


@pytest.mark.parametrize("sdxl", [False, True])
def test_tiny_random_both_families(sdxl):
    c = load_components("tiny-random", sdxl=sdxl, device="cpu")
    assert c.family == ("sdxl" if sdxl else "sd15")
    assert len(c.text_encoders) == len(c.tokenizers) == (2 if sdxl else 1)
    assert c.base_id == "tiny-random" and c.device == torch.device("cpu")
    assert c.dtype == torch.float32 and c.vae.dtype == torch.float32
    assert type(c.canny_controlnet).__name__ == "ControlNetModel"
    assert all(_frozen(m) for m in [c.unet, c.vae, c.canny_controlnet, *c.text_encoders])
    assert c.noise_scheduler.config.num_train_timesteps == 1000
    assert load_components("tiny-random", sdxl=sdxl, with_canny=False).canny_controlnet is None


def test_diffusers_folder_loads_back(tmp_path):
    folder = save_tiny_sd15(tmp_path / "tiny", seed=3, controlnets=("canny",))
    c = load_components(str(folder), sdxl=False, models_dir=tmp_path / "models")
    reference = build_tiny_sd15(3, controlnets=("canny",))
    for loaded, built in [(c.unet, reference.unet), (c.text_encoders[0], reference.text_encoder),
                          (c.canny_controlnet, reference.controlnets["canny"])]:
        expected = built.state_dict()
        assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert c.tokenizers[0]("a photo").input_ids == reference.tokenizer("a photo").input_ids
    assert re.fullmatch(r"[0-9a-f]{12}", c.base_id)
    assert load_components(str(folder), sdxl=False, with_canny=False).base_id == c.base_id
    with pytest.raises(CheckpointError, match="SD1.5 model but SDXL training"):
        load_components(str(folder), sdxl=True)


def test_pickle_checkpoints_are_refused_unread(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, ckpt)
    with pytest.raises(CheckpointError, match="never unpickles.*Convert it to .safetensors"):
        load_components(str(ckpt), sdxl=False, models_dir=tmp_path)
    disguised = tmp_path / "model.safetensors"
    disguised.write_bytes(ckpt.read_bytes())
    with pytest.raises(CheckpointError, match="not a valid .safetensors file.*pickle"):
        load_components(str(disguised), sdxl=False, models_dir=tmp_path)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelUnavailable, match="was not found.*diffusers folder"):
        load_components(str(tmp_path / "nope.safetensors"), sdxl=False, models_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without model_index.json"):
        load_components(str(tmp_path / "empty"), sdxl=False, models_dir=tmp_path)


def _fake_checkpoint(path, keys, in_channels=4):
    """A safetensors file with SD-like tensor names (tiny tensors; header checks only)."""
    tensors = {key: torch.zeros(2) for key in keys}
    tensors["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(2, in_channels, 3, 3)
    save_file(tensors, str(path))
    return str(path)


SDXL_KEYS = ["conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
             "conditioner.embedders.1.model.ln_final.weight"]
SD15_KEYS = ["cond_stage_model.transformer.text_model.final_layer_norm.weight",
             "first_stage_model.decoder.conv_in.weight"]


def test_family_mismatch_from_header(tmp_path):
    sdxl_file = _fake_checkpoint(tmp_path / "xl.safetensors", SDXL_KEYS)
    with pytest.raises(CheckpointError, match="is an SDXL model but SD1.5 training.*--sdxl"):
        load_components(sdxl_file, sdxl=False, models_dir=tmp_path)
    sd15_file = _fake_checkpoint(tmp_path / "v15.safetensors", SD15_KEYS)
    with pytest.raises(CheckpointError, match="is an SD1.5 model but SDXL training"):
        load_components(sd15_file, sdxl=True, models_dir=tmp_path)


@pytest.mark.parametrize("keys, channels, message", [
    (SD15_KEYS, 9, "9-channel UNet input"),
    (["cond_stage_model.model.ln_final.weight"], 4, "Stable Diffusion 2.x"),
    (["conditioner.embedders.0.model.ln_final.weight"], 4, "SDXL refiner"),
    (["lora_unet_mid_block_attentions_0_proj_in.alpha"], 4, "not a full Stable Diffusion"),
])
def test_unsupported_checkpoints_are_named(tmp_path, keys, channels, message):
    path = _fake_checkpoint(tmp_path / "m.safetensors", keys, channels)
    with pytest.raises(CheckpointError, match=message):
        load_components(path, sdxl=False, models_dir=tmp_path)


def test_single_file_without_tokenizer_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(clip_tokenizer, "_hf_cached_files", lambda: None)
    monkeypatch.setattr(clip_tokenizer, "_open_clip_gz", lambda: None)
    path = _fake_checkpoint(tmp_path / "v15.safetensors", SD15_KEYS)
    with pytest.raises(ModelUnavailable, match="CLIP tokenizer.*vocab.json and merges.txt"):
        load_components(path, sdxl=False, models_dir=tmp_path / "models")


def test_missing_registry_base_is_model_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable, match="sd15_base.*easyphoto models download sd15_base"):
        load_components("", sdxl=False, models_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="sdxl_base"):
        load_components("  ", sdxl=True, models_dir=tmp_path)
    with pytest.raises(ModelUnavailable, match="sd15_v15"):
        load_components("sd15_v15", sdxl=False, models_dir=tmp_path)


def test_weight_dtype_on_cpu():
    assert weight_dtype("fp16", "cpu") == weight_dtype("bf16", "cpu") == torch.float32
    assert weight_dtype("no", "cpu") == torch.float32
    c = load_components("tiny-random", sdxl=False, with_canny=False, mixed_precision="bf16")
    assert c.dtype == torch.float32  # CPU always trains in fp32


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_shipped_configs_build_the_published_architectures():
    """Parameter counts of SD1.5 / SDXL (UNet, VAE, CLIP ViT-L, OpenCLIP bigG, ControlNet),
    built on the meta device from models/configs (nothing allocated)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    expected = {("sd15", "unet"): 859_520_964, ("sdxl", "unet"): 2_567_463_684,
                ("sd15", "vae"): 83_653_863, ("sdxl", "vae"): 83_653_863,
                ("sd15", "controlnet"): 361_279_120, ("sdxl", "controlnet"): 1_251_014_160,
                ("sd15", "text_encoder"): 123_060_480, ("sdxl", "text_encoder"): 123_060_480,
                ("sdxl", "text_encoder_2"): 694_659_840}
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "controlnet": ControlNetModel}
    with init_empty_weights():
        for (family, part), count in expected.items():
            folder = CONFIGS_DIR / family / part
            if part in classes:
                model = classes[part].from_config(classes[part].load_config(folder))
            else:
                cls = CLIPTextModelWithProjection if part.endswith("_2") else CLIPTextModel
                model = cls(CLIPTextConfig.from_pretrained(folder))
            assert _count(model) == count, (family, part)
    assert (CONFIGS_DIR / "sdxl" / "scheduler" / "scheduler_config.json").is_file()


def _write_bpe(path, merges):
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\"bpe_simple_vocab_16e6.txt#version: 0.2\n" + "\n".join(merges) + "\n")


def test_tokenizer_rebuilt_from_bpe_file_has_clip_id_layout(tmp_path, monkeypatch):
    """The vocabulary construction gives CLIP's ids: '!' 0, 'a' 64, 'a</w>' 320, merges from
    512, then <|startoftext|>, <|endoftext|> (49406 / 49407 with all 48,894 merges)."""
    monkeypatch.setattr(clip_tokenizer, "_hf_cached_files", lambda: None)
    monkeypatch.setattr(clip_tokenizer, "_open_clip_gz", lambda: None)
    from easyphoto.weights import ModelStore

    merges = ["p h", "o t", "ph ot", "phot o</w>"]
    (tmp_path / "tokenizers").mkdir()
    _write_bpe(tmp_path / "tokenizers" / clip_tokenizer.BPE_GZ, merges)
    first, second = clip_tokenizer.clip_tokenizers(2, ModelStore(tmp_path))
    vocab = first.get_vocab()
    assert (vocab["!"], vocab["a"], vocab["a</w>"], vocab["ph"]) == (0, 64, 320, 512)
    assert vocab["photo</w>"] == 515 and vocab["<|startoftext|>"] == 516
    ids = first("Photo").input_ids
    assert ids == [516, 515, 517]  # lower-cased, merged to one token, BOS/EOS around it
    padded = second("photo", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 0  # OpenCLIP pads with '!'
    assert first("photo", padding="max_length", max_length=77).input_ids[-1] == 517
    assert len(clip_tokenizer.vocab_from_merges([])) == 514


def test_controlnet_config_follows_the_file():
    """SDXL 'mid'/'small' ControlNets have fewer transformer layers: the config is fitted."""
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(build_tiny_sdxl(0).unet)
    config = dict(net.config, down_block_types=["CrossAttnDownBlock2D"] * 2,
                  transformer_layers_per_block=[5, 5])
    fitted = _controlnet_config(config, net.state_dict())
    assert fitted["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert fitted["transformer_layers_per_block"] == [1, 2]
    rebuilt = ControlNetModel.from_config(fitted)
    assert set(rebuilt.state_dict()) == set(net.state_dict())
