"""LoRA training of the UNet and text encoder(s) (SPEC 1.3) on a latent cache.

:func:`train_lora` is the entry point; :class:`LoraTrainer` is one optimiser step at a time
(used by it, and by tests on a fixed batch).

* LoRA (peft, adapter :data:`ADAPTER`) on the SPEC 1.3 target modules of the UNet and every
  text encoder; everything else frozen. LoRA weights train in fp32.
* AdamW (β1, β2, weight decay, ε of the request); UNet lr, text-encoder lr = lr × scale;
  the request's schedule (``constant_with_warmup`` warms up over 5 % of the steps); gradient
  clipping at ``max_grad_norm`` (0 = off).
* One optimiser step = ``train_batch_size × gradient_accumulation_steps`` samples. They run as
  one forward pass by default (``micro_batch=None``): the loss is a mean over samples and SD has
  no batch statistics, so this is the same gradient as accumulating micro-batches, and much
  faster on a GPU. ``micro_batch=k`` splits the step into chunks of k (less memory).
* ε-prediction MSE (v-prediction when the scheduler's ``prediction_type`` says so), timesteps
  uniform in [0, T), noisy latents ``√ᾱ_t·x + √(1-ᾱ_t)·ε``.
* SDXL: penultimate hidden states of both encoders concatenated (B, 77, 2048), the second
  encoder's pooled projection and per-sample ``add_time_ids``.
* Precision: fp32 on CPU. On CUDA, autocast to the weights' dtype (fp16 with a GradScaler, or
  bf16); TF32 matmuls are switched on for the duration of :func:`train_lora` and restored after.
* Speed on CUDA: fused AdamW; after 3 eager steps the whole step is replayed as a CUDA graph
  (:mod:`.step_graph`; measured on an H200, SD1.5 512 px batch 1×4 rank 128 bf16: 8.7 → 15.3
  steps/s); the other :class:`TrainSpeedups` (fused LoRA linears, channels-last with a Triton
  GroupNorm) bring an H100 to ≈ 19–20 steps/s graphed (bench/README.md, session 5). No host
  sync per step except reading the loss (a step late: ``read_ahead``).
* Determinism: one ``torch.Generator`` on the device, seeded with ``request.seed``, draws
  samples, noise and timesteps; LoRA init is seeded too; the global RNG is left untouched.
  On CPU the same seed gives bit-identical checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import InvalidRequest
from ..params import TrainRequest
from ..progress import CancelToken, EtaClock, Progress, ProgressFn, no_progress
from .latent_cache import LatentCache, build_latent_cache
from .lora_io import lora_target_modules, save_kohya_lora

logger = logging.getLogger(__name__)

ADAPTER = "easyphoto"
#: Checkpoint tensors are stored in this dtype (kohya's usual save precision).
SAVE_DTYPE = torch.float16
WARMUP_FRACTION = 0.05


@dataclass(frozen=True)
class Checkpoint:
    """A saved LoRA: ``out_dir/checkpoint-<step>.safetensors``; ``lora``: the same tensors
    still in memory (on the device) when :func:`train_lora` was asked to keep them."""

    step: int
    path: Path
    lora: Optional["LoraSnapshot"] = field(default=None, repr=False, compare=False)


@dataclass
class TrainOutput:
    """``losses[i]``: mean loss of step i + 1; ``seconds``: wall time per phase."""

    checkpoints: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)


@dataclass
class Batch:
    """One optimiser step's n samples, on the device. ``latents``/``noise``: (n, 4, h, w)
    float32; ``timesteps``: (n,) long; ``caption_index``: (n,) long row of each of
    ``token_ids`` (per tokenizer, (U, 77) long); ``time_ids``: (n, 6) or None."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    caption_index: torch.Tensor
    token_ids: list
    time_ids: Optional[torch.Tensor]

    def chunk(self, start: int, stop: int) -> "Batch":
        pick = slice(start, stop)
        return Batch(self.latents[pick], self.noise[pick], self.timesteps[pick],
                     self.caption_index[pick], self.token_ids,
                     None if self.time_ids is None else self.time_ids[pick])


