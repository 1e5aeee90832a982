"""The tiny-random preset: offline, deterministic, SD1.5/SDXL-shaped, fast (noise only)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from easyphoto.train.tiny import (
    TINY_IMAGE_SIZE,
    build_tiny_sd15,
    build_tiny_tokenizer,
    save_tiny_sd15,
    tiny_pipeline,
    tiny_sdxl_pipeline,
)

pytestmark = pytest.mark.usefixtures("offline")


CAPTION = "easyphoto_face, easyphoto, 1person"


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline(seed=0)


def generate(pipeline, seed: int, prompt: str = CAPTION, **kwargs) -> np.ndarray:
    out = pipeline(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(seed),
                   output_type="np", **kwargs)
    return out.images


def test_tokenizer_is_built_offline_and_encodes_every_character():
    tokenizer = build_tiny_tokenizer()
    ids = tokenizer(CAPTION, padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert tokenizer.model_max_length == 77 and len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    content = ids[1:ids.index(tokenizer.eos_token_id)]
    # one token per character (no merges), none of them unknown (unk == eos here)
    assert len(content) == len(CAPTION.replace(" ", ""))
    assert tokenizer.decode(content).replace(" ", "") == CAPTION.replace(" ", "")
    assert len(tokenizer) == 514


def test_generation_is_deterministic_per_seed(pipe):
    first, again, other = generate(pipe, 0), generate(pipe, 0), generate(pipe, 1)
    assert first.shape == (1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    assert np.isfinite(first).all() and 0.0 <= first.min() and first.max() <= 1.0
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1e-4


def test_tiny_is_tiny_and_fast(pipe):
    # parameter counts are the deterministic guard; the wall-clock bound only catches gross
    # regressions (a loaded 2-core CI box can be 10× slower than the ~0.05 s this takes)
    sizes = {name: sum(p.numel() for p in getattr(pipe, name).parameters())
             for name in ("unet", "vae", "text_encoder")}
    assert sizes["unet"] < 1_000_000 and sizes["vae"] < 500_000 and sizes["text_encoder"] < 100_000
    generate(pipe, 0)  # warm-up
    start = time.perf_counter()
    generate(pipe, 3)
    assert time.perf_counter() - start < 10.0


def test_weights_depend_only_on_the_seed_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b, c = build_tiny_sd15(0), build_tiny_sd15(0), build_tiny_sd15(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for name, tensor in a.unet.state_dict().items():
        assert torch.equal(tensor, b.unet.state_dict()[name]), name
    assert not torch.equal(a.unet.conv_in.weight, c.unet.conv_in.weight)
    assert not torch.equal(a.text_encoder.embeddings.token_embedding.weight,
                           c.text_encoder.embeddings.token_embedding.weight)
    # asking for a ControlNet does not change the other components
    with_cn = build_tiny_sd15(0, controlnets=("canny", "openpose"))
    assert torch.equal(with_cn.unet.conv_in.weight, a.unet.conv_in.weight)
    assert torch.equal(with_cn.vae.encoder.conv_in.weight, a.vae.encoder.conv_in.weight)
    # ... and a ControlNet's weights depend on its name, not on the others requested
    alone = build_tiny_sd15(0, controlnets=("openpose",)).controlnets["openpose"].state_dict()
    for name, tensor in with_cn.controlnets["openpose"].state_dict().items():
        assert torch.equal(tensor, alone[name]), name


def test_sd15_shapes():
    parts = build_tiny_sd15(0)
    assert 2 ** (len(parts.vae.config.block_out_channels) - 1) == 8
    assert parts.unet.config.cross_attention_dim == parts.text_encoder.config.hidden_size == 32
    # SD1.5 uses 1×1 convolutions for proj_in / proj_out
    proj_in = parts.unet.down_blocks[0].attentions[0].proj_in
    assert isinstance(proj_in, torch.nn.Conv2d) and proj_in.kernel_size == (1, 1)
    ids = parts.tokenizer(CAPTION, padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = parts.text_encoder(ids)[0]
        latent = parts.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        noise = parts.unet(latent, 999, hidden).sample
    assert hidden.shape == (1, 77, 32) and latent.shape == (1, 4, 8, 8)
    assert noise.shape == latent.shape


def test_saved_folder_loads_offline_and_matches(pipe, tmp_path):
    from diffusers import ControlNetModel, StableDiffusionPipeline

    folder = save_tiny_sd15(tmp_path / "tiny", seed=0, controlnets=("canny",))
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    assert (folder / "model_index.json").is_file()
    assert (folder / "tokenizer" / "vocab.json").is_file()
    loaded = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True,
                                                     safety_checker=None)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(generate(loaded, 5), generate(pipe, 5), atol=1e-6)
    net = ControlNetModel.from_pretrained(folder / "controlnet-canny", local_files_only=True)
    assert net.config.cross_attention_dim == 32


def test_controlnet_image_changes_the_output():
    from diffusers import StableDiffusionControlNetPipeline

    parts = build_tiny_sd15(0, controlnets=("canny",))
    cn_pipe = StableDiffusionControlNetPipeline(controlnet=parts.controlnets["canny"],
                                                **parts.pipeline_kwargs())
    cn_pipe.set_progress_bar_config(disable=True)
    blank = np.zeros((64, 64, 3), np.uint8)
    edges = blank.copy()
    edges[16:48:4] = 255
    a = generate(cn_pipe, 0, image=Image.fromarray(blank))
    b = generate(cn_pipe, 0, image=Image.fromarray(edges))
    assert a.shape == (1, 64, 64, 3) and np.abs(a - b).max() > 1e-3


def test_sdxl_pipeline_generates():
    sdxl = tiny_sdxl_pipeline(seed=0)
    image = generate(sdxl, 0)
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    np.testing.assert_array_equal(image, generate(sdxl, 0))
