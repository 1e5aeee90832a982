"""LoRA files as peft adapters on a model set's UNet and text encoder(s), fused while unchanged.

:class:`LoraAdapters` keeps each LoRA file (kohya or diffusers keys, ``.safetensors``) as a named
peft adapter, loaded once (cached by path, mtime and size; least recently used evicted past
``limit``). A call makes exactly its (LoRA, weight) pairs active with ``set_adapters``; a call
without LoRAs disables the LoRA layers.

**Fusing** (``fuse=True``, the default): once the call's pairs are set, every adapter layer that
carries one of them merges them into its base weight (peft ``merge``: ``W + Σ wᵢ·αᵢ/rᵢ·BᵢAᵢ``),
so the denoising steps run the plain base layers instead of the adapter branches. The fused set
stays while the next calls ask for the same pairs (a batch of one user merges once). When the
set changes (another user, another weight, no LoRA, an adapter loaded or deleted) the layers are
unmerged and their base weights are copied back from a pristine copy taken before the first
merge (on the host, pinned for CUDA modules), so switching never accumulates rounding: the
base weights are bit-identical to the loaded ones whenever nothing is fused.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from ..errors import InvalidRequest
from .base import LoraRef

logger = logging.getLogger(__name__)

#: LoRA adapters kept resident per model set before the least recently used is deleted.
LORA_CACHE_LIMIT = 8
#: Pipeline attributes that may carry LoRA layers.
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


@dataclass(frozen=True)
class _Adapter:
    name: str
    stamp: tuple[int, int]  # (mtime_ns, size) of the file when it was loaded


class PristineWeights:
    """Copies of base-layer parameters taken before their first merge, to restore exactly."""

    def __init__(self) -> None:
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(self, layer) -> None:
        """Save ``layer``'s base weight (and bias where a LoRA bias merges into it) once."""
        base = layer.get_base_layer()
        params = [base.weight]
        if any(getattr(layer, "lora_bias", {}).values()) and base.bias is not None:
            params.append(base.bias)
        for param in params:
            if id(param) not in self._saved:
                self._saved[id(param)] = (param, _host_copy(param.data))

    def restore(self, layer) -> None:
        """Copy the saved values back into ``layer``'s base parameters (in place)."""
        base = layer.get_base_layer()
        for param in (base.weight, getattr(base, "bias", None)):
            saved = self._saved.get(id(param)) if param is not None else None
            if saved is not None:
                param.data.copy_(saved[1], non_blocking=True)

    def clear(self) -> None:
        self._saved.clear()

    def __len__(self) -> int:
        return len(self._saved)


def _host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``tensor`` (pinned when it lives on CUDA, for a fast copy back)."""
    pinned = tensor.is_cuda
    copy = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pinned)
    copy.copy_(tensor)
    return copy


def lora_layers(pipe) -> list:
    """The peft LoRA layers of ``pipe``'s UNet and text encoder(s)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = []
    for attribute in _COMPONENTS:
        model = getattr(pipe, attribute, None)
        if model is not None:
            layers.extend(m for m in model.modules() if isinstance(m, BaseTunerLayer))
    return layers


