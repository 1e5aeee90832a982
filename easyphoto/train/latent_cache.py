"""The latent cache: every dataset image VAE-encoded once per augmentation variant.

Training never runs the VAE. Before the first step each dataset image (``dataset/NNN.png``,
white background, short side ≈ the resolution) is

1. resized so its short side is exactly ``resolution`` (aspect kept; a no-op for our dataset);
2. cut into up to :data:`CROPS_PER_IMAGE` square ``resolution``² crops at seeded random
   offsets along its long side (one crop when it is square): SPEC 1.3's "random crop", drawn
   from a few offsets fixed per run instead of a fresh offset every step;
3. with ``random_flip``, each crop also mirrored (the flip is then 50 % likely per sample);

and each variant is encoded to the VAE posterior's mean and standard deviation, scaled by the
VAE's ``scaling_factor``. A training sample picks an image uniformly, then one of its variants
uniformly, and draws ``latent = mean + std · ε`` — the same distribution as encoding it anew.

What is cached: those latent moments, the caption token ids (one row per distinct caption),
and for SDXL the ``add_time_ids`` of every variant. What is not: text embeddings — the text
encoders carry LoRA layers that change every step, so they run in the training step (77
tokens per distinct caption; negligible next to the UNet).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidRequest
from ..images import load_rgb_array
from ..progress import Progress, ProgressFn, no_progress

logger = logging.getLogger(__name__)

METADATA = "metadata.jsonl"
CROPS_PER_IMAGE = 3
#: Variants encoded per VAE call.
VAE_BATCH = 8


@dataclass
class Variant:
    """One augmented crop: ``pixels`` (res, res, 3) uint8; SDXL ids (orig h, w, top, left)."""

    image: int
    pixels: np.ndarray
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


@dataclass
class LatentCache:
    """Encoded variants (N of them, from I images), on the training device.

    ``mean``/``std``: (N, 4, res/8, res/8) float32, already × ``scaling_factor``;
    ``starts``/``counts``: (I,) long, image i owns variants ``starts[i] : starts[i] + counts[i]``;
    ``caption_index``: (N,) long row of ``token_ids``; ``token_ids``: per tokenizer (U, 77)
    long; ``time_ids``: (N, 6) float32 (orig h, orig w, crop top, crop left, res, res) for
    SDXL, else None.
    """

    mean: torch.Tensor
    std: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor
    caption_index: torch.Tensor
    token_ids: list
    time_ids: Optional[torch.Tensor]

    @property
    def images(self) -> int:
        return int(self.starts.shape[0])

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n,) variant indices: image uniform, then variant uniform within the image."""
        device = self.starts.device
        image = torch.randint(0, self.images, (n,), generator=generator, device=device)
        pick = torch.rand(n, generator=generator, device=device)
        offset = (pick * self.counts[image]).long().clamp_max(self.counts[image] - 1)
        return self.starts[image] + offset


def read_dataset(dataset_dir: Path) -> list[tuple[Path, str]]:
    """``(image path, caption)`` pairs from ``metadata.jsonl`` (``file_name`` / ``text``)."""
    dataset_dir = Path(dataset_dir)
    meta = dataset_dir / METADATA
    if not meta.is_file():
        raise InvalidRequest(f"The training dataset {dataset_dir} has no {METADATA}; run the "
                             "preprocessing step first.")
    items = []
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            items.append((dataset_dir / record["file_name"], str(record["text"])))
        except (ValueError, KeyError, TypeError):
            raise InvalidRequest(f"{meta} line {number} is not a {{'file_name', 'text'}} "
                                 "record.") from None
    if not items:
        raise InvalidRequest(f"The training dataset {dataset_dir} is empty.")
    return items


