"""Reading user images safely: every failure is an :class:`ImageError` naming the file and why.

``load_image`` accepts any format Pillow reads, applies the EXIF orientation and returns an
8-bit RGB ``PIL.Image``: CMYK, palette, greyscale and 16-bit images are converted, an alpha
channel is composited onto white. The pixel count is checked from the header *before* the
pixels are decoded, so a huge image is refused without allocating it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

#: Largest image accepted, in pixels (50 MP; a 12000×12000 photo is 144 MP).
MAX_PIXELS = 50_000_000
#: Largest file accepted, in bytes.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: File suffixes offered when a folder is scanned for photos.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic")

Source = Union[str, os.PathLike, bytes]


def _read_bytes(source: Source, label: str) -> bytes:
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{label}: file not found")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{label}: file is {size / 2**20:.0f} MiB; the limit is "
                             f"{MAX_FILE_BYTES / 2**20:.0f} MiB", code="too_large")
        data = path.read_bytes()
    if not data:
        raise ImageError(f"{label}: the file is empty (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{label}: file is {len(data) / 2**20:.0f} MiB; the limit is "
                         f"{MAX_FILE_BYTES / 2**20:.0f} MiB", code="too_large")
    return data


def _open(data: bytes, label: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageError(f"{label}: the image is far larger than the limit of "
                         f"{max_pixels / 1e6:.0f} MP — downscale it first", code="too_large") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file (the format is not recognised)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{label}: not a readable image ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{label}: the image is {width}×{height} ({width * height / 1e6:.0f} MP); "
                         f"the limit is {max_pixels / 1e6:.0f} MP — downscale it first",
                         code="too_large")
    if width < 1 or height < 1:
        raise ImageError(f"{label}: the image has no pixels ({width}×{height})")
    return image


def _decode(image: Image.Image, label: str) -> Image.Image:
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{label}: the image data is corrupt or truncated ({exc})") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: 16-bit scaled down, CMYK/palette/grey converted, alpha composited on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255)
                                .astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source: Source, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``source`` (path or bytes) as an upright 8-bit RGB image, or raise ``ImageError``.

    ``name`` is the label used in messages (defaults to the file name).
    """
    label = name or (Path(source).name if not isinstance(source, bytes) else "uploaded image")
    image = _open(_read_bytes(source, label), label, max_pixels)
    return to_rgb(_decode(image, label))


def load_rgb_array(source: Source, name: str | None = None, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``load_image`` as an ``(H, W, 3)`` uint8 array."""
    return np.asarray(load_image(source, name, max_pixels))


def list_images(folder: Union[str, os.PathLike]) -> list[Path]:
    """Regular files in ``folder`` (not recursive), sorted by name; hidden files skipped.

    Every file is listed, not only known suffixes, so a mislabelled file gets a verdict too.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ImageError(f"{path}: not a folder")
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
