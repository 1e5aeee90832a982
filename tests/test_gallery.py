"""The template gallery: packaged public-domain templates, user uploads, removal rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from easyphoto.errors import ImageError, InvalidRequest
from easyphoto.gallery import Gallery


def _png(size=(64, 48), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_first_start_gallery_is_not_empty_and_records_provenance(tmp_path):
    items = {item.name: item for item in Gallery(tmp_path / "user").items()}
    hopper = items["grace-hopper"]  # matplotlib ships with mediapipe: always installed
    assert hopper.origin == "packaged" and hopper.licence == "public domain"
    assert "U.S. Navy" in hopper.provenance and hopper.path.is_file()
    assert Image.open(hopper.path).size == (512, 600)


def test_uploads_are_validated_kept_once_and_removable(tmp_path):
    gallery = Gallery(tmp_path / "user")
    first = gallery.add(_png(), "My Template!.png")
    again = gallery.add(_png(), "My Template!.png")
    assert first.path == again.path and first.path.name.startswith("My_Template-")
    assert first.path.suffix == ".png" and first.origin == "user"
    tiff = gallery.add(_png(fmt="TIFF"), "scan.tif")
    assert tiff.path.suffix == ".png" and Image.open(tiff.path).format == "PNG"
    assert {i.name for i in gallery.items() if i.origin == "user"} == {first.name, tiff.name}
    gallery.remove(first.name)
    assert not first.path.exists()
    with pytest.raises(InvalidRequest, match="built-in template"):
        gallery.remove("grace-hopper")
    with pytest.raises(ImageError):
        gallery.add(b"not an image", "x.jpg")
    with pytest.raises(KeyError, match="no gallery template is called 'ghost'"):
        gallery.find("ghost")
