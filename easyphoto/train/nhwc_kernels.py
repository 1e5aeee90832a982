"""Triton kernels of :mod:`.nhwc_group_norm` (launched only where Triton and CUDA are).

Tensors are channels-last: element (n, row, c) of an (N, H·W, C) view sits at
``(n·HW + row)·C + c``. Group ``g`` is channels ``[g·CG, (g+1)·CG)``. Statistics are float32.

* :func:`partial_sums` — per (image, block of rows, block of channels): per-channel sums over
  the block's rows of ``a`` and ``b``: forward ``x`` and ``x²``; backward ``dŷ`` and
  ``dŷ·x̂`` (``dŷ = dy·γ``, ``x̂`` the normalised input).
* :func:`group_reduce` — per (image, group): the group's totals over every row block and its
  channels, divided by the group's element count; forward turns them into mean and 1/σ.
* :func:`apply` — element-wise: forward ``x̂·γ + β``; backward
  ``(dŷ − mean(dŷ) − x̂·mean(dŷ·x̂)) / σ``.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    jit = triton.jit
except ImportError:  # no Triton (CPU-only installs): the module still imports; its kernels
    tl = None        # are never launched there (nhwc_group_norm checks triton_usable first)

    def jit(**_options):
        return lambda fn: fn

#: not specialised (one compiled kernel for every SD shape); HW and C keep Triton's
#: divisibility specialisation, which lets the loads vectorise
_GENERIC = ["CG", "G", "NBLK"]


@jit(do_not_specialize=_GENERIC)
def partial_sums(x_ptr, dy_ptr, w_ptr, mean_ptr, rstd_ptr, sum_a_ptr, sum_b_ptr,
                 HW, C, CG, G, NBLK,
                 BACKWARD: tl.constexpr, HAS_W: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, STEPS: tl.constexpr):
    n = tl.program_id(0)
    blk = tl.program_id(1)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    base = n.to(tl.int64) * HW * C
    acc_a = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_C], dtype=tl.float32)
    if BACKWARD:
        grp = n * G + cols // CG
        mean = tl.load(mean_ptr + grp, mask=cmask, other=0.0)
        rstd = tl.load(rstd_ptr + grp, mask=cmask, other=0.0)
        if HAS_W:
            w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    for i in range(STEPS):
        rows = (blk * STEPS + i) * BLOCK_R + tl.arange(0, BLOCK_R)
        m = (rows < HW)[:, None] & cmask[None, :]
        offs = base + rows.to(tl.int64)[:, None] * C + cols[None, :]
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        if BACKWARD:
            a = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
            if HAS_W:
                a = a * w[None, :]
            b = a * ((x - mean[None, :]) * rstd[None, :])
        else:
            a = x
            b = x * x
        acc_a += tl.sum(a, axis=0)
        acc_b += tl.sum(b, axis=0)
    out = (n * NBLK + blk) * C + cols
    tl.store(sum_a_ptr + out, acc_a, mask=cmask)
    tl.store(sum_b_ptr + out, acc_b, mask=cmask)


@jit(do_not_specialize=_GENERIC)
def group_reduce(sum_a_ptr, sum_b_ptr, out_a_ptr, out_b_ptr, C, CG, G, NBLK, count, eps,
                 FORWARD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_CG: tl.constexpr):
    n = tl.program_id(0)
    g = tl.program_id(1)
    j = tl.arange(0, BLOCK_CG)
    cols = g * CG + j
    acc_a = tl.zeros([BLOCK_B, BLOCK_CG], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_B, BLOCK_CG], dtype=tl.float32)
    for start in range(0, NBLK, BLOCK_B):
        blocks = start + tl.arange(0, BLOCK_B)
        m = (blocks < NBLK)[:, None] & (j < CG)[None, :]
        offs = (n * NBLK + blocks)[:, None] * C + cols[None, :]
        acc_a += tl.load(sum_a_ptr + offs, mask=m, other=0.0)
        acc_b += tl.load(sum_b_ptr + offs, mask=m, other=0.0)
    mean_a = tl.sum(tl.sum(acc_a, axis=1), axis=0) / count
    mean_b = tl.sum(tl.sum(acc_b, axis=1), axis=0) / count
    if FORWARD:  # mean and 1/σ (biased variance, as GroupNorm)
        var = tl.maximum(mean_b - mean_a * mean_a, 0.0)
        tl.store(out_a_ptr + n * G + g, mean_a)
        tl.store(out_b_ptr + n * G + g, 1.0 / tl.sqrt(var + eps))
    else:
        tl.store(out_a_ptr + n * G + g, mean_a)
        tl.store(out_b_ptr + n * G + g, mean_b)


@jit(do_not_specialize=_GENERIC)
def apply(x_ptr, dy_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, c1_ptr, c2_ptr, out_ptr,
          HW, C, CG, G,
          BACKWARD: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    n = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    m = (rows < HW)[:, None] & cmask[None, :]
    offs = n.to(tl.int64) * HW * C + rows.to(tl.int64)[:, None] * C + cols[None, :]
    grp = n * G + cols // CG
    mean = tl.load(mean_ptr + grp, mask=cmask, other=0.0)
    rstd = tl.load(rstd_ptr + grp, mask=cmask, other=0.0)
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    xhat = (x - mean[None, :]) * rstd[None, :]
    if HAS_W:
        w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    if BACKWARD:
        dyhat = tl.load(dy_ptr + offs, mask=m, other=0.0).to(tl.float32)
        if HAS_W:
            dyhat = dyhat * w[None, :]
        c1 = tl.load(c1_ptr + grp, mask=cmask, other=0.0)
        c2 = tl.load(c2_ptr + grp, mask=cmask, other=0.0)
        y = (dyhat - c1[None, :] - xhat * c2[None, :]) * rstd[None, :]
    else:
        y = xhat
        if HAS_W:
            y = y * w[None, :]
        if HAS_B:
            y = y + tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=m)
