"""What readies a CUDA training in the background while photos are preprocessed and models load.

:class:`TrainingStartUp` starts, on daemon threads:

* the GPU libraries read into the page cache (:mod:`.prefetch`);
* the channels-last GroupNorm's Triton kernels compiled (:mod:`.nhwc_group_norm`), where
  the training will use them;
* cuDNN's attention compiled for the training's shapes (:mod:`.attention_warm_up`).

:meth:`TrainingStartUp.speedups` is called when training is about to start: it waits for the
Triton kernels (needed, and quick once compiled) but never for cuDNN's attention — the
training uses cuDNN's attention if it is ready, flash attention otherwise. On the CPU nothing
is started and the defaults are returned.
"""

from __future__ import annotations

import logging
import threading
from typing import Optional

from ..params import TrainRequest

logger = logging.getLogger(__name__)


def triton_kernels(speedups, dtype) -> list:
    """``(name, warm_up)`` of the Triton kernels a CUDA training with ``speedups`` on models
    of ``dtype`` uses (none without Triton)."""
    from .nhwc_group_norm import triton_usable

    if not triton_usable():
        return []
    kernels = []
    if speedups.channels_last_for(dtype) and speedups.nhwc_group_norm:
        from .nhwc_group_norm import warm_up

        kernels.append(("channels-last GroupNorm", warm_up))
    if speedups.fused_geglu:
        from .fused_geglu import warm_up

        kernels.append(("fused GEGLU", warm_up))
    return kernels


def compile_kernels(kernels: list, dtype, device) -> None:
    """Run each kernel's warm-up (Triton compiles at first use, ≈ 4 s on a fresh machine, then
    from its disk cache); a failure is only logged: the training checks again and falls
    back."""
    for name, warm_up in kernels:
        try:
            warm_up(dtype, device)
        except Exception as error:  # noqa: BLE001 - optional here
            logger.warning("%s kernels did not compile here: %s", name, error)


class TrainingStartUp:
    """Background preparation of one training (see the module)."""

    def __init__(self, request: TrainRequest, device=None) -> None:
        from .attention_warm_up import start_attention_warm_up
        from .loading import resolve_device, weight_dtype
        from .lora import TrainSpeedups
        from .prefetch import start_library_prefetch

        request = request.resolved()
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        dtype = weight_dtype(request.mixed_precision or "fp16", self.device)
        self.prefetch = start_library_prefetch(self.device)
        kernels = triton_kernels(TrainSpeedups(), dtype) if cuda else []
        self.triton = None
        if kernels:
            self.triton = threading.Thread(target=compile_kernels, args=(kernels, dtype,
                                                                         self.device),
                                           name="easyphoto-kernel-warm-up", daemon=True)
            self.triton.start()
        batch = request.train_batch_size * request.gradient_accumulation_steps
        self.attention = start_attention_warm_up("sdxl" if request.sdxl else "sd15",
                                                 request.resolution, batch, dtype, self.device)

    def speedups(self, steps: int = 0, **changes):
        """The :class:`~.lora.TrainSpeedups` for a training of ``steps`` steps starting now
        (``changes`` on top): the Triton kernels waited for, cuDNN's attention if its warm-up
        is done (or nearly: :meth:`~.attention_warm_up.AttentionWarmUp.choice`)."""
        import dataclasses

        from .lora import TrainSpeedups

        if self.triton is not None:
            self.triton.join()
        speedups = TrainSpeedups()
        if self.attention is not None:
            speedups = dataclasses.replace(speedups, attention=self.attention.choice(steps))
        return dataclasses.replace(speedups, **changes)

    def finish(self) -> Optional[dict]:
        """Stop what is still running; a summary for the run's meta (None on the CPU)."""
        if self.prefetch is not None:
            self.prefetch.stop()
        if self.device.type != "cuda":
            return None
        warm = self.attention
        return {"library_prefetch_gb": round(self.prefetch.report.bytes / 1e9, 3)
                if self.prefetch is not None else None,
                "attention_warm_up_s": round(warm.seconds, 3) if warm and warm.seconds else None}
