"""cuDNN's fused attention readied for a training while photos are preprocessed and models load.

Why: cuDNN's attention trains SD1.5 ≈ 5.5 ms per step faster than flash attention on an H100
(49.3 vs 54.9 ms, bench ``variants``) but builds and compiles its kernels at the first call
of each shape: ≈ 3 s on a machine that compiled them before (the CUDA driver caches the
compiled code on disk), ≈ 13 s on a fresh one (bench ``coldstart``). Compiled on a background
thread with the training's shapes while the run prepares, that cost leaves the training
(measured: first step 3.0 → 2.0 s with the warm-up on another thread).

:class:`AttentionWarmUp` runs cuDNN's attention (forward and backward) on random tensors of the
training's shapes (:func:`training_attention_shapes`) on a daemon thread, calling the cuDNN
operator itself: no process-wide back-end flags are touched, so attention elsewhere in the
process is unaffected. :meth:`AttentionWarmUp.choice` then says which attention order the
training uses: ``"cudnn"`` when the warm-up has finished by the time training starts,
``"flash"`` otherwise (it is never waited for). A shape cuDNN does not support is skipped —
the training's dispatch falls back to flash attention for it too.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

logger = logging.getLogger(__name__)

#: text tokens of the CLIP text encoders
TEXT_TOKENS = 77
#: seconds cuDNN's attention saves per SD1.5 training step at 512 px (H100, bench
#: ``variants``: 52.8 → 47.4 ms): what waiting for an unfinished warm-up may cost at most
SAVING_PER_STEP_S = 0.005


@dataclass(frozen=True)
class AttentionShape:
    """One attention call: query and key tokens, heads × head size, causal or not."""

    queries: int
    keys: int
    heads: int
    head_dim: int
    causal: bool = False


#: per family: (latent downsampling, channels, heads) of the UNet levels with attention, and
#: the text encoders' (heads, head size)
FAMILIES = {"sd15": {"unet": ((1, 320, 8), (2, 640, 8), (4, 1280, 8), (8, 1280, 8)),
                     "text": ((12, 64),)},
            "sdxl": {"unet": ((2, 640, 10), (4, 1280, 20)), "text": ((12, 64), (20, 64))}}


def training_attention_shapes(family: str, resolution: int) -> list:
    """The attention calls a LoRA training step of ``family`` at ``resolution`` px makes:
    each UNet level's self- and cross-attention, the text encoders' causal self-attention."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(FAMILIES)}")
    latent = resolution // 8
    shapes = []
    for down, channels, heads in FAMILIES[family]["unet"]:
        tokens = (latent // down) ** 2
        shapes += [AttentionShape(tokens, tokens, heads, channels // heads),
                   AttentionShape(tokens, TEXT_TOKENS, heads, channels // heads)]
    shapes += [AttentionShape(TEXT_TOKENS, TEXT_TOKENS, heads, dim, causal=True)
               for heads, dim in FAMILIES[family]["text"]]
    return list(dict.fromkeys(shapes))


def _as_heads(batch: int, tokens: int, shape: AttentionShape, dtype, device) -> torch.Tensor:
    """(B, H, L, D) laid out as diffusers' and transformers' attention make it: a
    (B, L, H·D) projection viewed per head."""
    flat = torch.randn(batch, tokens, shape.heads * shape.head_dim, device=device, dtype=dtype)
    view = flat.view(batch, tokens, shape.heads, shape.head_dim).transpose(1, 2)
    return view.requires_grad_(True)


def cudnn_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    causal: bool) -> torch.Tensor:
    """cuDNN's attention operator itself (no back-end flags); raises where it cannot run."""
    op = torch.ops.aten._scaled_dot_product_cudnn_attention
    return op(q, k, v, None, True, 0.0, causal, False)[0]


def warm_attention(shapes: Sequence[AttentionShape], batch: int, dtype: torch.dtype,
                   device, tried: Optional[list] = None) -> list:
    """Forward and backward of :func:`cudnn_attention` for every shape; returns the shapes
    that ran (the others raised: cuDNN does not take them here). ``tried`` gets each shape
    once its kernels have finished or it was skipped (progress, read by another thread)."""
    ran, tried = [], [] if tried is None else tried
    cuda = torch.device(device).type == "cuda"
    for shape in shapes:
        q = _as_heads(batch, shape.queries, shape, dtype, device)
        k, v = (_as_heads(batch, shape.keys, shape, dtype, device) for _ in range(2))
        try:
            out = cudnn_attention(q, k, v, shape.causal)
            out.backward(torch.ones_like(out))
            if cuda:
                torch.cuda.synchronize(device)
            ran.append(shape)
        except (RuntimeError, AttributeError, TypeError) as error:
            logger.debug("cuDNN attention skipped for %s: %s", shape, error)
        tried.append(shape)
    return ran


class AttentionWarmUp:
    """:func:`warm_attention` of a training's shapes on a daemon thread (see the module)."""

    def __init__(self, shapes: Sequence[AttentionShape], batch: int, dtype: torch.dtype,
                 device) -> None:
        self.shapes, self.ran, self.tried, self.seconds = list(shapes), [], [], None
        self.started = time.perf_counter()
        self.error: Optional[BaseException] = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(batch, dtype, device),
                                        name="easyphoto-attention-warm-up", daemon=True)
        self._thread.start()

    def _run(self, batch: int, dtype: torch.dtype, device) -> None:
        started = time.perf_counter()
        try:
            self.ran = warm_attention(self.shapes, batch, dtype, device, self.tried)
        except Exception as error:  # noqa: BLE001 - optional: training uses flash then
            self.error = error
            logger.warning("cuDNN attention warm-up failed: %s", error)
        finally:
            self.seconds = time.perf_counter() - started
            self._done.set()

    def ready(self) -> bool:
        """Finished, without error, with at least one shape compiled."""
        return self._done.is_set() and self.error is None and bool(self.ran)

    def join(self, timeout: Optional[float] = None) -> bool:
        self._thread.join(timeout)
        return self.ready()

    def remaining_s(self) -> Optional[float]:
        """Seconds the warm-up still needs, extrapolated from the shapes done so far (None
        before the first one is done)."""
        if self._done.is_set():
            return 0.0
        done = len(self.tried)
        if not done:
            return None
        elapsed = time.perf_counter() - self.started
        return elapsed / done * (len(self.shapes) - done)

    def choice(self, steps: int = 0) -> str:
        """The training's attention order now: ``"cudnn"`` if :meth:`ready`, else
        ``"flash"``. For a training of ``steps`` steps it waits for the warm-up only where
        that is expected to pay: if the rest is estimated to take less than half of what
        cuDNN's attention saves over the steps (:data:`SAVING_PER_STEP_S`), at most that
        long. An unfinished warm-up goes on in the background; what it compiles is cached
        (on disk, by the CUDA driver) for the next training."""
        budget = 0.5 * steps * SAVING_PER_STEP_S
        remaining = self.remaining_s()
        if not self._done.is_set() and remaining is not None and remaining <= budget:
            self.join(budget)
        name = "cudnn" if self.ready() else "flash"
        if self._done.is_set():
            logger.info("attention: %s (cuDNN warm-up %s in %.1f s)", name,
                        "done" if self.ready() else "failed", self.seconds or 0.0)
        else:
            logger.info("attention: flash (cuDNN's kernels still compiling: %d of %d shapes)",
                        len(self.tried), len(self.shapes))
        return name


def cudnn_attention_available(device) -> bool:
    """CUDA, and a torch with the cuDNN attention operator and an ordered back-end choice."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: F401
    except ImportError:
        return False
    import inspect

    return (hasattr(SDPBackend, "CUDNN_ATTENTION")
            and "set_priority" in inspect.signature(sdpa_kernel).parameters
            and hasattr(torch.ops.aten, "_scaled_dot_product_cudnn_attention"))


def start_attention_warm_up(family: str, resolution: int, batch: int, dtype: torch.dtype,
                            device) -> Optional[AttentionWarmUp]:
    """A running :class:`AttentionWarmUp` for a training of ``family`` at ``resolution`` with
    ``batch`` samples per pass; None where cuDNN's attention is not available."""
    if not cudnn_attention_available(device):
        return None
    return AttentionWarmUp(training_attention_shapes(family, resolution), batch, dtype, device)
