"""Fused LoRA linears (easyphoto.train.fused_lora): same outputs and gradients as peft's
layers, peft's path wherever fusing would not be exact, and nothing left behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from easyphoto.train import fused_lora
from easyphoto.train.fused_lora import LoraLinearFunction, fused_lora_linears, lora_linears
from easyphoto.train.latent_cache import build_latent_cache
from easyphoto.train.loading import load_components
from easyphoto.train.lora import ADAPTER, LoraTrainer, TrainSpeedups, train_lora

from test_lora_train import RES, request, write_dataset

pytestmark = pytest.mark.usefixtures("offline", "one_thread")


class Block(torch.nn.Module):
    """Two linears (one with a bias, one without) and a non-linearity between them."""

    def __init__(self) -> None:
        super().__init__()
        self.to_q = torch.nn.Linear(12, 20, bias=False)
        self.to_out = torch.nn.Linear(20, 12)

    def forward(self, x):
        return self.to_out(torch.nn.functional.gelu(self.to_q(x)))


def _lora_block(seed: int = 0, dtype=torch.float32) -> Block:
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)
    block = Block()
    block = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=2, target_modules=[
        "to_q", "to_out"], lora_dropout=0.0), block, adapter_name=ADAPTER)
    for name, param in block.named_parameters():
        param.requires_grad_(f".{ADAPTER}." in name)
        if "lora_B" in name:  # peft starts B at zero: the LoRA branch must contribute here
            torch.nn.init.normal_(param, std=0.3)
    return block.to(dtype)


def _run(block: Block, x: torch.Tensor) -> tuple:
    """Output, input gradient and LoRA weight gradients of a scalar function of the output."""
    x = x.clone().requires_grad_(True)
    out = block(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    grads = {n: p.grad.clone() for n, p in block.named_parameters() if p.requires_grad}
    block.zero_grad(set_to_none=True)
    return out.detach(), x.grad.clone(), grads


def test_fused_layers_give_peft_outputs_and_gradients():
    block = _lora_block()
    x = torch.randn(3, 5, 12)
    reference = _run(block, x)
    calls = []
    with fused_lora_linears([block], ADAPTER) as switched, _spy(calls):
        fused = _run(block, x)
    assert switched == 2 and len(calls) == 2  # both layers took the fused path
    torch.testing.assert_close(fused[0], reference[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[1], reference[1], rtol=1e-5, atol=1e-6)
    assert fused[2].keys() == reference[2].keys() and len(fused[2]) == 4
    for name, grad in reference[2].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(fused[2][name], grad, rtol=1e-5, atol=1e-6)


def test_frozen_inputs_get_no_gradient_and_base_weights_none():
    block = _lora_block()
    with fused_lora_linears([block], ADAPTER):
        block(torch.randn(4, 12)).sum().backward()  # 2-D input, x without requires_grad
    assert block.to_q.base_layer.weight.grad is None and block.to_out.base_layer.bias.grad is None
    assert block.to_q.lora_A[ADAPTER].weight.grad is not None


class _spy:
    """Counts LoraLinearFunction.apply calls into ``calls`` while active."""

    def __init__(self, calls: list) -> None:
        self.calls, self.original = calls, LoraLinearFunction.apply

    def __enter__(self):
        def counting(*args):
            self.calls.append(args[0].shape)
            return self.original(*args)

        fused_lora.LoraLinearFunction.apply = counting

    def __exit__(self, *exc):
        fused_lora.LoraLinearFunction.apply = self.original


@pytest.mark.parametrize("state", ["merged", "disabled", "autocast", "dtype", "dropout"])
def test_peft_runs_where_fusing_would_not_be_exact(state):
    """Merged weights (validation), disabled adapters, autocast, mixed dtypes or dropout: the
    fused layers hand over to peft and give peft's result."""
    block = _lora_block(seed=1)
    x = torch.randn(2, 12)
    if state == "merged":
        block.to_q.merge(), block.to_out.merge()
    elif state == "disabled":
        block.to_q.enable_adapters(False), block.to_out.enable_adapters(False)
    elif state == "dtype":
        x = x.double()
        block.to_q.base_layer.double(), block.to_out.base_layer.double()
    elif state == "dropout":
        for layer in (block.to_q, block.to_out):
            layer.lora_dropout[ADAPTER] = torch.nn.Dropout(0.5)
        block.eval()  # eval: dropout is the identity, so both paths must agree
    expected = block(x).detach()
    calls = []
    context = torch.autocast("cpu", dtype=torch.bfloat16) if state == "autocast" else \
        _nothing()
    with fused_lora_linears([block], ADAPTER), _spy(calls), context:
        got = block(x).detach()
    if state == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = block(x).detach()
    assert calls == []
    torch.testing.assert_close(got, expected)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_own_forward_restored_on_exit_even_after_an_error():
    block = _lora_block()
    with pytest.raises(RuntimeError, match="boom"):
        with fused_lora_linears([block], ADAPTER):
            assert "forward" in block.to_q.__dict__
            raise RuntimeError("boom")
    assert all("forward" not in layer.__dict__ for layer in lora_linears([block], ADAPTER))


