"""LoRA training on the tiny-random preset (CPU): loss, checkpoints, kohya files, cancel, SDXL,
determinism, and the latent cache's augmentation geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from easyphoto.errors import InvalidRequest
from easyphoto.params import CAPTION, TrainRequest
from easyphoto.progress import CancelToken, Cancelled
from easyphoto.train.latent_cache import build_latent_cache, make_variants
from easyphoto.train.loading import load_components
from easyphoto.train.lora import LoraTrainer, train_lora
from easyphoto.train.lora_io import load_kohya_lora, read_kohya_metadata
from easyphoto.train.tiny import tiny_pipeline

pytestmark = pytest.mark.usefixtures("offline", "one_thread")


RES = 64  # the tiny preset's image size: latents (4, 8, 8)


def write_dataset(folder, sizes=((64, 80), (96, 64), (64, 64)), seed=0):
    """The preprocess layout: NNN.png (short side = RES) + metadata.jsonl with the caption."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for index, (height, width) in enumerate(sizes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:03d}.png")
        lines.append(json.dumps({"file_name": f"{index:03d}.png", "text": CAPTION}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data") / "dataset")


def request(**overrides) -> TrainRequest:
    values = dict(user_id="u", resolution=RES, rank=4, network_alpha=2, learning_rate=1e-3,
                  validation_steps=3, seed=5)
    values.update(overrides)
    return TrainRequest(**values)


def run(dataset, out_dir, steps, sdxl=False, **overrides):
    components = load_components("tiny-random", sdxl=sdxl, device="cpu", with_canny=False)
    return components, train_lora(components, dataset, request(sdxl=sdxl, **overrides),
                                  out_dir, steps)


def test_loss_decreases_on_a_fixed_batch(tmp_path):
    """30 optimiser steps on one image with fixed latents, noise and timesteps: the objective
    is deterministic, so the LoRA must fit it (measured: last/first ≈ 0.5 at this lr)."""
    data = write_dataset(tmp_path / "one", sizes=((RES, RES),))
    components = load_components("tiny-random", sdxl=False, with_canny=False)
    req = request(rank=8, network_alpha=8, learning_rate=3e-3, random_flip=False).resolved()
    cache = build_latent_cache(components, data, RES, False, req.seed)
    trainer = LoraTrainer(components, req, total_steps=30)
    batch = trainer.draw_batch(cache)
    losses = [float(trainer.step(batch)) for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses


def test_checkpoints_at_every_interval_and_the_final_step(dataset, tmp_path):
    events = []
    components = load_components("tiny-random", sdxl=False, with_canny=False)
    out = train_lora(components, dataset, request(), tmp_path, 7, progress=events.append)
    assert [c.step for c in out.checkpoints] == [3, 6, 7]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-3.safetensors", "checkpoint-6.safetensors", "checkpoint-7.safetensors"]
    train_events = [e for e in events if e.stage == "train"]
    assert [e.done for e in train_events] == list(range(1, 8))
    assert all(e.total == 7 and e.loss is not None for e in train_events)
    assert any(e.stage == "latents" for e in events)
    assert len(out.losses) == 7 and all(np.isfinite(out.losses))
    assert {"latents", "train", "checkpoints", "total"} <= set(out.seconds)
    files = [load_file(str(c.path)) for c in out.checkpoints]
    for checkpoint in out.checkpoints:
        lora = load_kohya_lora(checkpoint.path)
        assert (lora.rank, lora.alpha) == (4, 2.0) and lora.unet and lora.text_encoders[0]
        meta = read_kohya_metadata(checkpoint.path)
        assert meta["easyphoto_step"] == str(checkpoint.step)
        assert meta["easyphoto_base_id"] == "tiny-random" and meta["easyphoto_family"] == "sd15"
    keys = set(files[0])
    assert {k.split("_")[1] for k in keys} == {"unet", "te"}
    for first, second in [(0, 1), (1, 2)]:
        ups = [k for k in keys if k.endswith("lora_up.weight")]
        assert any(not torch.equal(files[first][k], files[second][k]) for k in ups)


def test_interval_larger_than_total_saves_only_the_final_step(dataset, tmp_path):
    _, out = run(dataset, tmp_path, 2, validation_steps=100)
    assert [(c.step, c.path.name) for c in out.checkpoints] == [(2, "checkpoint-2.safetensors")]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-2.safetensors"]


def test_trained_file_loads_in_diffusers_and_changes_the_output(dataset, tmp_path):
    _, out = run(dataset, tmp_path, 4, learning_rate=1e-2, validation_steps=4)
    pipe = tiny_pipeline(seed=0)  # same base weights as load_components("tiny-random")

    def render():
        generator = torch.Generator().manual_seed(0)
        return pipe(CAPTION, num_inference_steps=2, generator=generator, output_type="np").images

    before = render()
    pipe.load_lora_weights(str(out.checkpoints[-1].path))
    after = render()
    assert before.shape == after.shape == (1, RES, RES, 3)
    assert np.abs(after - before).max() > 1e-3


def test_cancel_from_progress_stops_after_step_2(dataset, tmp_path):
    token = CancelToken()

    def progress(event):
        if event.stage == "train" and event.done == 2:
            token.cancel()

    components = load_components("tiny-random", sdxl=False, with_canny=False)
    with pytest.raises(Cancelled):
        train_lora(components, dataset, request(validation_steps=1), tmp_path, 10,
                   progress=progress, cancel=token)
    # checkpoints written before the cancel stay; the runner removes the run folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-1.safetensors", "checkpoint-2.safetensors"]


def test_sdxl_two_steps_save_both_text_encoders(dataset, tmp_path):
    _, out = run(dataset, tmp_path, 2, sdxl=True, validation_steps=1)
    assert [c.step for c in out.checkpoints] == [1, 2]
    keys = set(load_file(str(out.checkpoints[-1].path)))
    assert {k.split("_")[1] for k in keys} == {"unet", "te1", "te2"}
    assert read_kohya_metadata(out.checkpoints[-1].path)["ss_base_model_version"].startswith("sdxl")
    lora = load_kohya_lora(out.checkpoints[-1].path)
    assert len(lora.text_encoders) == 2 and all(lora.text_encoders)


def test_same_seed_gives_identical_checkpoints(dataset, tmp_path):
    tensors = []
    for name, seed in [("a", 11), ("b", 11), ("c", 12)]:
        _, out = run(dataset, tmp_path / name, 3, seed=seed)
        tensors.append(load_file(str(out.checkpoints[-1].path)))
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    assert any(not torch.equal(tensors[0][k], tensors[2][k]) for k in tensors[0])


def test_training_twice_on_the_same_models_starts_afresh(dataset, tmp_path):
    """A second run on the same components replaces the first run's adapter (same seed, same
    file), so the loaded models can be reused."""
    components = load_components("tiny-random", sdxl=False, with_canny=False)
    files = []
    for name in ("first", "second"):
        out = train_lora(components, dataset, request(), tmp_path / name, 2)
        files.append(load_file(str(out.checkpoints[-1].path)))
    assert all(torch.equal(files[0][k], files[1][k]) for k in files[0])


def test_micro_batches_give_the_same_training(dataset, tmp_path):
    """batch 1 × accumulation 4 as one pass of 4 or as 4 passes of 1: same gradients (up to
    float summation order), so the same LoRA."""
    results = []
    for name, micro in [("whole", None), ("split", 1)]:  # (the CPU: fp32, exact kernels)
        components = load_components("tiny-random", sdxl=False, device="cpu", with_canny=False)
        out = train_lora(components, dataset, request(), tmp_path / name, 3, micro_batch=micro)
        results.append((out.losses, load_file(str(out.checkpoints[-1].path))))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4)
    for key, value in results[0][1].items():
        torch.testing.assert_close(value.float(), results[1][1][key].float(), atol=2e-3,
                                   rtol=1e-2)


def test_variants_crop_and_flip_geometry():
    """A 64×80 image: crops along the width at offsets 0..16, each also mirrored; the mirrored
    crop's SDXL crop coordinates are measured in the mirrored image."""
    import random

    pixels = np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    variants = make_variants(0, pixels, RES, True, random.Random(0))
    assert 2 <= len(variants) <= 6 and len(variants) % 2 == 0
    for plain, mirrored in zip(variants[::2], variants[1::2]):
        top, left = plain.crop_top_left
        assert plain.pixels.shape == (RES, RES, 3) and plain.original_size == (64, 80)
        assert np.array_equal(plain.pixels, pixels[:, left:left + RES])
        assert np.array_equal(mirrored.pixels, plain.pixels[:, ::-1])
        assert mirrored.crop_top_left == (0, 80 - left - RES)
    square = make_variants(0, pixels[:, :RES], RES, False, random.Random(0))
    assert len(square) == 1
    upscaled = make_variants(0, pixels[:32, :40], RES, False, random.Random(0))
    assert upscaled[0].original_size == (64, 80)


def test_dataset_without_metadata_is_refused(tmp_path):
    components = load_components("tiny-random", sdxl=False, with_canny=False)
    with pytest.raises(InvalidRequest, match="metadata.jsonl.*preprocessing"):
        train_lora(components, tmp_path, request(), tmp_path / "out", 2)


def test_checkpoints_written_in_the_background_hold_their_own_step(dataset, tmp_path):
    """Checkpoints are written on a background thread while training goes on: each file must
    hold the LoRA of its step, not a later one. With an ``on_checkpoint`` callback the loop
    waits for each file, so the callback sees the live LoRA and the file side by side."""
    from peft import get_peft_model_state_dict

    from easyphoto.train.lora import ADAPTER

    seen = {}
    components = load_components("tiny-random", sdxl=False, device="cpu", with_canny=False)

    def compare(checkpoint):
        live = get_peft_model_state_dict(components.unet, adapter_name=ADAPTER)
        seen[checkpoint.step] = {k: v.detach().half().clone() for k, v in live.items()}
        assert checkpoint.path.is_file()

    train_lora(components, dataset, request(), tmp_path / "waited", 7, on_checkpoint=compare)
    _, out = run(dataset, tmp_path / "background", 7)
    assert sorted(seen) == [c.step for c in out.checkpoints] == [3, 6, 7]
    for checkpoint in out.checkpoints:
        waited = load_file(tmp_path / "waited" / checkpoint.path.name)
        background = load_file(checkpoint.path)
        assert waited.keys() == background.keys()
        assert all(torch.equal(waited[k], background[k]) for k in waited)
        unet = load_kohya_lora(checkpoint.path).unet
        assert unet.keys() == seen[checkpoint.step].keys()
        assert all(torch.equal(unet[k], seen[checkpoint.step][k]) for k in unet)
    first, last = (load_kohya_lora(c.path).unet for c in (out.checkpoints[0], out.checkpoints[-1]))
    assert any(not torch.equal(first[k], last[k]) for k in first)  # training moved on


def test_a_failed_checkpoint_write_is_reported(dataset, tmp_path, monkeypatch):
    from easyphoto.train import lora

    real = lora.LoraSnapshot.write

    def write(snapshot, path):
        if "checkpoint-6" in str(path):
            raise OSError(28, "No space left on device")
        return real(snapshot, path)

    monkeypatch.setattr(lora.LoraSnapshot, "write", write)
    with pytest.raises(OSError, match="No space left on device"):
        run(dataset, tmp_path, 7)
    assert (tmp_path / "checkpoint-3.safetensors").is_file()


def _half_components(dtype=torch.bfloat16):
    """The tiny models in half precision on the CPU (what a GPU run trains with)."""
    import dataclasses

    components = load_components("tiny-random", sdxl=False, device="cpu", with_canny=False)
    for model in (components.unet, components.vae, *components.text_encoders):
        model.to(dtype)
    return dataclasses.replace(components, dtype=dtype)


def test_master_weights_train_half_weights_from_fp32_masters(tmp_path):
    """``master_weights``: the models' LoRA weights stay in half precision and always equal
    the optimiser's fp32 masters rounded; the loss falls on a fixed batch; checkpoints are
    written from the masters."""
    data = write_dataset(tmp_path / "one", sizes=((RES, RES),))
    components = _half_components()
    req = request(rank=8, network_alpha=8, learning_rate=3e-3, random_flip=False).resolved()
    cache = build_latent_cache(components, data, RES, False, req.seed)
    trainer = LoraTrainer(components, req, total_steps=30, master_weights=True)
    weights = trainer.unet_params + trainer.te_params
    assert trainer.masters and trainer.autocast_dtype is None
    assert all(w.dtype == torch.bfloat16 for w in weights)
    assert all(trainer.masters[w].dtype == torch.float32 for w in weights)
    start = {w: trainer.masters[w].clone() for w in weights}
    trainer.optimizer.zero_grad(set_to_none=True)  # as the CUDA-graph capture does first
    batch = trainer.draw_batch(cache)
    losses = [float(trainer.step(batch)) for _ in range(30)]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert any(not torch.equal(trainer.masters[w], start[w]) for w in weights)
    for weight in weights:
        assert torch.equal(weight.detach(), trainer.masters[weight].to(torch.bfloat16))
        assert weight.grad is None
    saved = load_kohya_lora(trainer.save(tmp_path / "ckpt.safetensors", 30)).unet
    from peft import get_peft_model_state_dict

    from easyphoto.train.lora import ADAPTER

    live = get_peft_model_state_dict(components.unet, adapter_name=ADAPTER)
    masters = {w.data_ptr(): m for w, m in trainer.masters.items()}
    assert saved.keys() == live.keys()
    for key, tensor in saved.items():
        master = masters[live[key].data_ptr()]
        assert torch.equal(tensor, master.half())  # from the master, not the bf16 weight
    assert any(not torch.equal(saved[k], live[k].half()) for k in saved)


def test_master_weights_are_off_for_fp32_models(dataset):
    components = load_components("tiny-random", sdxl=False, device="cpu", with_canny=False)
    trainer = LoraTrainer(components, request().resolved(), total_steps=2, master_weights=True)
    assert trainer.masters == {}
    assert all(p.dtype == torch.float32 for p in trainer.unet_params)


def test_master_weights_by_default_for_bf16_only(tmp_path, dataset):
    from easyphoto.train.lora import TrainSpeedups

    assert TrainSpeedups().masters_for(torch.bfloat16)
    assert not TrainSpeedups().masters_for(torch.float16)
    assert not TrainSpeedups().masters_for(torch.float32)
    assert not TrainSpeedups(master_weights=False).masters_for(torch.bfloat16)
    assert TrainSpeedups(master_weights=True).masters_for(torch.float16)
    with pytest.raises(InvalidRequest, match="attention"):
        TrainSpeedups(attention="fastest")
    components = _half_components()  # train_lora on bf16 models: masters, files from them
    out = train_lora(components, dataset, request(), tmp_path, 3)
    lora = load_kohya_lora(out.checkpoints[-1].path)
    assert lora.rank == 4 and all(t.dtype == torch.float16 for t in lora.unet.values())
    assert all(p.dtype == torch.bfloat16 for n, p in components.unet.named_parameters()
               if ".lora_" in n)


def test_kept_snapshots_hold_exactly_what_the_checkpoint_files_hold(dataset, tmp_path):
    """``keep_snapshots``: each checkpoint keeps its tensors in memory (validation applies them
    without reading the file back); they are the file's tensors, key for key, bit for bit."""
    components = load_components("tiny-random", sdxl=False, device="cpu", with_canny=False)
    out = train_lora(components, dataset, request(), tmp_path, 7, keep_snapshots=True)
    assert [c.step for c in out.checkpoints] == [3, 6, 7]
    for checkpoint in out.checkpoints:
        kept, read = checkpoint.lora.as_kohya_lora(), load_kohya_lora(checkpoint.path)
        assert (kept.rank, kept.alpha) == (read.rank, read.alpha) == (4, 2.0)
        for ours, theirs in zip([kept.unet, *kept.text_encoders],
                                [read.unet, *read.text_encoders], strict=True):
            assert ours.keys() == theirs.keys() and ours
            assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    _, plain = run(dataset, tmp_path / "plain", 3)
    assert plain.checkpoints[0].lora is None  # not kept unless asked


def test_read_ahead_reports_every_step_in_order_with_the_same_training(dataset, tmp_path):
    """Reading each loss only after the next step is queued changes when it is read, not what
    is trained: same losses, same checkpoint files, progress for every step in order with its
    own loss."""
    from easyphoto.train.lora import TrainSpeedups

    runs = {}
    for ahead in (True, False):
        events = []

        def progress(event, events=events):
            if event.stage == "train":
                events.append((event.done, event.loss))

        # the CPU: bit-exact reruns (CUDA attention backward may sum in another order)
        components = load_components("tiny-random", sdxl=False, device="cpu", with_canny=False)
        out = train_lora(components, dataset, request(), tmp_path / str(ahead), 7,
                         progress=progress, speedups=TrainSpeedups(read_ahead=ahead))
        assert [done for done, _ in events] == list(range(1, 8))
        assert [loss for _, loss in events] == out.losses
        runs[ahead] = out
    assert runs[True].losses == runs[False].losses
    for a, b in zip(runs[True].checkpoints, runs[False].checkpoints, strict=True):
        ours, theirs = load_file(str(a.path)), load_file(str(b.path))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
