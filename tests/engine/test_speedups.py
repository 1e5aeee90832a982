"""The engine's speed-ups change how, not what, it computes (tiny-random preset, CPU):
the own denoising loop returns the pipeline's bytes, fused LoRAs match the unmerged adapters,
switching users / weights / no LoRA unfuses to the pristine weights, and the graph step's
tensor scales reproduce the float ones."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from lora_helpers import add_random_lora

from easyphoto.engine import step_graphs
from easyphoto.engine.base import ControlUnit, Generation, LoraRef
from easyphoto.engine.denoise import Speedups, keep_scales
from easyphoto.engine.diffusers_engine import DiffusersEngine
from easyphoto.train.lora_io import save_kohya_lora
from easyphoto.train.tiny import build_tiny_sd15

SIZE = 64
GEN = Generation("easyphoto_face, easyphoto, 1person", "lowres", steps=8, cfg=7.0,
                 sampler="DPM++ 2M SDE Karras", seed=11)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def units(face) -> list:
    edges = np.repeat(cv2.Canny(face, 100, 200)[:, :, None], 3, axis=2)
    return [ControlUnit("canny", edges, 1.0), ControlUnit("openpose", face[:, ::-1].copy(), 0.65),
            ControlUnit("tile", face, 0.6, start=0.2, end=0.8)]


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> list:
    """Two users' kohya LoRAs (UNet + text encoder) for the tiny SD1.5 set."""
    folder, paths = tmp_path_factory.mktemp("users"), []
    for seed in (1, 2):
        tiny = build_tiny_sd15(0)
        states = add_random_lora([tiny.unet, tiny.text_encoder], seed=seed, scale=0.4)
        paths.append(str(save_kohya_lora(folder / f"user{seed}.safetensors", states[0],
                                         states[1:], 4, 2.0)))
    return paths


def with_(**changes) -> Generation:
    return dataclasses.replace(GEN, **changes)


@pytest.mark.parametrize("sampler", ["DPM++ 2M SDE Karras", "Euler a", "DDIM"])
def test_own_loop_returns_the_pipelines_bytes(face, mask, units, loras, sampler):
    """Same random draws, same operations: identical bytes (adapters unmerged on both)."""
    plain = DiffusersEngine("tiny-random", device="cpu", speedups=Speedups.off())
    own = DiffusersEngine("tiny-random", device="cpu",
                          speedups=dataclasses.replace(Speedups.off(), own_loop=True))
    generation = with_(sampler=sampler, controls=units, loras=[LoraRef(loras[0], 0.8)])
    expected = plain.inpaint(face, mask, 0.7, generation)
    assert own.inpaint(face, mask, 0.7, generation).tobytes() == expected.tobytes()
    assert own.last_call["own_loop"] and not plain.last_call["own_loop"]
    assert own.last_call["steps_run"] == 5 and not own.last_call["graphed"]


def base_weights(engine) -> dict:
    models = engine.models.get("sd15")
    return {(part, name.replace(".base_layer", "")): tensor.detach().clone()
            for part, model in (("unet", models.unet), ("te", models.text_encoders[0]))
            for name, tensor in model.state_dict().items() if "lora_" not in name}


def test_fused_lora_matches_adapters_and_switching_restores(face, mask, units, loras):
    fused = DiffusersEngine("tiny-random", device="cpu")
    adapters = DiffusersEngine("tiny-random", device="cpu",
                               speedups=dataclasses.replace(Speedups(), fuse_loras=False))
    pristine = base_weights(fused)
    calls = [[LoraRef(loras[0], 1.0)], [LoraRef(loras[0], 1.0)], [LoraRef(loras[0], 0.5)],
             [LoraRef(loras[1], 1.0)], [], [LoraRef(loras[0], 0.7), LoraRef(loras[1], 0.4)],
             [LoraRef(loras[0], 1.0)]]
    outputs = []
    for refs in calls:
        generation = with_(controls=units, loras=refs)
        got = fused.inpaint(face, mask, 0.7, generation)
        want = adapters.inpaint(face, mask, 0.7, generation)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05, (refs, diff.max(), diff.mean())
        lora_state = fused.models.get("sd15").loras
        assert (lora_state.fused is not None) == bool(refs)
        outputs.append(got)
    assert outputs[1].tobytes() == outputs[0].tobytes()  # the same set: merged once, kept
    assert outputs[-1].tobytes() == outputs[0].tobytes()  # back to user 1: the same merge
    assert len({out.tobytes() for out in outputs}) == 5
    fused.inpaint(face, mask, 0.7, with_(controls=units))  # no LoRA: unfused, disabled
    after = base_weights(fused)
    assert after.keys() == pristine.keys()
    assert all(torch.equal(after[key], pristine[key]) for key in pristine)


def test_merge_happens_once_per_set(face, mask, loras, monkeypatch):
    from easyphoto.engine.loras import LoraAdapters

    engine = DiffusersEngine("tiny-random", device="cpu")
    merges = []
    original = LoraAdapters._merge
    monkeypatch.setattr(LoraAdapters, "_merge",
                        lambda self, pipe, names: merges.append(names) or original(self, pipe,
                                                                                   names))
    user = [LoraRef(loras[0], 1.0)]
    for refs in (user, user, user, [LoraRef(loras[0], 0.9)], user):
        engine.inpaint(face, mask, 0.5, with_(steps=2, loras=refs))
    assert len(merges) == 3


def test_tensor_scales_reproduce_float_scales(face, mask, units):
    """The graph step's path (ControlNets at scale 1, then ``half(float(x)·s)``) equals the
    float-scale path; the per-step scales follow the pipeline's window rule."""
    tiny = build_tiny_sd15(0, controlnets=("canny", "tile"))
    nets = [tiny.controlnets["canny"], tiny.controlnets["tile"]]
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 8, 8, generator=generator)
    embeds = torch.randn(2, 77, tiny.unet.config.cross_attention_dim, generator=generator)
    conds = [torch.rand(2, 3, SIZE, SIZE, generator=generator) for _ in nets]
    t = torch.tensor(500)
    with torch.no_grad():
        embedded = [net.controlnet_cond_embedding(c) for net, c in zip(nets, conds)]
        floats = step_graphs.step_forward(tiny.unet, nets, sample, t, embeds, conds, [0.65, 0.3])
        with step_graphs.embedded_conditioning(nets):
            tensors = step_graphs.step_forward(
                tiny.unet, nets, sample, t, embeds, embedded,
                list(torch.tensor([0.65, 0.3], dtype=torch.float32)))
    assert not isinstance(nets[0].controlnet_cond_embedding, torch.nn.Identity)
    assert torch.equal(floats, tensors)
    assert keep_scales([1.0, 0.5], [0.0, 0.2], [1.0, 0.6], 5) == [
        [1.0, 0.0], [1.0, 0.5], [1.0, 0.5], [1.0, 0.0], [1.0, 0.0]]
