"""Helpers of the inference tests (fixtures: ``conftest.py``): user ids, fakes, spies.

* :func:`make_user` writes a ready user id the fast way: a random rank-4 kohya LoRA for the
  tiny-random SD1.5 model (``save_kohya_lora``) and ``face_id.jpg`` / ``ref.jpg`` cut from a real
  photo, swapped in through ``UserStore.begin_run`` / ``commit_run`` (no training run).
* :class:`FakeEngine` implements the DiffusionEngine protocol: a seeded perturbation inside the
  blurred mask, nothing outside it; every call's arguments are recorded.
* :class:`SpyEngine` wraps any engine (the real DiffusersEngine) and records its calls.
* :class:`SpyBackend` wraps a face backend and counts ``fuse`` / ``retouch`` / ... calls.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from lora_helpers import add_random_lora

from easyphoto.engine.base import Generation, check_image_mask
from easyphoto.face.geometry import box_mask
from easyphoto.params import InferRequest

RANK, ALPHA = 4, 2.0


def random_lora_states(seed: int = 1) -> tuple[dict, dict]:
    """peft LoRA states (UNet, text encoder) for the tiny-random SD1.5 model, random A and B."""
    from easyphoto.train.tiny import build_tiny_sd15

    parts = build_tiny_sd15(0)
    unet, te = add_random_lora([parts.unet, parts.text_encoder], "sd15", seed=seed, scale=0.05,
                               rank=RANK, alpha=ALPHA)
    return unet, te


def face_crop(image: np.ndarray, backend: Any, ratio: float = 2.0) -> np.ndarray:
    """The largest face of ``image`` at ``box×ratio`` (what training keeps as face_id/ref)."""
    face = max(backend.detect(image), key=lambda f: f.box.area)
    x0, y0, x1, y1 = face.box.scaled(ratio, clip=(image.shape[1], image.shape[0])).to_int()
    return image[y0:y1, x0:x1].copy()


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def make_user(store: Any, user_id: str, photo: np.ndarray, backend: Any, lora_states=None):
    """A ready user id in ``store`` (see the module doc); returns its UserRecord."""
    from easyphoto.train.lora_io import save_kohya_lora

    unet_state, te_state = lora_states or random_lora_states()
    run = store.begin_run(user_id)
    save_kohya_lora(run / "lora.safetensors", unet_state, [te_state], RANK, ALPHA)
    crop = jpeg(face_crop(photo, backend))
    (run / "face_id.jpg").write_bytes(crop)
    (run / "ref.jpg").write_bytes(crop)
    return store.commit_run(user_id, run, base_model="tiny-random", steps=0)


@dataclass
class Call:
    """One recorded engine call."""

    method: str
    image: Any
    mask: Any
    strength: float
    generation: Generation
    mask_blur: int
    output: Any = None
    size: Any = None
    family: str = ""


class FakeEngine:
    """DiffusionEngine stand-in: out = image + seeded noise × (mask blurred by ``mask_blur``)."""

    def __init__(self, txt2img_image: np.ndarray | None = None) -> None:
        self.calls: list[Call] = []
        self.txt2img_image = txt2img_image

    def inpaint(self, image, mask, strength, generation: Generation, mask_blur: int = 8):
        check_image_mask(image, mask, generation.controls)
        rng = np.random.default_rng([generation.seed, generation.steps, int(strength * 1000)])
        size = 2 * int(2.5 * mask_blur + 0.5) + 1
        soft = cv2.GaussianBlur(mask, (size, size), float(mask_blur)) if mask_blur else mask
        noise = rng.integers(-60, 61, image.shape).astype(np.float32) * strength
        alpha = soft.astype(np.float32)[:, :, None] / 255.0
        out = np.clip(np.rint(image + noise * alpha), 0, 255).astype(np.uint8)
        out = np.where(soft[:, :, None] > 0, out, image)
        self.calls.append(Call("inpaint", image.copy(), mask.copy(), strength, generation,
                               mask_blur, out.copy()))
        return out

    def txt2img(self, size, generation: Generation, family: str = "sdxl"):
        width, height = size
        if self.txt2img_image is not None:
            out = cv2.resize(self.txt2img_image, (width, height), interpolation=cv2.INTER_AREA)
        else:
            out = np.random.default_rng(generation.seed).integers(0, 256, (height, width, 3),
                                                                  dtype=np.uint8)
        self.calls.append(Call("txt2img", None, None, 1.0, generation, 0, out, size, family))
        return out

    def available_controls(self):
        return ("canny", "openpose", "color", "tile")

    def unload(self) -> None:
        pass


class SpyEngine:
    """Wraps a real engine; records every inpaint / txt2img call (inputs and output)."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.calls = engine, []

    def inpaint(self, image, mask, strength, generation, mask_blur: int = 8):
        out = self.engine.inpaint(image, mask, strength, generation, mask_blur=mask_blur)
        self.calls.append(Call("inpaint", image.copy(), mask.copy(), strength, generation,
                               mask_blur, out.copy()))
        return out

    def txt2img(self, size, generation, family: str = "sdxl"):
        out = self.engine.txt2img(size, generation, family=family)
        self.calls.append(Call("txt2img", None, None, 1.0, generation, 0, out, size, family))
        return out

    def available_controls(self):
        return self.engine.available_controls()

    def unload(self) -> None:
        self.engine.unload()


