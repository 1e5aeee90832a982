"""Safe image loading: every bad input gets an ImageError naming the file and the problem."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from easyphoto.errors import ImageError
from easyphoto.images import MAX_PIXELS, list_images, load_image


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def obama(photo):
    return Image.open(photo("obama.jpg")).convert("RGB")


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: the file is empty \(0 bytes\)") as info:
        load_image(tmp_path / "empty.jpg")
    assert info.value.code == "unreadable"


def test_text_renamed_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a photo\n" * 10)
    with pytest.raises(ImageError, match=r"notes\.jpg: not an image file"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_jpeg(tmp_path, obama):
    data = _jpeg_bytes(obama)
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"cut\.jpg: the image data is corrupt or truncated"):
        load_image(tmp_path / "cut.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="gone.png: file not found"):
        load_image(tmp_path / "gone.png")


def test_huge_image_refused_before_decoding(tmp_path):
    Image.new("1", (12000, 12000)).save(tmp_path / "huge.png")
    with pytest.raises(ImageError, match=r"huge\.png: the image is 12000×12000 \(144 MP\); the "
                                         r"limit is 50 MP") as info:
        load_image(tmp_path / "huge.png")
    assert info.value.code == "too_large" and MAX_PIXELS == 50_000_000


def test_one_pixel_image_loads(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "dot.png")
    image = load_image(tmp_path / "dot.png")
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (10, 20, 30)


def test_cmyk_jpeg_becomes_rgb(obama):
    image = load_image(_jpeg_bytes(obama.convert("CMYK")))
    assert image.mode == "RGB" and image.size == obama.size
    diff = np.abs(np.asarray(image, np.int16) - np.asarray(obama, np.int16)).mean()
    assert diff < 12, diff


def test_16_bit_png_scaled_to_8_bit(tmp_path, obama):
    grey = np.asarray(obama.convert("L"), np.uint16)
    Image.fromarray(grey * 257).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = load_image(tmp_path / "deep.png")
    assert image.mode == "RGB"
    assert np.abs(np.asarray(image)[..., 0].astype(int) - grey).max() <= 1


def test_rgba_composited_on_white(photo):
    source = Image.open(photo("32bit.png"))
    assert source.mode == "RGBA"
    image = load_image(photo("32bit.png"))
    assert image.mode == "RGB" and image.size == source.size
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, "PNG")
    assert load_image(buffer.getvalue()).getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_applied(obama):
    rotated = obama.transpose(Image.Transpose.ROTATE_90)  # stored sideways...
    exif = Image.Exif()
    exif[0x0112] = 6  # ...with "rotate 90° clockwise to display"
    image = load_image(_jpeg_bytes(rotated, exif=exif.tobytes()))
    assert image.size == obama.size
    diff = np.abs(np.asarray(image, np.int16) - np.asarray(obama, np.int16)).mean()
    assert diff < 6, diff


def test_palette_and_grey_become_rgb(obama):
    buffer = io.BytesIO()
    obama.convert("P").save(buffer, "PNG")
    assert load_image(buffer.getvalue()).mode == "RGB"
    buffer = io.BytesIO()
    obama.convert("L").save(buffer, "PNG")
    assert load_image(buffer.getvalue()).mode == "RGB"


def test_list_images_lists_every_visible_file(tmp_path):
    for name in ("b.jpg", "a.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.txt", "b.jpg"]
    with pytest.raises(ImageError, match="not a folder"):
        list_images(tmp_path / "nope")