def test_trainer_gradients_equal_with_and_without_fusing(tmp_path):
    """The tiny SD1.5 set (UNet + text encoder): every LoRA linear switched, and one step's
    loss and every LoRA gradient the same either way."""
    data = write_dataset(tmp_path / "one", sizes=((RES, RES),))
    components = load_components("tiny-random", sdxl=False, with_canny=False)
    req = request(rank=4, network_alpha=2).resolved()
    cache = build_latent_cache(components, data, RES, False, req.seed)
    trainer = LoraTrainer(components, req, total_steps=2)
    for param in trainer.unet_params + trainer.te_params:  # B ≠ 0: the branch contributes
        if param.abs().sum() == 0:
            torch.nn.init.normal_(param, std=0.05)
    batch = trainer.draw_batch(cache)
    results = []
    for fused in (False, True):
        with trainer.fused(fused) as switched:
            loss = trainer.loss(batch)
            loss.backward()
        params = trainer.unet_params + trainer.te_params
        results.append((switched, float(loss.detach()), [p.grad.clone() for p in params]))
        trainer.optimizer.zero_grad(set_to_none=True)
    linears = lora_linears([components.unet, *components.text_encoders], ADAPTER)
    assert results[0][0] == 0 and results[1][0] == len(linears) > 10
    assert results[1][1] == pytest.approx(results[0][1], rel=1e-5)
    for plain, fused in zip(results[0][2], results[1][2], strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-7)


def test_training_with_and_without_fusing_saves_the_same_lora(tmp_path):
    data = write_dataset(tmp_path / "data")
    outs = {}
    for fused in (True, False):
        components = load_components("tiny-random", sdxl=False, with_canny=False)
        outs[fused] = train_lora(components, data, request(), tmp_path / str(fused), 3,
                                 speedups=TrainSpeedups(fused_lora=fused))
        assert all("forward" not in m.__dict__ for m in lora_linears(
            [components.unet, *components.text_encoders], ADAPTER))
    np.testing.assert_allclose(outs[True].losses, outs[False].losses, rtol=1e-4)
    ours, theirs = (load_file(str(outs[f].checkpoints[-1].path)) for f in (True, False))
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key].float(), theirs[key].float(), atol=2e-3, rtol=1e-2)


def test_scaled_products_ignore_their_placeholder_input():
    """``_scaled_mm`` relies on addmm ignoring ``input`` when β = 0 (NaN there must not leak)."""
    a, b = torch.randn(5, 3), torch.randn(3, 4)
    nan = torch.tensor(float("nan"))
    torch.testing.assert_close(torch.addmm(nan, a, b, beta=0, alpha=0.5), 0.5 * (a @ b))
    torch.testing.assert_close(fused_lora._scaled_mm(a, b, 0.25), 0.25 * (a @ b))
