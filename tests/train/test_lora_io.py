"""LoRA files: kohya key names, exact round trip, diffusers loading, checkpoint fusion."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from easyphoto.errors import InvalidRequest
from easyphoto.train.lora_io import (
    LoraFileError,
    fuse_checkpoints,
    kohya_name,
    load_kohya_lora,
    lora_target_modules,
    module_path_from_kohya,
    read_kohya_file,
    save_kohya_lora,
    state_for_model,
    weighted_average,
)
from easyphoto.train.tiny import build_tiny_sd15, build_tiny_sdxl, tiny_pipeline, tiny_sdxl_pipeline

RANK, ALPHA = 4, 2.0


from lora_helpers import add_random_lora  # noqa: E402

pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def sd15():
    """(tiny components with LoRA adapters, [unet_state, te_state])."""
    parts = build_tiny_sd15(0)
    return parts, add_random_lora([parts.unet, parts.text_encoder], "sd15")


@pytest.fixture(scope="module")
def sd15_file(sd15, tmp_path_factory):
    _, (unet_state, te_state) = sd15
    path = tmp_path_factory.mktemp("lora") / "user.safetensors"
    return save_kohya_lora(path, unet_state, [te_state], RANK, ALPHA,
                           metadata={"easyphoto_user_id": "alice", "ss_training_steps": 800})


@contextmanager
def no_loader_warnings():
    """Collect WARNING+ log records of diffusers/peft/transformers and Python warnings."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("diffusers", "peft", "transformers")]
    for log in loggers:
        log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        for log in loggers:
            log.removeHandler(handler)
    problems = [r.getMessage() for r in records]
    problems += [str(w.message) for w in caught
                 if not issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not problems, problems


def lora_layer_count(model) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(module, LoraLayer) for module in model.modules())


def file_module_count(path, prefix: str) -> int:
    return sum(k.startswith(prefix + "_") and k.endswith(".alpha") for k in load_file(path))


def generate(pipe, seed: int = 0) -> np.ndarray:
    return pipe("easyphoto_face, easyphoto, 1person", num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images


def test_target_modules_follow_spec():
    targets = lora_target_modules("sd15")
    assert set(targets.unet) == {"to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2",
                                 "proj_in", "proj_out"}
    assert set(targets.text_encoder) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert lora_target_modules("sdxl") == targets
    with pytest.raises(InvalidRequest, match="family"):
        lora_target_modules("sd3")


def test_kohya_names_are_diffusers_paths_with_underscores():
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    name = kohya_name("lora_unet", path)
    assert name == "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    assert module_path_from_kohya(name, "lora_unet") == path
    te = "text_model.encoder.layers.11.self_attn.out_proj"
    assert kohya_name("lora_te", te) == "lora_te_text_model_encoder_layers_11_self_attn_out_proj"
    with pytest.raises(InvalidRequest, match="unambiguously"):
        kohya_name("lora_unet", "blocks.0.my_layer")


def test_saved_file_uses_kohya_keys_and_metadata(sd15, sd15_file):
    _, (unet_state, te_state) = sd15
    tensors, meta = read_kohya_file(sd15_file)
    modules = {k.split(".", 1)[0] for k in tensors}
    assert all(m.startswith(("lora_unet_", "lora_te_")) for m in modules)
    assert len(modules) == (len(unet_state) + len(te_state)) // 2
    for module in modules:
        down, up = tensors[f"{module}.lora_down.weight"], tensors[f"{module}.lora_up.weight"]
        alpha = tensors[f"{module}.alpha"]
        assert down.shape[0] == RANK and up.shape[1] == RANK
        assert alpha.shape == () and float(alpha) == ALPHA
    assert len(tensors) == 3 * len(modules)
    assert any(m.startswith("lora_unet_mid_block_attentions_0_") for m in modules)
    assert "lora_te_text_model_encoder_layers_1_mlp_fc2" in modules
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2")
    assert meta["easyphoto_version"] and meta["easyphoto_user_id"] == "alice"
    assert meta["ss_training_steps"] == "800"


def test_load_round_trips_tensor_exactly(sd15, sd15_file):
    parts, (unet_state, te_state) = sd15
    loaded = load_kohya_lora(sd15_file)
    assert (loaded.rank, loaded.alpha) == (RANK, ALPHA)
    assert loaded.metadata["easyphoto_user_id"] == "alice"
    assert len(loaded.text_encoders) == 1
    assert all(k.startswith("text_model.") for k in loaded.text_encoders[0])
    te_back = state_for_model(loaded.text_encoders[0], parts.text_encoder)
    for original, back in ((unet_state, loaded.unet), (te_state, te_back)):
        assert set(back) == set(original)
        for key, tensor in original.items():
            assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecation, via peft
def test_peft_model_wrapper_prefix_is_accepted(tmp_path):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    parts = build_tiny_sd15(0)
    wrapped = get_peft_model(parts.text_encoder, LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=list(lora_target_modules("sd15").text_encoder)))
    state = get_peft_model_state_dict(wrapped)
    assert all(k.startswith("base_model.model.") for k in state)
    path = save_kohya_lora(tmp_path / "te.safetensors", None, [state], RANK, ALPHA)
    back = load_kohya_lora(path).text_encoders[0]
    fitted = state_for_model(back, parts.text_encoder)
    assert {f"base_model.model.{k}" for k in fitted} == set(state)