def remove_lora(components) -> None:
    """Delete the training adapter from the UNet and text encoders (no-op when absent)."""
    for model in [components.unet, *components.text_encoders]:
        if ADAPTER in (getattr(model, "peft_config", None) or {}):
            if hasattr(model, "delete_adapters"):
                model.delete_adapters(ADAPTER)
            else:
                model.delete_adapter(ADAPTER)


def _lora_config(rank: int, alpha: int, targets):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                      init_lora_weights=True, lora_dropout=0.0)


class LoraTrainer:
    """Adds LoRA layers to ``components`` and owns the optimiser, schedule and scaler.

    ``request`` must be resolved (no ``None`` family fields). ``total_steps`` sizes the lr
    schedule. The adapters stay in the models (active) until :func:`remove_lora`.
    """

    def __init__(self, components, request: TrainRequest, total_steps: int,
                 micro_batch: Optional[int] = None, autocast: bool = True,
                 graphable: bool = False, master_weights: bool = False):
        self.c, self.request, self.total_steps = components, request, total_steps
        self.device = torch.device(components.device)
        self.samples = request.train_batch_size * request.gradient_accumulation_steps
        self.micro_batch = max(1, min(micro_batch or self.samples, self.samples))
        self.train_te = request.text_encoder_lr_scale > 0
        self._add_adapters()
        #: fp32 copies the optimiser updates while the models' LoRA weights are half precision
        #: (``master_weights`` with half-precision models: no autocast, no casts per layer)
        self.masters: dict = {}
        if master_weights and components.dtype != torch.float32:
            self._keep_masters(components.dtype)
            autocast = False
        self.generator = torch.Generator(self.device).manual_seed(request.seed)
        self.alphas = components.noise_scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.prediction = components.noise_scheduler.config.get("prediction_type", "epsilon")
        if self.prediction not in ("epsilon", "v_prediction"):
            raise InvalidRequest(f"Unsupported prediction type {self.prediction!r}.")
        cuda_mixed = self.device.type == "cuda" and components.dtype != torch.float32
        self.autocast_dtype = components.dtype if cuda_mixed and autocast else None
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=cuda_mixed and components.dtype == torch.float16)
        #: CUDA-graph capturable (see step_graph): fused AdamW with tensor learning rates
        self.graphable = graphable and self.device.type == "cuda"
        self.optimizer, self.schedule = self._optimiser()

    def _add_adapters(self) -> None:
        """LoRA on the UNet and (when trained) the text encoders; weights seeded, in fp32."""
        request, targets = self.request, lora_target_modules(self.c.family)
        remove_lora(self.c)
        models = [self.c.unet] + (list(self.c.text_encoders) if self.train_te else [])
        # created on the models' device (not on the CPU, then copied): seeded by manual_seed
        # there too
        with torch.random.fork_rng(devices=[]), torch.device(self.device):
            torch.manual_seed(request.seed)
            for index, model in enumerate(models):
                names = targets.unet if index == 0 else targets.text_encoder
                model.requires_grad_(False)
                model.add_adapter(_lora_config(request.rank, request.network_alpha, names),
                                  adapter_name=ADAPTER)
        self.unet_params = self._trainable(self.c.unet)
        self.te_params = [p for te in models[1:] for p in self._trainable(te)]
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.lora_layers = [m for model in models for m in model.modules()
                            if isinstance(m, BaseTunerLayer)]

    def _keep_masters(self, dtype: torch.dtype) -> None:
        """fp32 master copy (with a gradient buffer) of every LoRA weight; the weights
        themselves become ``dtype``."""
        for param in self.unet_params + self.te_params:
            master = param.detach().clone()
            master.grad = torch.zeros_like(master)
            self.masters[param] = master
            param.data = param.data.to(dtype)

    def _optimised(self, params: list) -> list:
        """What the optimiser updates for ``params``: their masters, or themselves."""
        return [self.masters[p] for p in params] if self.masters else params

    @staticmethod
    def _trainable(model) -> list:
        params = [p for name, p in model.named_parameters() if f".{ADAPTER}." in name]
        for param in params:
            param.data = param.data.float()
            param.requires_grad_(True)
        return params

    def _optimiser(self):
        from diffusers.optimization import get_scheduler

        r = self.request
        rates = [r.learning_rate, r.learning_rate * r.text_encoder_lr_scale]
        if self.graphable:  # the schedule writes into lr tensors the graph reads
            rates = [torch.tensor(rate, device=self.device) for rate in rates]
        groups = [{"params": self._optimised(self.unet_params), "lr": rates[0]}]
        if self.te_params:
            groups.append({"params": self._optimised(self.te_params), "lr": rates[1]})
        extra = {"fused": True, "capturable": self.graphable} if self.device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(groups, betas=(r.adam_beta1, r.adam_beta2),
                                      weight_decay=r.adam_weight_decay, eps=r.adam_epsilon,
                                      **extra)
        warmup = (math.ceil(WARMUP_FRACTION * self.total_steps)
                  if r.lr_scheduler == "constant_with_warmup" else 0)
        schedule = get_scheduler(r.lr_scheduler, optimizer, num_warmup_steps=warmup,
                                 num_training_steps=self.total_steps)
        return optimizer, schedule

    def fused(self, enabled: bool = True):
        """Context: the LoRA linears as one autograd node each (see :mod:`.fused_lora`)."""
        if not enabled:
            return contextlib.nullcontext(0)
        from .fused_lora import fused_lora_linears

        models = [self.c.unet] + (list(self.c.text_encoders) if self.train_te else [])
        return fused_lora_linears(models, ADAPTER)

    # -- one step ------------------------------------------------------------------------------
    def draw_batch(self, cache: LatentCache, n: Optional[int] = None) -> Batch:
        """n (default: one step's) samples: variants, latents drawn from their posterior,
        noise and uniform timesteps — all from the trainer's generator."""
        n = n or self.samples
        g = self.generator
        index = cache.draw(n, g)
        shape = (n, *cache.mean.shape[1:])
        eps = torch.randn(shape, generator=g, device=self.device)
        latents = cache.mean[index] + cache.std[index] * eps
        noise = torch.randn(shape, generator=g, device=self.device)
        steps = torch.randint(0, self.alphas.shape[0], (n,), generator=g, device=self.device)
        time_ids = None if cache.time_ids is None else cache.time_ids[index]
        return Batch(latents, noise, steps, cache.caption_index[index], cache.token_ids,
                     time_ids)

    def _encode_text(self, batch: Batch):
        """(n, 77, D) hidden states and (SDXL) (n, P) pooled embeddings for the batch's
        captions. The encoders run once per distinct caption of the dataset (usually one),
        whatever the batch holds: static shapes, no host sync."""
        ids, pick = batch.token_ids, batch.caption_index
        if self.c.family == "sd15":
            return self.c.text_encoders[0](ids[0])[0][pick], None
        first = self.c.text_encoders[0](ids[0], output_hidden_states=True)
        second = self.c.text_encoders[1](ids[1], output_hidden_states=True)
        hidden = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return hidden[pick], second.text_embeds[pick]

    def loss(self, batch: Batch) -> torch.Tensor:
        """Mean MSE (float32 scalar) of the UNet's prediction against ε (or v)."""
        alpha = self.alphas[batch.timesteps].view(-1, 1, 1, 1)
        signal, sigma = alpha.sqrt(), (1.0 - alpha).sqrt()
        noisy = signal * batch.latents + sigma * batch.noise
        target = batch.noise if self.prediction == "epsilon" else \
            signal * batch.noise - sigma * batch.latents
        dtype = self.c.dtype
        with self._autocast():
            hidden, pooled = self._encode_text(batch)
            extra = {}
            if pooled is not None:
                extra["added_cond_kwargs"] = {"text_embeds": pooled.to(dtype),
                                              "time_ids": batch.time_ids.to(dtype)}
            pred = self.c.unet(noisy.to(dtype), batch.timesteps,
                               encoder_hidden_states=hidden.to(dtype), return_dict=False,
                               **extra)[0]
        return F.mse_loss(pred.float(), target, reduction="mean")

    @contextlib.contextmanager
    def _autocast(self):
        """Autocast on CUDA; peft's cast of each LoRA input to fp32 is switched off inside
        (autocast runs the LoRA matmuls in half precision from the fp32 master weights)."""
        if self.autocast_dtype is None:
            yield
            return
        for layer in self.lora_layers:
            layer.cast_input_dtype_enabled = False
        try:
            with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                yield
        finally:
            for layer in self.lora_layers:
                layer.cast_input_dtype_enabled = True

    def step(self, batch: Batch) -> torch.Tensor:
        """One optimiser step on ``batch`` (split into micro-batches) and one schedule step;
        returns the detached mean loss (no host sync)."""
        loss = self.update(batch)
        self.schedule.step()
        return loss

    def update(self, batch: Batch) -> torch.Tensor:
        """The device work of :meth:`step` (no schedule step): what a CUDA graph captures."""
        n, total = batch.latents.shape[0], None
        for start in range(0, n, self.micro_batch):
            part = batch.chunk(start, start + self.micro_batch)
            loss = self.loss(part) * (part.latents.shape[0] / n)
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        params = self.unet_params + self.te_params
        if self.masters:  # half-precision gradients into the fp32 masters
            masters = self._optimised(params)
            for master in masters:  # (``zero_grad(set_to_none=True)`` drops the buffers)
                if master.grad is None:
                    master.grad = torch.empty_like(master)
            torch._foreach_copy_([m.grad for m in masters], [p.grad for p in params])
            params = masters
        if self.request.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.request.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.masters:  # the updated masters back into the models' weights
            with torch.no_grad():
                weights = self.unet_params + self.te_params
                torch._foreach_copy_(weights, self._optimised(weights))
                for weight in weights:
                    weight.grad = None
        else:
            self.optimizer.zero_grad(set_to_none=True)
        return total

    # -- saving --------------------------------------------------------------------------------
    def save(self, path: Path, step: int) -> Path:
        """Write the current LoRA as a kohya file (fp16 tensors) with run metadata."""
        return self.snapshot(step).write(path)

    def snapshot(self, step: int) -> "LoraSnapshot":
        """The current LoRA as fp16 copies (on the device: later steps do not change them)."""
        from peft import get_peft_model_state_dict

        masters = {p.data_ptr(): m for p, m in self.masters.items()}

        def state(model):  # from the fp32 masters where there are masters
            raw = get_peft_model_state_dict(model, adapter_name=ADAPTER)
            return {k: masters.get(v.data_ptr(), v).detach().to(SAVE_DTYPE, copy=True)
                    for k, v in raw.items()}

        r = self.request
        te_states = [state(te) for te in self.c.text_encoders] if self.train_te else []
        meta = {"easyphoto_family": self.c.family, "easyphoto_step": str(step),
                "easyphoto_total_steps": str(self.total_steps),
                "easyphoto_base_id": str(self.c.base_id),
                "ss_resolution": f"({r.resolution}, {r.resolution})", "ss_seed": str(r.seed),
                "ss_learning_rate": str(r.learning_rate)}
        ready = None
        if self.device.type == "cuda":  # the copies above are queued: mark their end
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))
        return LoraSnapshot(state(self.c.unet), te_states, r.rank, r.network_alpha, meta,
                            self.c.family, ready)