class LoraAdapters:
    """LoRA files as named peft adapters on one model set's UNet and text encoder(s).

    The adapters live in the modules, so any pipeline object built around them can load,
    switch or delete them. ``limit``: adapters kept before the least recently used goes.
    ``fuse``: merge the active adapters into the base weights while they stay the same.
    """

    def __init__(self, limit: int = LORA_CACHE_LIMIT, fuse: bool = True) -> None:
        if limit < 1:
            raise InvalidRequest(f"the LoRA cache limit must be ≥ 1, got {limit}.")
        self.limit = limit
        self.fuse = bool(fuse)
        self._adapters: OrderedDict[str, _Adapter] = OrderedDict()
        self._serial = 0
        self._enabled = True  # LoRA layers switched on (``disable_lora`` switches them off)
        self._active: Optional[tuple] = None  # ((name, weight), ...) set on the layers
        self._fused: Optional[tuple] = None  # the ``_active`` merged into the base weights
        self._merged: list = []  # layers holding a merge
        self._pristine = PristineWeights()

    @property
    def loaded(self) -> tuple[str, ...]:
        """Paths of the resident adapters, least recently used first."""
        return tuple(self._adapters)

    @property
    def fused(self) -> Optional[tuple]:
        """``((adapter name, weight), ...)`` merged into the base weights now, or ``None``."""
        return self._fused

    def step_token(self) -> tuple:
        """What the denoising step computes besides the base weights: changes whenever an
        adapter is loaded or deleted, and names the active set while it runs unfused (a CUDA
        graph captured under one token is valid while the token is unchanged; merges happen
        in place, so a fused set or disabled layers leave only the base layers running)."""
        unfused = self._enabled and self._fused is None and self._active is not None
        return (self._serial, len(self._adapters), self._active if unfused else None)

    def state_key(self) -> tuple:
        """Everything that decides the adapted modules' outputs (cached prompt embeddings are
        keyed by it): loaded adapters, switched on or off, the active pairs, fused or not."""
        return (self._serial, self._enabled, self._active, self._fused)

    def apply(self, pipe, loras: Sequence[LoraRef]) -> dict[str, float]:
        """Make exactly ``loras`` active on ``pipe``'s modules, at their weights.

        Loads files not resident yet (one ``load_lora_weights`` each); the same path twice
        adds its weights. Returns ``{adapter name: weight}`` of the call.
        """
        weights: dict[str, float] = {}
        for ref in loras:
            path = _lora_path(ref)
            weights[path] = weights.get(path, 0.0) + float(ref.weight)
        if not weights:
            self.unfuse(pipe)
            if self._adapters and self._enabled:
                pipe.disable_lora()
                self._enabled = False
            return {}
        if len(weights) > self.limit:
            raise InvalidRequest(f"{len(weights)} LoRAs in one call; at most {self.limit}.")
        names = {self._ensure(pipe, path, keep=set(weights)): w for path, w in weights.items()}
        wanted = tuple(names.items())
        if self.fuse and self._fused == wanted and self._enabled:
            return names  # the same pairs as the last call: already merged
        self.unfuse(pipe)
        if not self._enabled:
            pipe.enable_lora()
            self._enabled = True
        if wanted != self._active:  # a batch with the same LoRAs skips this
            pipe.set_adapters(list(names), adapter_weights=list(names.values()))
            self._active = wanted
        if self.fuse:
            self._merge(pipe, list(names))
        return names

    def _merge(self, pipe, names: list) -> None:
        """Merge adapters ``names`` (at their set weights) into the base weights."""
        started = time.monotonic()
        wanted = tuple(self._active or ())
        for layer in lora_layers(pipe):
            if not any(name in getattr(layer, "lora_A", {}) for name in names):
                continue
            self._pristine.keep(layer)
            self._merged.append(layer)
            layer.merge(adapter_names=names)
        self._fused = wanted
        logger.debug("LoRA %s fused into %d layers in %.3f s", wanted, len(self._merged),
                     time.monotonic() - started)

    def unfuse(self, pipe=None) -> None:
        """Undo the merge: unmerge every merged layer, then restore its pristine weights."""
        if self._fused is None:
            return
        for layer in self._merged:
            layer.unmerge()
            self._pristine.restore(layer)
        logger.debug("LoRA %s unfused from %d layers", self._fused, len(self._merged))
        self._merged, self._fused = [], None

    def _ensure(self, pipe, path: str, keep: set) -> str:
        """The adapter name of ``path``, loading the file if it is new or changed on disk."""
        stat = Path(path).stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        entry = self._adapters.get(path)
        if entry is not None and entry.stamp == stamp:
            self._adapters.move_to_end(path)
            return entry.name
        self.unfuse(pipe)  # adapters are added or deleted on unmerged layers only
        if entry is not None:
            logger.info("LoRA %s changed on disk: reloading it", path)
            self._delete(pipe, path)
        while len(self._adapters) >= self.limit:
            victim = next((p for p in self._adapters if p not in keep), None)
            if victim is None:  # pragma: no cover - apply() bounds the call's LoRAs
                break
            self._delete(pipe, victim)
        return self._load(pipe, path, stamp)

    def _load(self, pipe, path: str, stamp: tuple[int, int]) -> str:
        name = f"ep_lora_{self._serial}"
        self._serial += 1
        started = time.monotonic()
        self._active = None  # re-set the weights (layers made before stay as switched)
        state = _read_lora(Path(path))
        try:
            with _quiet_adapter_load():
                pipe.load_lora_weights(state, adapter_name=name)
        except (RuntimeError, ValueError, KeyError) as error:
            _discard(pipe, name)
            summary = " ".join(str(error).split())[:300]
            raise InvalidRequest(f"LoRA file {Path(path).name} does not fit this base model "
                                 f"(another family or architecture?): {summary}") from error
        self._adapters[path] = _Adapter(name, stamp)
        logger.info("LoRA %s loaded as adapter %s in %.2f s", path, name,
                    time.monotonic() - started)
        return name

    def _delete(self, pipe, path: str) -> None:
        entry = self._adapters.pop(path)
        pipe.delete_adapters(entry.name)
        self._active = None
        self._serial += 1  # the layers changed: a new step token
        logger.debug("LoRA adapter %s (%s) deleted", entry.name, path)

    def forget(self) -> None:
        """Drop the bookkeeping (the models carrying the adapters are being released)."""
        self._adapters.clear()
        self._enabled, self._active, self._fused = True, None, None
        self._merged = []
        self._pristine.clear()


def _discard(pipe, name: str) -> None:
    """Remove whatever a failed ``load_lora_weights`` left of adapter ``name``."""
    try:
        pipe.delete_adapters(name)
    except (ValueError, KeyError, AttributeError):  # nothing of it was left
        logger.debug("LoRA adapter %s: nothing to clean up", name)


@contextlib.contextmanager
def _quiet_adapter_load() -> Iterator[None]:
    """Silence two false alarms of loading a further adapter: peft's "several adapters"
    warning, and transformers' load report listing the text encoder's other adapters' keys
    as "MISSING … newly initialized" (they are kept as they are; the tests check it)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _lora_path(ref: LoraRef) -> str:
    """The resolved path of a LoRA reference; :class:`InvalidRequest` when unusable."""
    try:
        weight = float(ref.weight)
    except (TypeError, ValueError):
        weight = math.nan
    if not math.isfinite(weight):
        raise InvalidRequest(f"LoRA {ref.path}: weight must be a finite number, got {weight}.")
    path = Path(ref.path).expanduser()
    if not path.is_file():
        raise InvalidRequest(f"LoRA file {ref.path!r} does not exist (the diffusers engine takes "
                             "LoRA file paths, not host LoRA names).")
    if path.suffix.lower() != ".safetensors":
        raise InvalidRequest(f"LoRA file {path.name} is not .safetensors; EasyPhoto never "
                             "unpickles model files. Convert it to .safetensors.")
    return str(path.resolve())


def _read_lora(path: Path) -> dict:
    """The tensors of a LoRA file (CPU); diffusers converts kohya names on load."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types
        raise InvalidRequest(f"LoRA file {path.name} cannot be read: {error}") from error
