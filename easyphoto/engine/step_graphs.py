"""One denoising step of the own inpaint loop (UNet + ControlNets), eager or as a CUDA graph.

The step is what ``StableDiffusionControlNetInpaintPipeline`` computes per step between the
scheduler calls: every ControlNet on the (CFG-doubled) latents with its conditioning scale for
this step, the residuals summed in unit order, then the UNet with them. Two things differ in
how, not in what:

* **conditioning embedded once**: a ControlNet's conditioning image goes through its
  ``controlnet_cond_embedding`` convolutions identically every step; the loop embeds it once
  per call and :func:`embedded_conditioning` makes the ControlNets take the embedding as is
  (their ``controlnet_cond_embedding`` is an identity while the loop runs).
* **CUDA graphs** (:class:`StepGraphs`): the step's ≈ 4 000 kernel launches (UNet + 3
  ControlNets + LoRA-free layers) are captured once per shape and replayed. The graph reads
  static input buffers (latents, timestep, per-net scales, prompt embeddings, embedded
  conditioning) that each step copies into, and its output is cloned at once: the next replay
  overwrites it (what broke ``torch.compile(mode="reduce-overhead")``, whose graphs returned
  the ControlNet residuals themselves). The per-step scale is a tensor in a graph, applied as
  ``half(float(x)·s)`` — bit for bit what a Python-float scale does. Optionally the ControlNets
  of a step run on parallel streams inside the graph (small layers leave the GPU idle).

A capture that fails logs a warning, marks its key and the loop runs eagerly; graphs are keyed
by everything that shapes the kernels (modules, shapes, dtypes, the LoRA step token) and the
least recently used is dropped past ``limit``. Graphs share one memory pool: they replay one at
a time and each output is consumed before the next replay.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from typing import Callable, Iterator, Optional, Sequence

import torch

logger = logging.getLogger(__name__)

#: Graphs kept (per engine) before the least recently used is dropped. A two-person template
#: alone uses five (each face crop's aspect × two ControlNet sets, the seam pass); they share
#: one memory pool, so more graphs cost little memory, while too few re-capture in turn.
GRAPH_LIMIT = 16


@contextlib.contextmanager
def embedded_conditioning(nets: Sequence) -> Iterator[None]:
    """While inside, each ControlNet of ``nets`` takes an already embedded conditioning
    (``controlnet_cond_embedding`` replaced by an identity, restored on the way out)."""
    saved = [net.controlnet_cond_embedding for net in nets]
    try:
        for net in nets:
            net.controlnet_cond_embedding = torch.nn.Identity()
        yield
    finally:
        for net, module in zip(nets, saved):
            net.controlnet_cond_embedding = module


def _scaled(sample: torch.Tensor, scale) -> torch.Tensor:
    """``sample · scale``: a Python float as diffusers does, or a float32 0-dim tensor computed
    the same way (float32 product rounded once to ``sample``'s dtype)."""
    if isinstance(scale, torch.Tensor):
        return (sample.float() * scale).to(sample.dtype)
    return sample * scale


def _one_net(net, sample, t, embeds, cond, scale) -> tuple[list, torch.Tensor]:
    python = not isinstance(scale, torch.Tensor)
    down, mid = net(sample, t, encoder_hidden_states=embeds, controlnet_cond=cond,
                    conditioning_scale=scale if python else 1.0, return_dict=False)
    if python:
        return list(down), mid
    return [_scaled(d, scale) for d in down], _scaled(mid, scale)


def _sum(outputs: list) -> tuple[list, torch.Tensor]:
    """Residuals summed in unit order (as ``MultiControlNetModel`` does)."""
    down, mid = outputs[0]
    for more_down, more_mid in outputs[1:]:
        down = [a + b for a, b in zip(down, more_down)]
        mid = mid + more_mid
    return down, mid


def control_residuals(nets, sample, t, embeds, conds, scales,
                      streams: Optional[Sequence] = None) -> tuple[list, torch.Tensor]:
    """Σ over ``nets`` of their scaled residuals; on ``streams`` (one per net) in parallel."""
    if not streams:
        return _sum([_one_net(net, sample, t, embeds, cond, scales[i])
                     for i, (net, cond) in enumerate(zip(nets, conds))])
    main = torch.cuda.current_stream()
    outputs = []
    for i, (net, cond, stream) in enumerate(zip(nets, conds, streams)):
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            outputs.append(_one_net(net, sample, t, embeds, cond, scales[i]))
    for stream in streams[:len(nets)]:
        main.wait_stream(stream)
    return _sum(outputs)


def step_forward(unet, nets, sample, t, embeds, conds, scales, streams=None) -> torch.Tensor:
    """The noise prediction of one step (ControlNets, then the UNet with their residuals)."""
    down, mid = control_residuals(nets, sample, t, embeds, conds, scales, streams)
    return unet(sample, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
                mid_block_additional_residual=mid, return_dict=False)[0]


class EagerStep:
    """The step run op by op (CPU, or CUDA graphs off or failed)."""

    graphed = False

    def __init__(self, unet, nets, embeds, conds, scales: Sequence[Sequence[float]]) -> None:
        self.unet, self.nets, self.embeds, self.conds = unet, list(nets), embeds, list(conds)
        self.scales = [list(row) for row in scales]

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, index: int) -> torch.Tensor:
        return step_forward(self.unet, self.nets, sample, t, self.embeds, self.conds,
                            self.scales[index])