@dataclass(frozen=True)
class LoraSnapshot:
    """A LoRA's tensors at one step, ready to be written as a kohya file. ``ready``: on CUDA,
    the event after the queued copies that made the tensors."""

    unet: dict
    text_encoders: list
    rank: int
    alpha: float
    metadata: dict
    family: str
    ready: Optional[object] = field(default=None, repr=False, compare=False)

    def write(self, path: Path) -> Path:
        """Write the kohya file (from any thread: see :meth:`on_host`)."""
        unet, text_encoders = self.on_host()
        return save_kohya_lora(path, unet, text_encoders, self.rank, self.alpha,
                               metadata=self.metadata, family=self.family)

    def on_host(self) -> tuple[dict, list]:
        """The states with CPU tensors. CUDA tensors come back in **one** copy on a side
        stream that waits for :attr:`ready` only — not for the training steps queued after
        the snapshot (one copy per tensor on the training stream would make the writer wait
        for a step at each of ~1,000 tensors, and fight the training loop for the GIL)."""
        states = [self.unet, *self.text_encoders]
        tensors = [t for state in states for t in state.values()]
        if not tensors or tensors[0].device.type != "cuda" \
                or len({t.dtype for t in tensors}) != 1:
            return self.unet, list(self.text_encoders)
        device = tensors[0].device
        side = torch.cuda.Stream(device)
        with torch.cuda.stream(side):
            if self.ready is not None:
                side.wait_event(self.ready)
            flat = torch.cat([t.reshape(-1) for t in tensors]).cpu()  # waits for `side` only
        pieces = iter(flat.split([t.numel() for t in tensors]))
        host = [{k: next(pieces).view(t.shape) for k, t in state.items()} for state in states]
        return host[0], host[1:]

    def kohya_tensors(self) -> dict:
        """The tensors :meth:`write` puts in the file (kohya keys), still on the device."""
        from .lora_io import kohya_tensors

        return kohya_tensors(self.unet, self.text_encoders, self.rank, self.alpha, self.family)

    def as_kohya_lora(self):
        """The snapshot's tensors as :func:`~.lora_io.load_kohya_lora` returns its file's
        (same keys and values; the file's extra metadata aside), without the disk."""
        from .lora_io import TEXT_MODEL, KohyaLora

        def as_in_file(state: dict) -> dict:  # text-encoder keys start with ``text_model.``
            return {k if k.startswith(TEXT_MODEL) else TEXT_MODEL + k: v for k, v in state.items()}

        return KohyaLora(self.unet, [as_in_file(s) for s in self.text_encoders], self.rank,
                         float(self.alpha), dict(self.metadata))


