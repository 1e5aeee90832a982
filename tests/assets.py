"""Real test photos, fetched at test time from PyPI packages and cached (never committed).

* ``face_recognition`` 1.3.0 sdist, ``tests/test_images/``: five Obama photos, one Biden photo,
  a 32-bit (RGBA) PNG;
* ``insightface`` 0.7.3 sdist: ``t1.jpg``, a group photo of six people;
* ``scikit-image`` 0.24.0 wheel, ``skimage/data/``: ``astronaut.png`` (one face) and
  ``coffee.png`` / ``grass.png`` (no face).

Each archive is verified against the sha256 PyPI publishes before anything is read from it.
The cache lives in ``$EASYPHOTO_TEST_CACHE`` (default ``~/.cache/easyphoto/test-assets``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

PYPI_JSON = os.environ.get("EASYPHOTO_PYPI_JSON", "https://pypi.org/pypi")

# name -> (project, filename, sha256, member path inside the archive)
_FR = ("face-recognition", "face_recognition-1.3.0.tar.gz",
       "5e5efdd1686aa566af0d3cc1313b131e4b197657a8ffd03669e6d3fad92705ec")
_IF = ("insightface", "insightface-0.7.3.tar.gz",
       "f191f719612ebb37018f41936814500544cd0f86e6fcd676c023f354c668ddf7")
_SK = ("scikit-image", "scikit_image-0.24.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
       "fa27b3a0dbad807b966b8db2d78da734cb812ca4787f7fbb143764800ce2fa9c")

ASSETS: dict[str, tuple[tuple[str, str, str], str]] = {
    **{name: (_FR, f"face_recognition-1.3.0/tests/test_images/{name}") for name in (
        "obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg",
        "obama_partial_face2.jpg", "biden.jpg", "32bit.png")},
    "t1.jpg": (_IF, "insightface-0.7.3/insightface/data/images/t1.jpg"),
    "astronaut.png": (_SK, "skimage/data/astronaut.png"),
    "coffee.png": (_SK, "skimage/data/coffee.png"),
    "grass.png": (_SK, "skimage/data/grass.png"),
}


def cache_dir() -> Path:
    root = os.environ.get("EASYPHOTO_TEST_CACHE") or Path.home() / ".cache" / "easyphoto" / "test-assets"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _archive(project: str, filename: str, sha256: str) -> bytes:
    cached = cache_dir() / filename
    if cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() == sha256:
        return cached.read_bytes()
    index_url = f"{PYPI_JSON}/{project}/json"
    with urllib.request.urlopen(index_url, timeout=120) as response:
        releases = json.load(response)["releases"]
    urls = [f["url"] for files in releases.values() for f in files if f["filename"] == filename]
    if not urls:
        raise RuntimeError(f"{filename} is not listed at {index_url}")
    with urllib.request.urlopen(urllib.parse.urljoin(index_url, urls[0]), timeout=300) as response:
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{filename}: sha256 {digest} differs from the published {sha256}")
    tmp = cached.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(cached)
    return data


def _extract(data: bytes, filename: str, member: str) -> bytes:
    if filename.endswith(".whl"):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return archive.read(member)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        handle = archive.extractfile(member)
        if handle is None:
            raise RuntimeError(f"{member} not found in {filename}")
        return handle.read()


def asset(name: str) -> Path:
    """Path of the cached test photo ``name`` (one of ``ASSETS``), fetching it if needed."""
    (project, filename, sha256), member = ASSETS[name]
    path = cache_dir() / "files" / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = _extract(_archive(project, filename, sha256), filename, member)
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(payload)
        tmp.replace(path)
    return path


if __name__ == "__main__":  # prefetch: python tests/assets.py
    for key in ASSETS:
        print(asset(key))
