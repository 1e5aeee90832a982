"""Scoring validation renders with real photos, and LoRA fusion (SPEC 1.4).

Renders here are real photos or flat images written as JPEG files: scoring needs real faces
(the tiny-random models render noise), fusion needs only scores and checkpoint files. The
render → score → fuse chain on the tiny pipeline is in ``test_validate.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from easyphoto.face import get_face_backend
from easyphoto.face.types import Box
from easyphoto.train.fusion import choose_and_fuse
from easyphoto.train.lora_io import save_kohya_lora
from easyphoto.train.validate import NO_FACE, Render, encode_jpeg, score_renders

RANK, ALPHA = 4, 2.0


pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def backend():
    return get_face_backend("lite")


# ---- scoring with real photos -------------------------------------------------------------------
def photo_render(rgb, name: str, step: int, path=None) -> Render:
    box = Box(0, 0, 1, 1)
    return Render(step, name.split(".")[0], None, rgb(name), path, box, box, 1, "canny", 0)


@pytest.fixture(scope="module")
def train_embeddings(backend, rgb):
    rows = []
    for name in ("obama.jpg", "obama3.jpg"):
        image = rgb(name)
        face = max(backend.detect(image), key=lambda f: f.box.area)
        rows.append(backend.embed(image, face))
    return np.stack(rows)


def test_scores_rank_the_same_person_first(rgb, backend, train_embeddings):
    renders = [photo_render(rgb, n, 100) for n in ("biden.jpg", "obama2.jpg", "coffee.png")]
    biden, obama, coffee = score_renders(renders, train_embeddings, backend)
    assert -1.0 <= biden.score < obama.score <= 1.0
    assert obama.score > 0.9 and biden.score < obama.score - 0.1  # dlib: ~0.96 vs ~0.81
    assert coffee.score is None and coffee.reason == NO_FACE
    assert renders[1] is obama and renders[2].reason == NO_FACE  # scored in place


# ---- fusion math --------------------------------------------------------------------------------
def random_checkpoint(path, seed: int):
    g = torch.Generator().manual_seed(seed)
    unet = {"mid_block.attentions.0.proj_in.lora_A.weight": torch.randn(RANK, 64, generator=g),
            "mid_block.attentions.0.proj_in.lora_B.weight": torch.randn(64, RANK, generator=g)}
    te = {"text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight":
          torch.randn(RANK, 32, generator=g),
          "text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight":
          torch.randn(32, RANK, generator=g)}
    return save_kohya_lora(path, unet, [te], RANK, ALPHA)


def fake_render(tmp_path, step: int, index: int, score) -> Render:
    image = np.full((16, 16, 3), (step // 10 + index * 7) % 256, np.uint8)
    path = tmp_path / f"step{step}_t{index}.jpg"
    path.write_bytes(encode_jpeg(image))
    box = Box(0, 0, 16, 16)
    return Render(step, f"t{index}", tmp_path / f"{step}.safetensors", image, path, box, box,
                  1, "canny", 0, score, None if score is not None else NO_FACE)


@pytest.fixture
def checkpoints(tmp_path):
    return {step: random_checkpoint(tmp_path / f"{step}.safetensors", step)
            for step in (100, 200, 300, 400, 500)}


def test_fused_lora_is_the_count_over_k_average(tmp_path, checkpoints):
    # 10 best renders point at checkpoints [100, 200, 200, 300, 300, 300, 400 ×4]
    steps = [100, 200, 200, 300, 300, 300, 400, 400, 400, 400]
    renders = [fake_render(tmp_path, s, i, 0.9 - 0.01 * i) for i, s in enumerate(steps)]
    renders += [fake_render(tmp_path, 500, 20, 0.5), fake_render(tmp_path, 500, 21, None)]
    result = choose_and_fuse(renders[::-1], checkpoints, 10, tmp_path / "out" / "lora.safetensors")
    counts = {100: 1, 200: 2, 300: 3, 400: 4}
    assert [(w["step"], w["count"], w["weight"]) for w in result.weights] == \
        [(s, c, c / 10) for s, c in counts.items()]
    assert result.k == 10 and not result.fallback and result.face_id_source == "render"
    files = {s: load_file(checkpoints[s]) for s in counts}
    fused = load_file(tmp_path / "out" / "lora.safetensors")
    assert set(fused) == set(files[100])
    for key, tensor in fused.items():
        expected = files[100][key] if key.endswith(".alpha") else \
            sum(files[s][key] * (c / 10) for s, c in counts.items())
        torch.testing.assert_close(tensor, expected, rtol=1e-6, atol=1e-6)
    assert (tmp_path / "out" / "face_id.jpg").read_bytes() == renders[0].path.read_bytes()
    assert [r.step for r in result.chosen] == steps and len(result.renders) == 12
    json.dumps(result.to_dict())


def test_ties_and_fewer_scored_renders_than_k(tmp_path, checkpoints):
    renders = [fake_render(tmp_path, 100, 0, 0.8), fake_render(tmp_path, 300, 1, 0.8),
               fake_render(tmp_path, 200, 2, 0.5), fake_render(tmp_path, 500, 3, None)]
    result = choose_and_fuse(renders, checkpoints, 10, tmp_path / "lora.safetensors")
    assert result.k == 3 and result.chosen[0].step == 300  # tie → the later checkpoint
    assert [(w["step"], w["weight"]) for w in result.weights] == \
        [(100, 1 / 3), (200, 1 / 3), (300, 1 / 3)]
    assert (tmp_path / "face_id.jpg").read_bytes() == renders[1].path.read_bytes()


def test_no_face_anywhere_falls_back_to_final_checkpoint_and_reference(tmp_path, checkpoints,
                                                                      photo):
    renders = [fake_render(tmp_path, s, 0, None) for s in (100, 200, 500)]
    result = choose_and_fuse(renders, checkpoints, 10, tmp_path / "user" / "lora.safetensors",
                             ref_image=photo("obama.jpg"))
    assert result.fallback and "no face" in result.reason and "final checkpoint" in result.message
    assert (tmp_path / "user" / "lora.safetensors").read_bytes() == checkpoints[500].read_bytes()
    assert (tmp_path / "user" / "face_id.jpg").read_bytes() == photo("obama.jpg").read_bytes()
    assert result.face_id_source == "reference image" and result.chosen == []
    assert json.loads(json.dumps(result.to_dict()))["fallback"] is True


def test_checkpoints_kept_in_memory_fuse_without_reading_their_tensors(tmp_path, checkpoints,
                                                                       monkeypatch):
    """Checkpoints that carry their tensors (``Checkpoint.lora``) are averaged from memory:
    the same fused file as from the files, and no checkpoint file's tensors are read."""
    from safetensors.torch import load_file as load

    from easyphoto.train import lora_io
    from easyphoto.train.lora import Checkpoint, LoraSnapshot

    def kept(step):  # the checkpoint's states, as training keeps them
        lora = lora_io.load_kohya_lora(checkpoints[step])
        snapshot = LoraSnapshot(lora.unet, lora.text_encoders, RANK, ALPHA, {}, "sd15")
        tensors = snapshot.kohya_tensors()
        on_disk = load(checkpoints[step])
        assert tensors.keys() == on_disk.keys() and all(
            torch.equal(tensors[k], on_disk[k]) for k in tensors)
        return Checkpoint(step, checkpoints[step], snapshot)

    steps = [100, 200, 200, 300]
    renders = [fake_render(tmp_path, s, i, 0.9 - 0.01 * i) for i, s in enumerate(steps)]
    from_files = choose_and_fuse(renders, checkpoints, 10, tmp_path / "files" / "lora.safetensors")
    objects = [kept(step) for step in sorted(checkpoints)]
    monkeypatch.setattr(lora_io, "read_kohya_file", lambda path: pytest.fail(f"read {path}"))
    from_memory = choose_and_fuse(renders, objects, 10, tmp_path / "memory" / "lora.safetensors")
    assert from_memory.weights == from_files.weights
    ours, theirs = load(from_memory.lora_path), load(from_files.lora_path)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