class CheckpointWriter:
    """Writes checkpoint snapshots on one background thread while training goes on (reading
    the tensors back from the GPU and the safetensors write overlap the next steps).
    :meth:`finish` waits for every write and re-raises the first failure."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easyphoto-ckpt")
        self._pending: list = []

    def submit(self, snapshot: LoraSnapshot, path: Path):
        future = self._pool.submit(snapshot.write, path)
        self._pending.append(future)
        return future

    def finish(self, raise_errors: bool = True) -> None:
        """Wait for every write; the first failure is raised (or only logged)."""
        try:
            for future in self._pending:
                error = future.exception()
                if error is not None and raise_errors:
                    raise error
                if error is not None:
                    logger.warning("a checkpoint write failed as well: %s", error)
        finally:
            self._pending.clear()
            self._pool.shutdown(wait=True)


@dataclass(frozen=True)
class TrainSpeedups:
    """How (not what) :func:`train_lora` computes; every switch but ``read_ahead`` and
    ``fused_lora`` acts on CUDA only (ignored on the CPU).

    ``cuda_graph``: replay steps as one CUDA graph (:mod:`.step_graph`).
    ``channels_last``: the UNet's weights in the channels-last layout for the run (other
    convolution kernels; restored afterwards); ``None`` = where the channels-last GroupNorm
    runs too (fp32 master weights, no autocast, ``nhwc_group_norm``, Triton on CUDA).
    ``attention``: the scaled-dot-product attention kernels tried first — ``"default"``
    (PyTorch's order), ``"cudnn"`` (cuDNN's fused attention first) or ``"flash"``. cuDNN's
    attention is 5 ms per step faster (H100, 49.4 vs 54.9 ms) but compiles its kernels at first
    use (≈ 3 s, 13 s on a fresh machine: bench ``coldstart``), so the default is flash and the
    training pipeline picks cuDNN only when its kernels were compiled while the run prepared
    (:mod:`.start_up`).
    ``master_weights``: the LoRA weights in the models' half precision and no autocast, the
    optimiser updating fp32 master copies (checkpoints are saved from the masters); ``None``
    = on for bf16 models (bf16 has fp32's range), off for fp16 (autocast keeps the norms in
    fp32 there). Measured on an H100 (bf16, 150 graphed steps): 70.0 → 59.7 ms per step, the
    same loss trajectory, 8.2 → 7.3 GiB peak.
    ``read_ahead``: read a step's loss only once the next step is queued (no GPU idle time
    between steps); off: read it right after its step.
    ``nhwc_group_norm``: with ``channels_last``, the UNet's GroupNorm layers read and write
    channels-last tensors (:mod:`.nhwc_group_norm`, Triton) instead of converting to NCHW
    and back around every norm.
    ``fused_lora``: each LoRA linear as one autograd node (:mod:`.fused_lora`: the LoRA
    branch added by the matrix product, no element-wise kernels per layer); where it would
    not be exact (autocast, fp16 training) peft's forward runs.
    ``fused_geglu``: the UNet's GEGLU gates in one Triton kernel per pass
    (:mod:`.fused_geglu`) instead of diffusers' split halves, ``gelu`` and product.
    """

    def masters_for(self, dtype: torch.dtype) -> bool:
        """Whether a model set of ``dtype`` trains with fp32 master weights."""
        return dtype == torch.bfloat16 if self.master_weights is None else self.master_weights

    def channels_last_for(self, dtype: torch.dtype) -> bool:
        """Whether a model set of ``dtype`` trains in channels-last (on CUDA)."""
        if self.channels_last is not None:
            return self.channels_last
        from .nhwc_group_norm import triton_usable

        return self.masters_for(dtype) and self.nhwc_group_norm and triton_usable()

    cuda_graph: bool = True
    channels_last: Optional[bool] = None
    attention: str = "flash"
    master_weights: Optional[bool] = None
    read_ahead: bool = True
    fused_lora: bool = True
    nhwc_group_norm: bool = True
    fused_geglu: bool = True

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_ORDERS:
            raise InvalidRequest(f"attention must be one of {sorted(ATTENTION_ORDERS)}; "
                                 f"got {self.attention!r}")


#: SDPA back-ends in priority order per :attr:`TrainSpeedups.attention` (None: PyTorch's own).
ATTENTION_ORDERS = {"default": None,
                    "cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
                    "flash": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")}


def attention_order(device: torch.device, name: str):
    """Context: scaled-dot-product attention tries the back-ends of
    ``ATTENTION_ORDERS[name]`` first (CUDA only; ``"default"`` or a CPU: no change)."""
    order = ATTENTION_ORDERS[name]
    if order is None or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3 (a WebUI host's torch): PyTorch's own order
        return contextlib.nullcontext()
    backends = [getattr(SDPBackend, b) for b in order if hasattr(SDPBackend, b)]
    try:
        return sdpa_kernel(backends, set_priority=True)
    except TypeError:  # torch < 2.5: no priority order to set
        return contextlib.nullcontext()


@contextlib.contextmanager
def _speedups_applied(components, speedups: TrainSpeedups):
    """Channels-last UNet, its GroupNorm and GEGLU kernels and the SDPA order for the duration
    (CUDA only); restored after."""
    device = torch.device(components.device)
    if device.type != "cuda":
        yield
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(attention_order(device, speedups.attention))
        if speedups.channels_last_for(components.dtype):
            components.unet.to(memory_format=torch.channels_last)
            stack.callback(components.unet.to, memory_format=torch.contiguous_format)
            if speedups.nhwc_group_norm:
                from .nhwc_group_norm import nhwc_group_norms

                stack.enter_context(nhwc_group_norms([components.unet]))
        if speedups.fused_geglu:
            from .fused_geglu import fused_gegelus

            stack.enter_context(fused_gegelus([components.unet]))
        yield


@contextlib.contextmanager
def tf32_matmuls(device: torch.device):
    """TF32 matmuls/convolutions on CUDA for the duration; previous flags restored."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def train_lora(components, dataset_dir: Path, request: TrainRequest, out_dir: Path,
               total_steps: int, progress: ProgressFn = no_progress,
               cancel: Optional[CancelToken] = None, *,
               on_checkpoint: Optional[Callable[[Checkpoint], None]] = None,
               micro_batch: Optional[int] = None,
               speedups: Optional[TrainSpeedups] = None,
               keep_snapshots: bool = False) -> TrainOutput:
    """Train a LoRA for ``total_steps`` optimiser steps and save checkpoints.

    Checkpoints ``out_dir/checkpoint-<step>.safetensors`` at every ``validation_steps`` and at
    the final step. ``progress`` gets ``Progress("latents", ...)`` while the cache is built,
    then ``Progress("train", step, total_steps, loss, eta)`` after every step (after that
    step's checkpoint). ``cancel`` is checked before every step and raises
    :class:`~easyphoto.progress.Cancelled`; checkpoints already written stay in ``out_dir``
    (the runner removes the run folder). ``on_checkpoint`` (e.g. validation) runs right after
    each checkpoint is written, with the LoRA live in ``components``; it must leave the models
    as it found them. Its time is reported apart (``seconds["callbacks"]``).
    ``micro_batch``: samples per forward pass (default: the whole step, see the module doc).
    ``speedups``: :class:`TrainSpeedups` (default: its defaults).
    ``keep_snapshots``: each :class:`Checkpoint` keeps its tensors on the device
    (``checkpoint.lora``, ~150 MB each at SD1.5 rank 128) so validation need not read the
    files back.
    """
    if total_steps < 1:
        raise InvalidRequest(f"total_steps must be ≥ 1; got {total_steps}.")
    request, device = request.resolved(), torch.device(components.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = {"latents": 0.0, "lora_setup": 0.0, "train": 0.0, "checkpoints": 0.0,
               "callbacks": 0.0}
    speedups = speedups or TrainSpeedups()
    with tf32_matmuls(device), _speedups_applied(components, speedups):
        started = time.monotonic()
        cache, trainer = _cache_and_trainer(components, dataset_dir, request, total_steps,
                                            micro_batch, speedups, progress, seconds)
        seconds["prepare"] = time.monotonic() - started
        output = TrainOutput(seconds=seconds)
        if trainer.graphable:
            from .step_graph import GraphedSteps

            stepper = GraphedSteps(trainer)
        else:
            stepper = trainer.step
        with trainer.fused(speedups.fused_lora):
            _loop(trainer, stepper, cache, out_dir, output, progress, cancel, on_checkpoint,
                  keep_snapshots, speedups.read_ahead)
    seconds["total"] = time.monotonic() - started
    seconds["steps_per_s"] = total_steps / seconds["train"] if seconds["train"] > 0 else 0.0
    logger.info("trained %d steps in %.1f s (%.2f steps/s), final loss %.4f", total_steps,
                seconds["train"], seconds["steps_per_s"], output.losses[-1])
    return output


def _cache_and_trainer(components, dataset_dir: Path, request: TrainRequest, total_steps: int,
                       micro_batch: Optional[int], speedups: "TrainSpeedups",
                       progress: ProgressFn, seconds: dict) -> tuple:
    """The latent cache (VAE encoding, on a worker thread) and the :class:`LoraTrainer`
    (adapters, masters, optimiser: Python-bound) built side by side; their own seconds go to
    ``seconds["latents"]`` and ``seconds["lora_setup"]``. (Independent: the cache draws its
    crops from its own seeded ``random.Random``, the adapters from the seeded torch RNG.)"""
    from concurrent.futures import ThreadPoolExecutor

    def timed(key: str, fn, *args, **kwargs):
        tick = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds[key] = time.monotonic() - tick

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="easyphoto-latents") as pool:
        cache = pool.submit(timed, "latents", build_latent_cache, components, dataset_dir,
                            request.resolution, request.random_flip, request.seed, progress)
        try:
            trainer = timed("lora_setup", LoraTrainer, components, request, total_steps,
                            micro_batch, graphable=speedups.cuda_graph,
                            master_weights=speedups.masters_for(components.dtype))
        except BaseException:
            cache.cancel()
            raise
        return cache.result(), trainer