class _Captured:
    """A captured step: its graph, static inputs and static output."""

    def __init__(self, unet, nets, sample, t, embeds, conds, streams, pool) -> None:
        self.modules = (unet, *nets)  # kept alive: the key holds their ids
        self.sample, self.t = sample.clone(), t.clone()
        self.embeds, self.conds = embeds.clone(), [cond.clone() for cond in conds]
        self.scales = torch.ones(len(nets), dtype=torch.float32, device=sample.device)

        def forward() -> torch.Tensor:
            scales = [self.scales[i] for i in range(len(nets))]
            return step_forward(unet, nets, self.sample, self.t, self.embeds, self.conds,
                                scales, streams)

        torch.cuda.synchronize()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            forward()  # warm-up: lazy initialisation and workspaces outside the capture
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            self.output = forward()
        torch.cuda.synchronize()


class GraphStep:
    """A call's step on a :class:`_Captured` graph: copies in, replays, clones the output."""

    graphed = True

    def __init__(self, captured: _Captured, embeds, conds, scales) -> None:
        self.captured = captured
        captured.embeds.copy_(embeds)
        for static, cond in zip(captured.conds, conds):
            static.copy_(cond)
        self.table = torch.tensor(scales, dtype=torch.float32).to(captured.sample.device)

    def __call__(self, sample: torch.Tensor, t: torch.Tensor, index: int) -> torch.Tensor:
        captured = self.captured
        captured.sample.copy_(sample)
        captured.t.copy_(t)
        captured.scales.copy_(self.table[index])
        captured.graph.replay()
        return captured.output.clone()


class StepGraphs:
    """CUDA graphs of the step, one per key, least recently used dropped past ``limit``.

    ``parallel``: run the ControlNets of a step on parallel streams inside the graph.
    """

    def __init__(self, limit: int = GRAPH_LIMIT, parallel: bool = False) -> None:
        self.limit, self.parallel = limit, parallel
        self._graphs: OrderedDict[tuple, Optional[_Captured]] = OrderedDict()
        self._pool = None
        self._streams: list = []
        self.captures = 0
        self.last_graphed = False  # whether the last step() handed out a graph

    def clear(self) -> None:
        """Drop every graph (models released or re-laid out)."""
        self._graphs.clear()
        self._pool = None

    def step(self, unet, nets, sample, t, embeds, conds, scales,
             token: tuple = ()) -> Callable:
        """A graphed step for these inputs' shapes, or an :class:`EagerStep` when the
        capture fails (remembered per key)."""
        key = (id(unet), tuple(id(net) for net in nets), tuple(sample.shape), sample.dtype,
               t.dtype, tuple(t.shape), tuple(embeds.shape), tuple(c.shape for c in conds),
               self.parallel, token)
        if key not in self._graphs:
            self._graphs[key] = self._capture(unet, nets, sample, t, embeds, conds)
            while len(self._graphs) > self.limit:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        captured = self._graphs[key]
        self.last_graphed = captured is not None
        if captured is None:
            return EagerStep(unet, nets, embeds, conds, scales)
        return GraphStep(captured, embeds, conds, scales)

    def _capture(self, unet, nets, sample, t, embeds, conds) -> Optional[_Captured]:
        streams = None
        if self.parallel and len(nets) > 1:
            while len(self._streams) < len(nets):
                self._streams.append(torch.cuda.Stream())
            streams = self._streams[:len(nets)]
        try:
            captured = _Captured(unet, nets, sample, t, embeds, conds, streams, self._pool)
        except (RuntimeError, AssertionError) as error:
            logger.warning("CUDA graph capture of the denoising step failed; running it "
                           "eagerly for %s: %s", tuple(sample.shape), error)
            torch.cuda.synchronize()
            return None
        if self._pool is None:
            self._pool = captured.graph.pool()
        self.captures += 1
        logger.info("denoising step captured as a CUDA graph: latents %s, %d ControlNets",
                    tuple(sample.shape), len(nets))
        return captured
