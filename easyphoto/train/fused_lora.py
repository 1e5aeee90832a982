"""LoRA linear layers computed as one autograd node (training speed-up, same mathematics).

peft's LoRA ``Linear`` computes ``base(x) + lora_B(lora_A(x)) * scaling`` with separate
operations: on a GPU every LoRA layer costs, besides its matrix products, a multiplication by
``scaling`` and an addition over the whole output, and in the backward pass again a
multiplication and an addition over the whole input gradient. For SD1.5 (232 LoRA linears in
the UNet and text encoder) that is ~1,000 element-wise kernels per training step.

:func:`fused_lora_linears` replaces, for the duration, the forward of each peft LoRA ``Linear``
with :class:`LoraLinearFunction`: the LoRA product is added by the matrix multiplication itself
(``addmm_`` with β = 1 into the base output), ``scaling`` is applied by the matrix products
(their α), and the backward pass mirrors it (the input gradient of the LoRA branch is accumulated
by ``addmm_`` into the base branch's). Only the LoRA weights get gradients; the base weight
and bias stay frozen.

The fused path is taken only where it is exact: one active adapter, no dropout, not merged,
adapters enabled, no extra forward arguments, no autocast, and the input in the weights'
dtype. Anything else (fp16 training under autocast, validation with merged weights) falls back
to peft's own forward at call time.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch


class LoraLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b + s · (x Aᵀ) Bᵀ`` with gradients for ``x``, ``A`` and ``B`` only."""

    @staticmethod
    def forward(ctx, x, weight, bias, down, up, scale: float):
        flat = x.reshape(-1, x.shape[-1])
        hidden = flat @ down.t()  # (M, r)
        out = torch.addmm(bias, flat, weight.t()) if bias is not None else flat @ weight.t()
        out.addmm_(hidden, up.t(), alpha=scale)  # the LoRA branch added by the GEMM (β = 1)
        ctx.save_for_backward(flat, weight, down, up, hidden)
        ctx.scale, ctx.input_shape = scale, x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        flat, weight, down, up, hidden = ctx.saved_tensors
        g, s = grad.reshape(-1, grad.shape[-1]), ctx.scale
        g_hidden = _scaled_mm(g, up, s)  # (M, r) = s · g B
        grad_x = grad_down = grad_up = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(g_hidden, down).view(ctx.input_shape)
        if ctx.needs_input_grad[3]:
            grad_down = g_hidden.t() @ flat  # (r, in)
        if ctx.needs_input_grad[4]:
            grad_up = _scaled_mm(g.t(), hidden, s)  # (out, r)
        return grad_x, None, None, grad_down, grad_up, None


def _scaled_mm(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale · a @ b`` with the scaling done by the GEMM (β = 0: the uninitialised
    0-d "input" of addmm is ignored, as documented), not by a kernel of its own."""
    return torch.addmm(a.new_empty(()), a, b, beta=0, alpha=scale)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" \
            else torch.is_autocast_enabled()


def _fusable(layer, adapter: str, x: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """Whether ``layer(x, *args, **kwargs)`` is plain LoRA that :class:`LoraLinearFunction`
    computes exactly (checked at every call: validation may merge or disable adapters)."""
    if args or kwargs or layer.merged or layer.disable_adapters:
        return False
    if list(layer.active_adapters) != [adapter] or adapter in getattr(layer, "lora_variant", {}):
        return False  # (lora_variant: DoRA and the like in peft ≥ 0.15; use_dora before)
    if getattr(layer, "use_dora", {}).get(adapter, False):
        return False
    if not isinstance(layer.lora_dropout[adapter], torch.nn.Identity):
        return False
    if getattr(layer, "fan_in_fan_out", False) or _autocast_on(x.device.type):
        return False
    base = layer.get_base_layer()
    dtypes = {x.dtype, base.weight.dtype, layer.lora_A[adapter].weight.dtype,
              layer.lora_B[adapter].weight.dtype}
    return len(dtypes) == 1 and getattr(layer.lora_B[adapter], "bias", None) is None


def _fused_forward(layer, adapter: str):
    peft_forward = type(layer).forward

    def forward(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if not _fusable(layer, adapter, x, args, kwargs):
            return peft_forward(layer, x, *args, **kwargs)
        base = layer.get_base_layer()
        return LoraLinearFunction.apply(x, base.weight, base.bias,
                                        layer.lora_A[adapter].weight,
                                        layer.lora_B[adapter].weight,
                                        float(layer.scaling[adapter]))

    return forward


def lora_linears(models: Sequence[torch.nn.Module], adapter: str) -> list:
    """The peft LoRA ``Linear`` layers of ``models`` that carry ``adapter``."""
    from peft.tuners.lora.layer import Linear

    return [m for model in models for m in model.modules()
            if type(m) is Linear and adapter in m.lora_A]


@contextlib.contextmanager
def fused_lora_linears(models: Sequence[torch.nn.Module], adapter: str) -> Iterator[int]:
    """Within: the LoRA linears of ``models`` run :class:`LoraLinearFunction` (where exact);
    yields how many layers were switched. Their own forward is restored on exit."""
    layers = lora_linears(models, adapter)
    for layer in layers:
        layer.forward = _fused_forward(layer, adapter)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)