def _loop(trainer: LoraTrainer, stepper, cache: LatentCache, out_dir: Path,
          output: TrainOutput, progress: ProgressFn, cancel: Optional[CancelToken],
          on_checkpoint, keep_snapshots: bool = False, read_ahead: bool = True) -> None:
    """The step loop of :func:`train_lora` (fills ``output``)."""
    writer = CheckpointWriter()
    try:
        _steps(trainer, stepper, cache, out_dir, output, progress, cancel, on_checkpoint, writer,
               keep_snapshots, read_ahead)
    except BaseException:
        writer.finish(raise_errors=False)  # the loop's own error is the one to report
        raise
    tick = time.monotonic()
    writer.finish()  # every checkpoint on disk (or its write error raised) before returning
    output.seconds["checkpoints"] += time.monotonic() - tick


def _steps(trainer: LoraTrainer, stepper, cache: LatentCache, out_dir: Path,
           output: TrainOutput, progress: ProgressFn, cancel: Optional[CancelToken],
           on_checkpoint, writer: CheckpointWriter, keep_snapshots: bool,
           read_ahead: bool = True) -> None:
    """With ``read_ahead`` each step's loss is read (a wait for the GPU) only once the next
    step is queued, so the GPU never idles between steps; that step's progress follows, then
    the cancel check. Without, each step's loss is read and reported right after it."""
    total, interval = trainer.total_steps, trainer.request.validation_steps
    seconds, clock = output.seconds, EtaClock(total)
    previous = None  # (step, loss tensor) not read yet

    def report(step: int, loss: torch.Tensor) -> None:
        tick = time.monotonic()
        output.losses.append(float(loss))
        seconds["train"] += time.monotonic() - tick
        progress(Progress(stage="train", done=step, total=total, loss=output.losses[-1],
                          eta=clock.eta(step)))

    for step in range(1, total + 1):
        if cancel is not None:
            cancel.check()
        tick = time.monotonic()
        # a copy: a CUDA graph's loss tensor is overwritten by its next replay
        loss = stepper(trainer.draw_batch(cache)).detach().clone()
        seconds["train"] += time.monotonic() - tick
        if not read_ahead:
            report(step, loss)
        elif previous is not None:
            report(*previous)
            if cancel is not None:
                cancel.check()
        if step % interval == 0 or step == total:
            _checkpoint(trainer, step, out_dir, output, on_checkpoint, writer, keep_snapshots)
        previous = (step, loss) if read_ahead else None
    if previous is not None:
        report(*previous)


def _checkpoint(trainer: LoraTrainer, step: int, out_dir: Path, output: TrainOutput,
                on_checkpoint, writer: CheckpointWriter, keep_snapshots: bool) -> None:
    """Snapshot the LoRA of ``step`` (queued after that step) and hand it to the writer;
    with ``on_checkpoint``, wait for the file and call it."""
    seconds, tick = output.seconds, time.monotonic()
    snapshot = trainer.snapshot(step)
    checkpoint = Checkpoint(step, out_dir / f"checkpoint-{step}.safetensors",
                            snapshot if keep_snapshots else None)
    written = writer.submit(snapshot, checkpoint.path)
    output.checkpoints.append(checkpoint)
    if on_checkpoint is not None:  # it reads the file: wait for it
        written.result()
    seconds["checkpoints"] += time.monotonic() - tick
    if on_checkpoint is not None:
        tick = time.monotonic()
        on_checkpoint(checkpoint)
        seconds["callbacks"] += time.monotonic() - tick
