"""Channels-last GroupNorm (easyphoto.train.nhwc_group_norm). The Triton kernels need a CUDA
GPU (those tests run on the device machine); the switching logic is checked everywhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from easyphoto.train.nhwc_group_norm import (NhwcGroupNorm, nhwc_applies, nhwc_group_norms,
                                             triton_usable)

cuda = pytest.mark.skipif(not triton_usable(), reason="needs a CUDA GPU and triton")


def _model():
    return torch.nn.Sequential(torch.nn.Conv2d(4, 64, 3, padding=1), torch.nn.GroupNorm(32, 64),
                               torch.nn.SiLU(), torch.nn.Conv2d(64, 4, 1))


def test_cpu_models_keep_pytorch_group_norm():
    model = _model().to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 8, 8).to(memory_format=torch.channels_last)
    expected = model(x)
    with nhwc_group_norms([model]) as switched:
        got = model(x)
        assert not nhwc_applies(model[1], x)  # a CPU tensor
    assert switched == 0  # a CPU model: never switched, with or without Triton and a GPU
    torch.testing.assert_close(got, expected)
    assert "forward" not in model[1].__dict__


def test_applies_only_where_the_kernels_are_exact():
    norm = torch.nn.GroupNorm(4, 16).requires_grad_(False)
    x = torch.randn(1, 16, 4, 4)
    assert not nhwc_applies(norm, x)  # CPU, NCHW
    assert not nhwc_applies(torch.nn.GroupNorm(1, 16 * 9), torch.randn(1, 144, 2, 2))


def _inputs(shape, dtype, offset=3.0, seed=0):
    g = torch.Generator("cuda").manual_seed(seed)
    x = (torch.randn(shape, generator=g, device="cuda") * 2 + offset).to(dtype)
    dy = torch.randn(shape, generator=g, device="cuda").to(dtype)
    return x.to(memory_format=torch.channels_last), dy.to(memory_format=torch.channels_last)


@cuda
@pytest.mark.parametrize("shape,groups", [((4, 320, 64, 64), 32), ((2, 960, 16, 16), 32),
                                          ((3, 1280, 8, 8), 32), ((2, 96, 5, 7), 32),
                                          ((1, 2560, 8, 8), 32), ((2, 64, 3, 3), 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_and_input_gradient_equal_pytorch(shape, groups, dtype):
    x, dy = _inputs(shape, dtype)
    channels = shape[1]
    weight = (torch.rand(channels, device="cuda") + 0.5).to(dtype)
    bias = torch.randn(channels, device="cuda").to(dtype)
    ours_x = x.detach().clone().requires_grad_(True)
    ours = NhwcGroupNorm.apply(ours_x, groups, weight, bias, 1e-5)
    ours.backward(dy)
    ref_x = x.float().contiguous().requires_grad_(True)  # fp32 NCHW PyTorch reference
    ref = F.group_norm(ref_x, groups, weight.float(), bias.float(), 1e-5)
    ref.backward(dy.float().contiguous())
    assert ours.is_contiguous(memory_format=torch.channels_last) and ours.dtype == dtype
    assert ours_x.grad.is_contiguous(memory_format=torch.channels_last)
    tol = dict(atol=2e-4, rtol=2e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(ours.float(), ref, **tol)
    torch.testing.assert_close(ours_x.grad.float(), ref_x.grad, **tol)


@cuda
def test_without_affine_and_captured_in_a_cuda_graph():
    x, dy = _inputs((2, 128, 16, 16), torch.bfloat16)
    static_x = x.detach().clone().requires_grad_(True)
    NhwcGroupNorm.apply(static_x, 32, None, None, 1e-6).backward(dy)  # warm-up (compiles)
    static_x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = NhwcGroupNorm.apply(static_x, 32, None, None, 1e-6)
        out.backward(dy)
    with torch.no_grad():
        static_x.copy_(x * 0.5 - 1)
    graph.replay()
    ref_x = (x * 0.5 - 1).float().contiguous().requires_grad_(True)
    ref = F.group_norm(ref_x, 32, None, None, 1e-6)
    ref.backward(dy.float().contiguous())
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(static_x.grad.float(), ref_x.grad, atol=3e-2, rtol=2e-2)


@cuda
def test_switched_model_trains_like_pytorch():
    """A conv → GroupNorm → SiLU → conv model in channels-last: output and the first conv's
    weight gradient equal PyTorch's with and without the switch (norm affine frozen)."""
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = False  # TF32 convolutions would round the difference up
    model = _model().cuda().to(memory_format=torch.channels_last)
    model[1].requires_grad_(False)
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5), model[1].bias.normal_()
    x = torch.randn(2, 4, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    results = []
    for switch in (False, True):
        context = nhwc_group_norms([model]) if switch else torch.autograd.graph.saved_tensors_hooks(
            lambda t: t, lambda t: t)
        with context:
            out = model(x)
            out.square().mean().backward()
        results.append((out.detach(), model[0].weight.grad.clone()))
        model.zero_grad(set_to_none=True)
    torch.backends.cudnn.allow_tf32 = True
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-4, rtol=1e-3)


