"""Training steps replayed as one CUDA graph (text encoders, UNet forward and backward,
gradient clipping, fused AdamW), to remove the per-kernel launch cost of eager PyTorch.

Why: a LoRA step of SD1.5 at batch 4 launches ~8,000 small kernels; measured on an H200 the
eager step is bound by the CPU launching them (~120 ms) while the GPU is busy about half of
that. A graph replays the same kernels with one launch.

How (PyTorch's whole-network capture): the first :data:`WARMUP_STEPS` steps run eagerly on a
side stream (real steps; they also create the optimiser state and pick kernels), then one step
is captured on static input tensors and every later step copies its batch into them and
replays. The lr schedule runs outside the graph, writing into the optimiser's lr tensors.

Only for a :class:`~easyphoto.train.lora.LoraTrainer` built with ``graphable=True`` (CUDA:
fused AdamW, ``capturable``, lr tensors). fp16's GradScaler is captured too: with a fused
optimiser its overflow check, step skipping and scale update are device-side tensor ops (no
host sync), so they replay like the rest. If the capture fails (an operation that syncs with
the host, say), training goes on eagerly and a warning says why.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Optional

import torch

logger = logging.getLogger(__name__)

WARMUP_STEPS = 3


class GraphedSteps:
    """Callable ``steps(batch) -> loss``: eager warm-up, then capture once, then replay.

    The returned loss tensor is overwritten by the next replay: read it before then.
    """

    def __init__(self, trainer, warmup: int = WARMUP_STEPS):
        self.trainer, self.warmup, self.done = trainer, warmup, 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static = None
        self.loss: Optional[torch.Tensor] = None
        self.failed = False
        self.side = torch.cuda.Stream(device=trainer.device)

    def __call__(self, batch) -> torch.Tensor:
        self.done += 1
        if self.failed:
            return self.trainer.step(batch)
        if self.done <= self.warmup:
            return self._eager_on_side_stream(batch)
        if self.graph is None:
            self._capture(batch)
            if self.failed:
                return self.trainer.step(batch)
        self._load(batch)
        self.graph.replay()
        self.trainer.schedule.step()
        return self.loss

    def _eager_on_side_stream(self, batch) -> torch.Tensor:
        current = torch.cuda.current_stream(self.trainer.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            loss = self.trainer.step(batch)
        current.wait_stream(self.side)
        return loss

    def _capture(self, batch) -> None:
        """Record one :meth:`LoraTrainer.update` on static copies of ``batch``'s tensors."""
        trainer = self.trainer
        self.static = type(batch)(**{f.name: _clone(getattr(batch, f.name))
                                     for f in fields(batch)})
        trainer.optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(trainer.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.loss = trainer.update(self.static)
        except RuntimeError as error:  # e.g. an op that syncs with the host
            logger.warning("CUDA graph capture failed, training eagerly: %s", error)
            self.failed, self.static, self.loss = True, None, None
            trainer.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize(trainer.device)
            return
        self.graph = graph
        logger.info("training step captured as a CUDA graph after %d eager steps", self.warmup)

    def _load(self, batch) -> None:
        for f in fields(batch):
            source, target = getattr(batch, f.name), getattr(self.static, f.name)
            if isinstance(source, torch.Tensor):
                if source.data_ptr() != target.data_ptr():
                    target.copy_(source, non_blocking=True)


def _clone(value):
    """Tensors cloned (static graph inputs); lists of tensors (token ids) kept as they are."""
    return value.clone() if isinstance(value, torch.Tensor) else value
