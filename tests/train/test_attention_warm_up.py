"""cuDNN attention warm-up: the training's shapes, the choice it leads to, and that it never
breaks a training (CPU; the CUDA run is in test_cuda_training.py)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from easyphoto.params import TrainRequest
from easyphoto.train import attention_warm_up as aw
from easyphoto.train.attention_warm_up import (AttentionShape, AttentionWarmUp,
                                               start_attention_warm_up, training_attention_shapes)
from easyphoto.train.start_up import TrainingStartUp


def test_sd15_shapes_at_512():
    shapes = training_attention_shapes("sd15", 512)
    # 4 UNet levels × (self, cross) + CLIP-L's causal self-attention
    assert shapes == [AttentionShape(4096, 4096, 8, 40), AttentionShape(4096, 77, 8, 40),
                      AttentionShape(1024, 1024, 8, 80), AttentionShape(1024, 77, 8, 80),
                      AttentionShape(256, 256, 8, 160), AttentionShape(256, 77, 8, 160),
                      AttentionShape(64, 64, 8, 160), AttentionShape(64, 77, 8, 160),
                      AttentionShape(77, 77, 12, 64, causal=True)]


def test_sdxl_shapes_at_1024():
    shapes = training_attention_shapes("sdxl", 1024)
    assert AttentionShape(4096, 4096, 10, 64) in shapes
    assert AttentionShape(1024, 77, 20, 64) in shapes
    assert AttentionShape(77, 77, 20, 64, causal=True) in shapes  # OpenCLIP bigG
    assert len(shapes) == len(set(shapes)) == 6  # 2 UNet levels × (self, cross) + 2 encoders


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="sd3"):
        training_attention_shapes("sd3", 512)


def test_cpu_has_no_warm_up():
    assert start_attention_warm_up("sd15", 512, 4, torch.float32, "cpu") is None


def _math_attention(q, k, v, causal):
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def test_warm_up_runs_every_shape_forward_and_backward(monkeypatch):
    seen = []

    def recording(q, k, v, causal):
        seen.append((tuple(q.shape), tuple(k.shape), causal, q.requires_grad))
        return _math_attention(q, k, v, causal)

    monkeypatch.setattr(aw, "cudnn_attention", recording)
    shapes = training_attention_shapes("sd15", 64)
    warm = AttentionWarmUp(shapes, 2, torch.float32, "cpu")
    assert warm.join(timeout=60)
    assert warm.ran == shapes and warm.choice() == "cudnn"
    assert (2, 8, 64, 40) in [s[0] for s in seen]  # (B, heads, tokens, head size)
    assert ((2, 12, 77, 64), (2, 12, 77, 64), True, True) in seen


def test_unsupported_shapes_are_skipped(monkeypatch):
    def picky(q, k, v, causal):
        if q.shape[-1] > 128:
            raise RuntimeError("cuDNN: head dim not supported")
        return _math_attention(q, k, v, causal)

    monkeypatch.setattr(aw, "cudnn_attention", picky)
    warm = AttentionWarmUp(training_attention_shapes("sd15", 64), 1, torch.float32, "cpu")
    assert warm.join(timeout=60)
    assert all(s.head_dim <= 128 for s in warm.ran) and len(warm.ran) == 5


def test_no_shape_running_means_flash():
    # the real cuDNN operator on the CPU: every shape raises → flash attention
    warm = AttentionWarmUp(training_attention_shapes("sd15", 64)[:2], 1, torch.float32, "cpu")
    assert not warm.join(timeout=60)
    assert warm.ran == [] and warm.choice() == "flash"


def test_unfinished_warm_up_is_not_waited_for(monkeypatch):
    release = threading.Event()

    def slow(q, k, v, causal):
        release.wait(30)
        return _math_attention(q, k, v, causal)

    monkeypatch.setattr(aw, "cudnn_attention", slow)
    warm = AttentionWarmUp(training_attention_shapes("sd15", 64)[:1], 1, torch.float32, "cpu")
    assert warm.choice() == "flash"  # answered at once
    release.set()
    assert warm.join(timeout=30) and warm.choice() == "cudnn"


def _paced(monkeypatch, seconds: dict):
    """cuDNN attention stand-in taking ``seconds[head_dim]`` per call."""
    import time

    def paced(q, k, v, causal):
        time.sleep(seconds.get(q.shape[-1], 0.0))
        return _math_attention(q, k, v, causal)

    monkeypatch.setattr(aw, "cudnn_attention", paced)


def test_nearly_done_warm_up_is_waited_for_when_it_pays(monkeypatch):
    # 2 shapes of 0.3 s: after the first, ~0.3 s remain; 800 steps would save ~4 s
    _paced(monkeypatch, {8: 0.3})
    warm = AttentionWarmUp([AttentionShape(4, 4, 1, 8), AttentionShape(4, 77, 1, 8)], 1,
                           torch.float32, "cpu")
    while not warm.tried:
        threading.Event().wait(0.01)
    assert 0 < warm.remaining_s() < 1.0
    assert warm.choice(steps=800) == "cudnn" and warm.ready()


def test_long_warm_up_is_not_waited_for(monkeypatch):
    # the rest is estimated at ~8 × 0.3 s: more than half of what 100 steps save (0.25 s)
    _paced(monkeypatch, {8: 0.3})
    warm = AttentionWarmUp([AttentionShape(4, 4 + i, 1, 8) for i in range(9)], 1,
                           torch.float32, "cpu")
    while not warm.tried:
        threading.Event().wait(0.01)
    assert warm.choice(steps=100) == "flash" and not warm._done.is_set()
    assert warm.remaining_s() > 0.25
    assert warm.join(timeout=30)  # it finishes in the background


def test_failing_warm_up_reports_and_means_flash(monkeypatch):
    def broken(*args, **kwargs):
        raise MemoryError("no room")

    monkeypatch.setattr(aw, "warm_attention", broken)
    warm = AttentionWarmUp([AttentionShape(4, 4, 1, 8)], 1, torch.float32, "cpu")
    assert not warm.join(timeout=30)
    assert isinstance(warm.error, MemoryError) and warm.choice() == "flash"


def test_start_up_on_the_cpu_starts_nothing():
    start_up = TrainingStartUp(TrainRequest(user_id="u", base_model=""), device="cpu")
    assert (start_up.prefetch, start_up.triton, start_up.attention) == (None, None, None)
    speedups = start_up.speedups(cuda_graph=False)
    assert speedups.attention == "flash" and speedups.cuda_graph is False
    assert start_up.finish() is None