_INTERPRETED = r"""
import json, sys
import torch, torch.nn.functional as F
from easyphoto.train.nhwc_group_norm import NhwcGroupNorm
torch.manual_seed(0)
errors = []
for shape, groups, affine in [((2, 96, 5, 7), 32, True), ((1, 64, 9, 9), 1, False),
                              ((2, 640, 4, 4), 32, True), ((1, 160, 40, 3), 32, True)]:
    x = (torch.randn(shape) * 2 + 3).to(memory_format=torch.channels_last)
    dy = torch.randn(shape).to(memory_format=torch.channels_last)
    weight = torch.rand(shape[1]) + 0.5 if affine else None
    bias = torch.randn(shape[1]) if affine else None
    ours_x = x.clone().requires_grad_(True)
    ours = NhwcGroupNorm.apply(ours_x, groups, weight, bias, 1e-5)
    ours.backward(dy)
    ref_x = x.contiguous().requires_grad_(True)
    F.group_norm(ref_x, groups, weight, bias, 1e-5).backward(dy.contiguous())
    ref = F.group_norm(x.contiguous(), groups, weight, bias, 1e-5)
    errors.append([float((ours - ref).abs().max()), float((ours_x.grad - ref_x.grad).abs().max()),
                   ours.is_contiguous(memory_format=torch.channels_last),
                   ours_x.grad.is_contiguous(memory_format=torch.channels_last)])
print(json.dumps(errors))
"""


def test_kernels_equal_pytorch_in_the_triton_interpreter():
    """The Triton kernels themselves, on the CPU (Triton's interpreter), against PyTorch's
    GroupNorm: output and input gradient, odd sizes (HW not a multiple of the tile, 3
    channels per group, one group), channels-last results."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    if torch.cuda.is_available():  # (the interpreter trips over NumPy 2 there)
        pytest.skip("a GPU is here: the CUDA tests run the kernels themselves")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(errors) == 4
    for out_error, grad_error, out_nhwc, grad_nhwc in errors:
        assert out_error < 1e-4 and grad_error < 1e-4 and out_nhwc and grad_nhwc, errors


def test_warm_up_only_where_the_kernels_run():
    from easyphoto.params import TrainRequest
    from easyphoto.train.lora import TrainSpeedups
    from easyphoto.train.start_up import TrainingStartUp, triton_kernels

    request = TrainRequest(user_id="u", base_model="", mixed_precision="bf16")
    if not triton_usable():
        assert triton_kernels(TrainSpeedups(), torch.bfloat16) == []
        assert TrainingStartUp(request).triton is None
        return
    names = [name for name, _ in triton_kernels(TrainSpeedups(), torch.bfloat16)]
    assert names == ["channels-last GroupNorm", "fused GEGLU"]  # bf16: channels-last
    assert [n for n, _ in triton_kernels(TrainSpeedups(), torch.float16)] == ["fused GEGLU"]
    thread = TrainingStartUp(request).triton
    assert thread is not None
    thread.join(timeout=120)
    assert not thread.is_alive()


def test_kernels_that_fail_leave_pytorch_group_norm_with_a_warning(monkeypatch, caplog):
    """A GPU where the Triton kernels do not compile or run: no layer is switched and a
    warning says why (training goes on with PyTorch's GroupNorm)."""
    from easyphoto.train import nhwc_group_norm

    def broken(dtype, device="cuda"):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(nhwc_group_norm, "warm_up", broken)
    with caplog.at_level("WARNING"):
        assert not nhwc_group_norm._warmed_up(torch.bfloat16, "cuda")
    assert "channels-last GroupNorm unavailable (RuntimeError: no kernel for this GPU)" in \
        caplog.text
    monkeypatch.setattr(nhwc_group_norm, "triton_usable", lambda: True)
    model = _model()  # CPU weights: the kernels cannot run for it
    with nhwc_group_norms([model]) as switched:
        assert "forward" not in model[1].__dict__
    assert switched == 0