def test_diffusers_load_lora_weights_loads_every_module(sd15, sd15_file):
    parts, _ = sd15
    pipe = tiny_pipeline(seed=0)  # same base weights as the fixture's models, no LoRA
    before = generate(pipe)
    with no_loader_warnings():
        pipe.load_lora_weights(str(sd15_file))
    assert lora_layer_count(pipe.unet) == file_module_count(sd15_file, "lora_unet") == 48
    assert lora_layer_count(pipe.text_encoder) == file_module_count(sd15_file, "lora_te") == 12
    assert np.abs(generate(pipe) - before).max() > 1e-3
    # the loaded LoRA reproduces the trained (peft-wrapped) models exactly, alpha/rank included
    generator = torch.Generator().manual_seed(7)
    latents, hidden = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 77, 32)
    ids = parts.tokenizer("a face", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(pipe.unet(latents, 500, hidden).sample,
                                   parts.unet(latents, 500, hidden).sample, rtol=0, atol=1e-6)
        torch.testing.assert_close(pipe.text_encoder(ids)[0], parts.text_encoder(ids)[0],
                                   rtol=0, atol=1e-6)


def test_sdxl_keys_round_trip_and_load_in_diffusers(tmp_path):
    parts = build_tiny_sdxl(0)
    states = add_random_lora([parts.unet, parts.text_encoder, parts.text_encoder_2], "sdxl")
    path = save_kohya_lora(tmp_path / "xl.safetensors", states[0], states[1:], RANK, ALPHA,
                           family="sdxl")
    tensors, meta = read_kohya_file(path)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    prefixes = {k.split("_text_model")[0] for k in tensors if k.startswith("lora_te")}
    assert prefixes == {"lora_te1", "lora_te2"}
    deep = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_1_"  # 2 blocks per layer
    assert any(k.startswith(deep) for k in tensors)
    loaded = load_kohya_lora(path)
    for original, back, model in zip(states[1:], loaded.text_encoders,
                                     (parts.text_encoder, parts.text_encoder_2)):
        back = state_for_model(back, model)
        assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in back)
    assert all(torch.equal(loaded.unet[k], v) for k, v in states[0].items())
    pipe = tiny_sdxl_pipeline(seed=0)
    with no_loader_warnings():
        pipe.load_lora_weights(str(path))
    for model, prefix in ((pipe.unet, "lora_unet"), (pipe.text_encoder, "lora_te1"),
                          (pipe.text_encoder_2, "lora_te2")):
        assert lora_layer_count(model) == file_module_count(path, prefix) > 0
    ids = parts.tokenizer("a face", padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        for ours, theirs in ((parts.text_encoder, pipe.text_encoder),
                             (parts.text_encoder_2, pipe.text_encoder_2)):
            torch.testing.assert_close(theirs(ids, output_hidden_states=True).hidden_states[-2],
                                       ours(ids, output_hidden_states=True).hidden_states[-2])


def random_checkpoints(sd15, folder, count: int, alphas=None) -> list:
    """``count`` kohya files with the fixture's modules and fresh random tensors."""
    _, (unet_state, te_state) = sd15
    generator = torch.Generator().manual_seed(42)
    paths = []
    for index in range(count):
        def rand(state):
            return {k: torch.randn(v.shape, generator=generator) for k, v in state.items()}

        alpha = alphas[index] if alphas else ALPHA
        paths.append(save_kohya_lora(folder / f"ckpt-{index}.safetensors", rand(unet_state),
                                     [rand(te_state)], RANK, alpha, metadata={"step": index}))
    return paths


def test_fuse_checkpoints_is_the_weighted_average(sd15, tmp_path):
    paths = random_checkpoints(sd15, tmp_path, 3)
    weights = (0.5, 0.3, 0.2)
    out = fuse_checkpoints(paths, weights, tmp_path / "fused.safetensors")
    fused, meta = read_kohya_file(out)
    inputs = [load_file(p) for p in paths]
    assert set(fused) == set(inputs[0])
    for key, tensor in fused.items():
        if key.endswith(".alpha"):
            assert float(tensor) == ALPHA
            continue
        expected = sum(w * f[key].float() for w, f in zip(weights, inputs))
        torch.testing.assert_close(tensor, expected.to(tensor.dtype), rtol=1e-6, atol=1e-7)
    assert meta["ss_network_dim"] == "4" and meta["ss_base_model_version"] == "sd_v1"
    assert '"weight": 0.3' in meta["easyphoto_fused_from"]
    # the same checkpoint chosen twice weighs twice (SPEC 1.4: k/10)
    twice = weighted_average([(paths[0], 0.5), (paths[0], 0.5)])
    assert all(torch.allclose(twice[k], inputs[0][k]) for k in twice)
    # the fused file is a valid LoRA for the loader
    assert load_kohya_lora(out).rank == RANK


def test_fuse_refuses_different_alphas(sd15, tmp_path):
    paths = random_checkpoints(sd15, tmp_path, 2, alphas=(2.0, 3.0))
    with pytest.raises(InvalidRequest, match="alpha"):
        fuse_checkpoints(paths, (0.5, 0.5), tmp_path / "fused.safetensors")
    assert not (tmp_path / "fused.safetensors").exists()


@pytest.mark.parametrize("weights, message", [((0.5, 0.3, 0.1), "sum to 1"),
                                              ((1.2, -0.2, 0.0), "≥ 0"),
                                              ((0.5, 0.5), "weights")])
def test_fuse_checks_weights(sd15, tmp_path, weights, message):
    paths = random_checkpoints(sd15, tmp_path, 3)
    with pytest.raises(InvalidRequest, match=message):
        fuse_checkpoints(paths, weights, tmp_path / "fused.safetensors")


def test_fuse_refuses_mismatched_modules(sd15, tmp_path):
    paths = random_checkpoints(sd15, tmp_path, 2)
    tensors = load_file(paths[1])
    save_file({k: v for k, v in tensors.items() if "lora_te_" not in k}, paths[1])
    with pytest.raises(InvalidRequest, match="different modules"):
        weighted_average([(paths[0], 0.5), (paths[1], 0.5)])


def test_save_rejects_bad_input(sd15, tmp_path):
    _, (unet_state, te_state) = sd15
    target = tmp_path / "x.safetensors"
    with pytest.raises(InvalidRequest, match="rank"):
        save_kohya_lora(target, unet_state, [te_state], 8, ALPHA)
    with pytest.raises(InvalidRequest, match="text encoder"):
        save_kohya_lora(target, unet_state, [te_state], RANK, ALPHA, family="sdxl")
    with pytest.raises(InvalidRequest, match="reserved"):
        save_kohya_lora(target, unet_state, [], RANK, ALPHA, metadata={"ss_network_dim": "128"})
    with pytest.raises(InvalidRequest, match="matching"):
        save_kohya_lora(target, {k: v for k, v in unet_state.items() if "lora_B" not in k},
                        [], RANK, ALPHA)
    assert not target.exists()


def test_load_rejects_foreign_or_broken_files(sd15, tmp_path):
    _, (unet_state, _) = sd15
    with pytest.raises(LoraFileError, match="does not exist"):
        load_kohya_lora(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(LoraFileError, match="readable"):
        load_kohya_lora(garbage)
    peft_file = tmp_path / "peft.safetensors"
    save_file({k: v.contiguous() for k, v in unet_state.items()}, peft_file)
    with pytest.raises(LoraFileError, match="kohya"):
        load_kohya_lora(peft_file)
