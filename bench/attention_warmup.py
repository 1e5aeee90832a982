"""Experiment (bench only): compile cuDNN's attention kernels for the training's shapes on a
background thread while the models load, so that the first training step does not pay for it.

cuDNN's fused attention is ≈ 5.5 ms per SD1.5 step faster than flash on an H100 but compiles
its kernels at first use (≈ 16 s on a fresh machine, bench/README.md session 5). Whether a
warm-up on another thread helps depends on where the compiled kernels are cached (process-wide
or per thread): ``python bench/train_gpu.py coldstart-warm:attention=cudnn`` measures it.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

#: SD1.5 attention at 512 px, batch 4: (query tokens, heads × head size); keys = the query
#: tokens (self-attention) or the 77 caption tokens (cross-attention)
SD15_512 = ((4096, 320), (1024, 640), (256, 1280), (64, 1280))


def warm_sdpa(batch: int = 4, heads: int = 8, levels=SD15_512, text_tokens: int = 77,
              dtype=torch.bfloat16) -> None:
    """Forward and backward of cuDNN attention on tensors laid out as diffusers' attention
    processor lays them out ((B, L, H·D) viewed as (B, H, L, D))."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def heads_view(tokens: int, channels: int) -> torch.Tensor:
        flat = torch.randn(batch, tokens, channels, device="cuda", dtype=dtype)
        return flat.view(batch, tokens, heads, channels // heads).transpose(1, 2)

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
        for tokens, channels in levels:
            for keys in (tokens, text_tokens):
                q = heads_view(tokens, channels).requires_grad_(True)
                k = heads_view(keys, channels).requires_grad_(True)
                v = heads_view(keys, channels).requires_grad_(True)
                out = F.scaled_dot_product_attention(q, k, v)
                flat = out.transpose(1, 2).reshape(batch, tokens, channels)
                flat.backward(torch.randn_like(flat))
    torch.cuda.synchronize()


def start_sdpa_warm_up(**kwargs) -> threading.Thread:
    thread = threading.Thread(target=warm_sdpa, kwargs=kwargs, daemon=True,
                              name="bench-sdpa-warm-up")
    thread.start()
    return thread
