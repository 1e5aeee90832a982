"""GroupNorm that reads and writes channels-last (NHWC) CUDA tensors (training speed-up).

Why: cuDNN's convolution kernels on the H100 work in NHWC. With the UNet in PyTorch's default
NCHW layout, every convolution converts its input (and output) — ~200 conversions per SD1.5
training step, 7 ms of 58 (bench/README.md). Channels-last removes them, but PyTorch's CUDA
GroupNorm only has NCHW kernels: it copies its input to NCHW and its output is NCHW, which
the next convolution copies back, in both passes — more copies than the conversions saved.

:class:`NhwcGroupNorm` normalises channels-last tensors as they lie, in three Triton
kernels per pass (:mod:`.nhwc_kernels`: per-channel partial sums, per-group statistics in
float32, element-wise apply). Only the input gets a gradient: in LoRA training the norms'
affine weights are frozen. :func:`nhwc_group_norms` switches a model's ``nn.GroupNorm``
layers to it for the duration, per call where it applies (CUDA, channels-last 4-D input,
frozen affine, no autocast, ≤ 128 channels per group), PyTorch's GroupNorm everywhere else.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional, Sequence

import torch

logger = logging.getLogger(__name__)

#: channels per group the statistics kernel handles (SD/SDXL: at most 2560 / 32 = 80)
MAX_GROUP_CHANNELS = 128
_BLOCK_R, _BLOCK_C, _STEPS = 32, 64, 4  # tile rows × channels; row tiles per partial sum
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def triton_usable() -> bool:
    """Whether the Triton kernels can run here (a CUDA GPU and the triton package)."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _grid_rows(hw: int, rows: int) -> int:
    return -(-hw // rows)


def _group_stats(x: torch.Tensor, groups: int, eps: float, dy: Optional[torch.Tensor] = None,
                 weight: Optional[torch.Tensor] = None, stats: tuple = (None, None)) -> tuple:
    """Forward (``dy`` None): per-group (mean, 1/σ); backward: (mean(dŷ), mean(dŷ·x̂))."""
    from . import nhwc_kernels as k

    n, c, h, w = x.shape
    hw, group_channels = h * w, c // groups
    blocks = _grid_rows(hw, _BLOCK_R * _STEPS)
    sums = torch.empty((2, n, blocks, c), device=x.device, dtype=torch.float32)
    out = torch.empty((2, n, groups), device=x.device, dtype=torch.float32)
    backward = dy is not None
    mean, rstd = stats if backward else (out[0], out[1])
    k.partial_sums[(n, blocks, -(-c // _BLOCK_C))](
        x, dy if backward else x, weight if weight is not None else x, mean, rstd,
        sums[0], sums[1], hw, c, group_channels, groups, blocks,
        BACKWARD=backward, HAS_W=weight is not None, BLOCK_R=_BLOCK_R, BLOCK_C=_BLOCK_C,
        STEPS=_STEPS)
    k.group_reduce[(n, groups)](
        sums[0], sums[1], out[0], out[1], c, group_channels, groups, blocks,
        float(hw * group_channels), float(eps), FORWARD=not backward, BLOCK_B=32,
        BLOCK_CG=MAX_GROUP_CHANNELS)
    return out[0], out[1]


def _apply(x: torch.Tensor, groups: int, weight, bias, mean, rstd,
           dy: Optional[torch.Tensor] = None, coefficients: tuple = (None, None)):
    from . import nhwc_kernels as k

    n, c, h, w = x.shape
    out = torch.empty_like(x, memory_format=torch.channels_last)
    c1, c2 = coefficients if dy is not None else (mean, mean)
    k.apply[(n, _grid_rows(h * w, _BLOCK_R), -(-c // _BLOCK_C))](
        x, dy if dy is not None else x, weight if weight is not None else x,
        bias if bias is not None else x, mean, rstd, c1, c2, out, h * w, c, c // groups, groups,
        BACKWARD=dy is not None, HAS_W=weight is not None, HAS_B=bias is not None,
        BLOCK_R=_BLOCK_R, BLOCK_C=_BLOCK_C)
    return out


class NhwcGroupNorm(torch.autograd.Function):
    """``F.group_norm(x, groups, weight, bias, eps)`` for a channels-last CUDA ``x``; the
    gradient flows to ``x`` only (``weight`` and ``bias`` must be frozen)."""

    @staticmethod
    def forward(ctx, x, groups: int, weight, bias, eps: float):
        mean, rstd = _group_stats(x, groups, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups = groups
        return _apply(x, groups, weight, bias, mean, rstd)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, rstd = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        grad = grad.contiguous(memory_format=torch.channels_last)
        coefficients = _group_stats(x, ctx.groups, 0.0, grad, weight, (mean, rstd))
        return _apply(x, ctx.groups, weight, None, mean, rstd, grad, coefficients), \
            None, None, None, None


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        return torch.is_autocast_enabled()


def nhwc_applies(norm: torch.nn.GroupNorm, x: torch.Tensor) -> bool:
    """Whether :class:`NhwcGroupNorm` computes ``norm(x)`` (else PyTorch's GroupNorm runs)."""
    if x.device.type != "cuda" or x.dim() != 4 or x.dtype not in _DTYPES:
        return False
    if not x.permute(0, 2, 3, 1).is_contiguous() or _autocast_on("cuda"):
        return False
    channels, groups = x.shape[1], norm.num_groups
    if channels % groups or channels // groups > MAX_GROUP_CHANNELS:
        return False
    return all(p is None or (not p.requires_grad and p.dtype == x.dtype and p.is_contiguous())
               for p in (norm.weight, norm.bias))


def _nhwc_forward(norm: torch.nn.GroupNorm):
    native = type(norm).forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        if nhwc_applies(norm, x):
            return NhwcGroupNorm.apply(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        return native(norm, x)

    return forward


@contextlib.contextmanager
def nhwc_group_norms(models: Sequence[torch.nn.Module]) -> Iterator[int]:
    """Within: the ``nn.GroupNorm`` layers of ``models`` use :class:`NhwcGroupNorm` where it
    applies (:func:`nhwc_applies`); yields how many layers were switched (0 without Triton or
    CUDA). Their own forward is restored on exit."""
    norms = [m for model in models for m in model.modules()
             if type(m) is torch.nn.GroupNorm] if triton_usable() else []
    if norms and not _kernels_run(norms[0]):
        norms = []
    for norm in norms:
        norm.forward = _nhwc_forward(norm)
    try:
        yield len(norms)
    finally:
        for norm in norms:
            norm.__dict__.pop("forward", None)


def _kernels_run(norm: torch.nn.GroupNorm) -> bool:
    """Whether the kernels compile and run here for ``norm``'s dtype (instant once compiled);
    if not, PyTorch's GroupNorm stays, with a warning saying why."""
    dtype = norm.weight.dtype if norm.weight is not None else torch.float32
    device = norm.weight.device if norm.weight is not None else torch.device("cuda")
    return device.type == "cuda" and _warmed_up(dtype, str(device))


def _warmed_up(dtype: torch.dtype, device: str) -> bool:
    try:
        warm_up(dtype, device)
    except Exception as error:  # noqa: BLE001 - e.g. a GPU Triton cannot compile for
        logger.warning("channels-last GroupNorm unavailable (%s: %s); using PyTorch's GroupNorm",
                       type(error).__name__, error)
        return False
    return True


def warm_up(dtype: torch.dtype, device: str = "cuda") -> None:
    """Compile and load the kernels for ``dtype`` (one forward and backward on a small
    tensor): Triton compiles at first use, ~4 s on a fresh machine (then cached on disk)."""
    x = torch.randn(1, 64, 4, 4, device=device, dtype=dtype)
    x = x.to(memory_format=torch.channels_last).requires_grad_(True)
    weight = torch.ones(64, device=device, dtype=dtype)
    NhwcGroupNorm.apply(x, 32, weight, torch.zeros_like(weight), 1e-5).backward(
        torch.ones_like(x))
    torch.cuda.synchronize(device)