def _short_side_to(pixels: np.ndarray, resolution: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 so min(H, W) == resolution (bicubic), aspect kept."""
    height, width = pixels.shape[:2]
    if min(height, width) == resolution:
        return pixels
    scale = resolution / min(height, width)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.BICUBIC))


def make_variants(index: int, pixels: np.ndarray, resolution: int, flip: bool,
                  rng: random.Random) -> list[Variant]:
    """The crops (and mirrored crops) of one image; see the module docstring."""
    pixels = _short_side_to(pixels, resolution)
    height, width = pixels.shape[:2]
    extra = max(height, width) - resolution
    offsets = sorted({rng.randint(0, extra) for _ in range(CROPS_PER_IMAGE)}) if extra else [0]
    variants = []
    for offset in offsets:
        top, left = (offset, 0) if height > width else (0, offset)
        crop = np.ascontiguousarray(pixels[top:top + resolution, left:left + resolution])
        variants.append(Variant(index, crop, (height, width), (top, left)))
        if flip:
            mirrored = np.ascontiguousarray(crop[:, ::-1])
            variants.append(Variant(index, mirrored, (height, width),
                                    (top, width - left - resolution)))
    return variants


@torch.no_grad()
def _encode(vae, variants: list[Variant], device, progress: ProgressFn):
    """(mean, std) float32 (N, 4, h, w), scaled by the VAE's scaling (and shift) factor."""
    scale = float(vae.config.scaling_factor)
    shift = float(vae.config.get("shift_factor") or 0.0)
    means, stds = [], []
    dtype = next(vae.parameters()).dtype
    for start in range(0, len(variants), VAE_BATCH):
        chunk = np.stack([v.pixels for v in variants[start:start + VAE_BATCH]])
        pixels = torch.from_numpy(chunk).to(device).permute(0, 3, 1, 2)
        pixels = (pixels.to(dtype) / 127.5 - 1.0).contiguous()
        posterior = vae.encode(pixels).latent_dist
        means.append(((posterior.mean.float() - shift) * scale))
        stds.append(posterior.std.float() * scale)
        done = min(start + VAE_BATCH, len(variants))
        progress(Progress(stage="latents", done=done, total=len(variants)))
    return torch.cat(means), torch.cat(stds)


def _token_ids(tokenizers: list, captions: list[str], device) -> list[torch.Tensor]:
    """Per tokenizer, (U, max_length) long ids of the distinct captions."""
    return [tok(captions, padding="max_length", max_length=tok.model_max_length,
                truncation=True, return_tensors="pt").input_ids.to(device) for tok in tokenizers]


def build_latent_cache(components, dataset_dir: Path, resolution: int, random_flip: bool,
                       seed: int, progress: ProgressFn = no_progress) -> LatentCache:
    """Encode the dataset's variants once (see the module docstring). ``resolution`` in px,
    a multiple of 8."""
    if resolution % 8:
        raise InvalidRequest(f"The training resolution must be a multiple of 8; got {resolution}.")
    items = read_dataset(dataset_dir)
    rng = random.Random(seed)
    variants: list[Variant] = []
    for index, (path, _) in enumerate(items):
        variants += make_variants(index, load_rgb_array(path), resolution, random_flip, rng)
    device = components.device
    mean, std = _encode(components.vae, variants, device, progress)
    captions = sorted({caption for _, caption in items})
    per_image = [captions.index(caption) for _, caption in items]
    counts = torch.bincount(torch.tensor([v.image for v in variants]), minlength=len(items))
    time_ids = None
    if components.family == "sdxl":
        time_ids = torch.tensor([[*v.original_size, *v.crop_top_left, resolution, resolution]
                                 for v in variants], dtype=torch.float32, device=device)
    logger.info("latent cache: %d images → %d variants at %d px", len(items), len(variants),
                resolution)
    return LatentCache(
        mean=mean, std=std, starts=(torch.cumsum(counts, 0) - counts).to(device),
        counts=counts.to(device),
        caption_index=torch.tensor([per_image[v.image] for v in variants], device=device),
        token_ids=_token_ids(components.tokenizers, captions, device), time_ids=time_ids)
