"""CUDA-only behaviour of training (skipped without a GPU; run on the device machine):
checkpoints written from snapshots while later steps are queued, kept snapshots = files."""

from __future__ import annotations

import pytest
import torch

from easyphoto.train.loading import load_components
from easyphoto.train.lora import LoraSnapshot, train_lora
from easyphoto.train.lora_io import load_kohya_lora

from test_lora_train import request, write_dataset  # (pytest puts this folder on sys.path)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_snapshot_comes_back_whole_while_the_training_stream_is_busy():
    generator = torch.Generator("cuda").manual_seed(0)
    state = {f"m{i}.lora_A.weight": torch.randn(64, 32 + i, generator=generator,
                                                device="cuda").half() for i in range(50)}
    ready = torch.cuda.Event()
    ready.record()
    snapshot = LoraSnapshot(state, [], 64, 32, {}, "sd15", ready)
    busy = torch.randn(4096, 4096, device="cuda")
    for _ in range(20):  # queued after the snapshot: on_host must not need them
        busy = busy @ busy / 64
    unet, text_encoders = snapshot.on_host()
    assert text_encoders == [] and unet.keys() == state.keys()
    assert all(unet[k].device.type == "cpu" and torch.equal(unet[k], state[k].cpu())
               for k in state)


def test_cuda_training_writes_and_keeps_the_same_checkpoints(tmp_path):
    dataset = write_dataset(tmp_path / "dataset")
    components = load_components("tiny-random", sdxl=False, device="cuda", with_canny=False)
    out = train_lora(components, dataset, request(), tmp_path / "run", 7, keep_snapshots=True)
    assert [c.step for c in out.checkpoints] == [3, 6, 7] and len(out.losses) == 7
    for checkpoint in out.checkpoints:
        kept, read = checkpoint.lora.as_kohya_lora(), load_kohya_lora(checkpoint.path)
        for ours, theirs in zip([kept.unet, *kept.text_encoders],
                                [read.unet, *read.text_encoders], strict=True):
            assert ours.keys() == theirs.keys() and ours
            assert all(_same_bits(ours[k].cpu(), theirs[k]) for k in ours)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (NaN included: fp16 training may overflow on the tiny models)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.view(torch.int16), b.view(torch.int16))


def test_cudnn_attention_warm_up_runs_the_sd15_shapes_and_matches_math():
    import torch.nn.functional as F

    from easyphoto.train.attention_warm_up import (cudnn_attention, start_attention_warm_up,
                                                   training_attention_shapes)

    warm = start_attention_warm_up("sd15", 512, 2, torch.bfloat16, "cuda")
    if warm is None:
        pytest.skip("this torch has no cuDNN attention with a priority order")
    assert warm.join(timeout=600), warm.error
    small_heads = [s for s in training_attention_shapes("sd15", 512) if s.head_dim <= 128]
    assert set(small_heads) <= set(warm.ran) and warm.choice() == "cudnn"
    generator = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 8, 1024, 80, generator=generator, device="cuda",
                           dtype=torch.bfloat16) for _ in range(3))
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    assert torch.allclose(cudnn_attention(q, k, v, False).float(), expected, atol=2e-2)
