"""GEGLU's fused gate: the Triton kernels against diffusers' chunk · gelu (Triton's
interpreter on the CPU; the GPU itself on CUDA), and the switch that installs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from easyphoto.train import fused_geglu
from easyphoto.train.fused_geglu import FusedGeglu, fused_gegelus, geglu_applies

_INTERPRETED = r"""
import json
import torch, torch.nn.functional as F
from easyphoto.train.fused_geglu import FusedGeglu
torch.manual_seed(0)
errors = []
for shape in [(2, 37, 2 * 150), (1, 5, 2 * 8), (3, 2 * 320)]:
    x = torch.randn(shape) * 3
    dy = torch.randn(*shape[:-1], shape[-1] // 2)
    ours_x = x.clone().requires_grad_(True)
    ours = FusedGeglu.apply(ours_x)
    ours.backward(dy)
    ref_x = x.clone().requires_grad_(True)
    h, g = ref_x.chunk(2, dim=-1)
    ref = h * F.gelu(g)
    ref.backward(dy)
    errors.append([float((ours - ref).abs().max()), float((ours_x.grad - ref_x.grad).abs().max()),
                   list(ours.shape) == list(ref.shape)])
print(json.dumps(errors))
"""


def test_kernels_equal_diffusers_gate_in_the_triton_interpreter():
    """Output and the whole input gradient (both halves), odd row and feature counts."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():  # (the interpreter trips over NumPy 2 there)
        pytest.skip("a GPU is here: the CUDA tests run the kernels themselves")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(errors) == 3
    for out_error, grad_error, same_shape in errors:
        assert out_error < 1e-5 and grad_error < 1e-5 and same_shape, errors


def _feed_forward():
    from diffusers.models.attention import FeedForward

    torch.manual_seed(0)
    return FeedForward(32, activation_fn="geglu")


def test_switch_counts_layers_and_restores_forward(monkeypatch):
    monkeypatch.setattr(fused_geglu, "triton_usable", lambda: True)
    monkeypatch.setattr(fused_geglu, "_kernels_run", lambda layer: True)
    model = _feed_forward()
    layer = model.net[0]
    x = torch.randn(2, 7, 32)
    before = model(x)
    with fused_gegelus([model]) as switched:
        assert switched == 1 and "forward" in layer.__dict__
        # on the CPU the fused gate does not apply: diffusers' computation, same result
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    assert "forward" not in layer.__dict__
    with pytest.raises(RuntimeError, match="boom"), fused_gegelus([model]):
        raise RuntimeError("boom")
    assert "forward" not in layer.__dict__


def test_no_triton_no_switch(monkeypatch):
    monkeypatch.setattr(fused_geglu, "triton_usable", lambda: False)
    with fused_gegelus([_feed_forward()]) as switched:
        assert switched == 0


def test_cpu_model_not_switched(monkeypatch):
    monkeypatch.setattr(fused_geglu, "triton_usable", lambda: True)
    model = _feed_forward()
    with fused_gegelus([model]) as switched:
        assert switched == 0 and "forward" not in model.net[0].__dict__


def test_kernels_that_fail_keep_diffusers_geglu_with_a_warning(monkeypatch, caplog):
    from types import SimpleNamespace

    def broken(dtype, device="cuda"):
        raise RuntimeError("no kernel for this GPU")

    monkeypatch.setattr(fused_geglu, "warm_up", broken)
    weight = SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16)
    with caplog.at_level("WARNING"):
        assert not fused_geglu._kernels_run(SimpleNamespace(proj=SimpleNamespace(weight=weight)))
    assert "no kernel for this GPU" in caplog.text and "diffusers' GEGLU" in caplog.text


def test_applies_only_to_contiguous_cuda_projections():
    x = torch.randn(2, 4, 16)
    assert not geglu_applies(x)  # CPU
    if torch.cuda.is_available():
        cuda = x.cuda()
        assert geglu_applies(cuda) and not geglu_applies(cuda.transpose(0, 1))
        assert not geglu_applies(torch.randn(2, 4, 15, device="cuda"))
        assert not geglu_applies(cuda.double())


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_gate_and_gradient_match_fp32(dtype):
    generator = torch.Generator("cuda").manual_seed(0)
    for shape in [(4, 4096, 2 * 1280), (4, 64, 2 * 5120), (3, 37, 2 * 150)]:
        x = torch.randn(shape, generator=generator, device="cuda") * 2
        dy = torch.randn(*shape[:-1], shape[-1] // 2, generator=generator, device="cuda")
        ours_x = x.to(dtype, copy=True).requires_grad_(True)
        ours = FusedGeglu.apply(ours_x)
        ours.backward(dy.to(dtype))
        ref_x = x.clone().requires_grad_(True)
        h, g = ref_x.chunk(2, dim=-1)
        (h * F.gelu(g)).backward(dy)
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(ours.float(), (h * F.gelu(g)).detach(), atol=tol, rtol=tol)
        torch.testing.assert_close(ours_x.grad.float(), ref_x.grad, atol=tol, rtol=tol)


@cuda
def test_cuda_feed_forward_same_output_and_gradients():
    model = _feed_forward().cuda()
    x = torch.randn(2, 64, 32, device="cuda", requires_grad=True)
    results = []
    for switch in (False, True):
        with fused_gegelus([model]) if switch else torch.enable_grad():
            out = model(x)
            out.square().mean().backward()
        results.append((out.detach(), x.grad.clone(), model.net[0].proj.weight.grad.clone()))
        x.grad, model.net[0].proj.weight.grad = None, None
    for ours, ref in zip(results[1], results[0]):
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