class SpyBackend:
    """Wraps a face backend; ``counts[name]`` = calls of fuse, retouch, super_resolve, embed."""

    SPIED = ("fuse", "retouch", "super_resolve", "embed")

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.counts = {name: 0 for name in self.SPIED}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._backend, name)
        if name in self.SPIED:
            def counted(*args, **kwargs):
                self.counts[name] += 1
                return attr(*args, **kwargs)
            return counted
        return attr


# ---- shared, built once per test process ----------------------------------------------------
@functools.cache
def shared_backend():
    """One lite face backend per test process (its models load once)."""
    from easyphoto.face.lite import LiteBackend

    return LiteBackend()


@functools.cache
def shared_engine():
    """One real DiffusersEngine on the tiny-random preset (SD1.5 and SDXL) per test process."""
    from easyphoto.engine.diffusers_engine import DiffusersEngine

    return DiffusersEngine("tiny-random", device="cpu", sdxl_model="tiny-random")


@functools.cache
def shared_lora_states(seed: int):
    return random_lora_states(seed)


def request(**changes) -> InferRequest:
    """An InferRequest for the tiny-random preset and the lite backend, seed 1."""
    values = dict(user_ids=["obama"], base_model="tiny-random", face_backend="lite", seed=1)
    values.update(changes)
    return InferRequest(**values).validate()


def infer(template, engine, backend, users, options=None, **changes):
    """One template through ``run_batch`` (intermediates kept); the single InferResult."""
    from easyphoto.infer.batch import BatchOptions, run_batch

    batch = run_batch([template], request(**changes), engine=engine, backend=backend,
                      users=users, options=options or BatchOptions(keep=True))
    assert not batch.errors, batch.errors
    assert len(batch.results) == 1
    return batch.results[0]


def crops_mask(shape, faces, ratio: float = 3.0) -> np.ndarray:
    """``(H, W)`` bool: inside any face's ``box×ratio`` (clipped)."""
    height, width = shape[:2]
    mask = np.zeros((height, width), bool)
    for face in faces:
        mask |= box_mask((height, width), face.box.scaled(ratio, clip=(width, height))) > 0
    return mask


def two_faces(rgb) -> np.ndarray:
    """A crop of insightface's t1.jpg holding exactly two faces (left: a woman, right: a man)."""
    return np.ascontiguousarray(rgb("t1.jpg")[60:480, 0:450])


def working_crop(backend, image, index=0):
    """SPEC 2.3: ``box×3`` around face ``index``, short side 512, sides floored to 32, faces
    re-detected. Returns ``(crop, faces)``."""
    face = backend.detect(image)[index]
    height, width = image.shape[:2]
    x0, y0, x1, y1 = face.box.scaled(3.0, clip=(width, height)).to_int()
    region = image[y0:y1, x0:x1]
    scale = 512.0 / min(region.shape[:2])
    size = (int(region.shape[1] * scale) // 32 * 32, int(region.shape[0] * scale) // 32 * 32)
    crop = cv2.resize(region, size, interpolation=cv2.INTER_LANCZOS4)
    return crop, backend.detect(crop)
