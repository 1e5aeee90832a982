"""easyphoto.weights: registry, path rule, and real downloads from :class:`FileServer` on
127.0.0.1 (Range-capable, logs requests, also plays a Hub endpoint for hf_hub_download)."""

from __future__ import annotations

import hashlib
import io
import random
import socket
import sys
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from easyphoto.errors import ChecksumMismatch, InvalidRequest, ModelUnavailable
from easyphoto.weights import LicenceNotAccepted, ModelSpec, ModelStore
from easyphoto.weights_registry import HOST_FOLDERS, REGISTRY

#: One role per SPEC §0 model (the registry may hold more).
SPEC_ROLES = set("""sd15_base sdxl_base vae_sd15 vae_sdxl controlnet_sd15_canny
    controlnet_sd15_openpose controlnet_sd15_tile controlnet_sd15_color controlnet_sdxl_canny
    controlnet_sdxl_openpose lora_filmvelvia3 annotator_openpose_body annotator_openpose_hand
    annotator_openpose_face insightface_buffalo_l face_detection_retinaface face_parsing_bisenet
    saliency_u2net skin_retouching face_fusion portrait_enhancement_gpen
    super_resolution_x2""".split())
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = "/m/tiny.safetensors"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``self.server.owner.files``; honours ``Range: bytes=N-`` unless told not to."""

    def log_message(self, *args):  # keep test output clean
        return

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        owner, path, rng = self.server.owner, self.path.split("?", 1)[0], self.headers.get("Range")
        data = owner.files.get(path)
        start = int(rng[6:].split("-")[0]) if data and rng and owner.honour_range else 0
        if data is None or start >= len(data) > 0:
            owner.requests.append((self.command, path, rng, 0))
            self.send_error(404 if data is None else 416)
            return
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        for key, value in (("Content-Length", len(body)), ("ETag", f'"{sha(data)}"'),
                           ("X-Repo-Commit", COMMIT), ("Accept-Ranges", "bytes")):
            self.send_header(key, str(value))
        self.end_headers()
        cut, owner.cut = owner.cut, None  # ``cut``: send only that many bytes, once
        body = body[:cut]
        owner.requests.append((self.command, path, rng, 0 if head else len(body)))
        if not head:
            self.wfile.write(body)


class FileServer:
    """HTTP server on 127.0.0.1 serving ``{url path: bytes}`` with Range support.

    ``requests`` logs ``(method, path, Range header or None, body bytes sent)``. Every answer
    also carries the headers a Hub endpoint sends (``X-Repo-Commit``, ``ETag``), so the same
    server works as ``HF_ENDPOINT``. ``honour_range=False`` answers 200 with the whole file.
    """

    def __init__(self, files: dict[str, bytes], honour_range: bool = True) -> None:
        self.files, self.honour_range, self.cut = files, honour_range, None
        self.requests: list[tuple[str, str, object, int]] = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "FileServer":
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No offline switch, mirror or proxy leaks in from the environment."""
    for name in ("HF_HUB_OFFLINE", "EASYPHOTO_OFFLINE", "HF_ENDPOINT", "EASYPHOTO_MODEL_URL_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def payload(n: int = 300_000, seed: int = 7) -> bytes:
    """Deterministic pseudo-random bytes (not compressible, not all equal)."""
    return random.Random(seed).randbytes(n)


def url_spec(url: str, data: bytes, **kw) -> ModelSpec:
    """A small URL-sourced spec whose checksum matches ``data``."""
    fields = dict(role="tiny_url", title="Tiny test LoRA", kind="lora", family="sd15",
                  source="url", url=url, filename="tiny.safetensors", size=len(data),
                  sha256=sha(data), licence="MIT", commercial_use=True, host_folder="Lora",
                  subdir="Lora")
    return ModelSpec(**{**fields, **kw})


def hf_spec(data: bytes) -> ModelSpec:
    return ModelSpec(role="tiny_hf", title="Tiny Hub ControlNet", kind="controlnet",
                     family="sd15", source="hf", repo="acme/tiny-model",
                     repo_file="weights/tiny.pth", revision="main", filename="tiny-local.pth",
                     size=len(data), sha256=sha(data), licence="Apache-2.0",
                     commercial_use=True, host_folder="ControlNet", subdir="ControlNet")


def tiny_store(root: Path, srv: FileServer, data: bytes, **kw) -> ModelStore:
    """A store whose only model is ``tiny_url`` served by ``srv`` at :data:`TINY`."""
    return ModelStore(root, specs=[url_spec(srv.base_url + TINY, data, **kw)])


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_registry_has_every_spec_model_with_source_licence_and_folder():
    folders = {"checkpoint": "Stable-diffusion", "vae": "VAE", "controlnet": "ControlNet",
               "lora": "Lora"}
    assert SPEC_ROLES <= set(REGISTRY)
    for spec in REGISTRY.values():
        assert spec.licence.strip() and isinstance(spec.commercial_use, bool)
        assert spec.sha256 is None or len(spec.sha256) == 64
        assert spec.size is None or spec.size > 1_000_000
        assert spec.url.startswith("https://") if spec.source == "url" else "/" in spec.repo
        assert spec.host_folder == folders.get(spec.kind), spec.role
    assert REGISTRY["insightface_buffalo_l"].commercial_use is False
    assert "non-commercial" in REGISTRY["insightface_buffalo_l"].licence
    assert REGISTRY["vae_sd15"].sha256.startswith("735e4c3a44")
    with pytest.raises(ValueError, match="sha256"):  # a malformed entry cannot be built
        url_spec("https://example.invalid/x", b"x", sha256="ABC")


def test_host_folder_mapping_places_each_kind_in_its_webui_folder(tmp_path):
    ep, host = tmp_path / "ep", {name: tmp_path / name for name in HOST_FOLDERS}
    store = ModelStore(ep, host)
    assert store.path("sd15_base") == host["Stable-diffusion"] / REGISTRY["sd15_base"].filename
    assert store.path("vae_sdxl") == host["VAE"] / "sdxl-vae-fp16-fix.safetensors"
    assert store.path("controlnet_sd15_canny") == host["ControlNet"] / "control_v11p_sd15_canny.pth"
    assert store.path("lora_filmvelvia3") == host["Lora"] / "FilmVelvia3.safetensors"
    assert store.path("annotator_openpose_body") == ep / "annotator/openpose/body_pose_model.pth"
    assert store.path("insightface_buffalo_l") == ep / "insightface/models/buffalo_l"
    assert store.path("face_fusion") == ep / "modelscope/damo/cv_unet-image-face-fusion_damo"


def test_standalone_and_partial_mapping(tmp_path):
    store = ModelStore(tmp_path, {"Lora": tmp_path / "loras"})
    assert store.path("sd15_v15") == tmp_path / "Stable-diffusion/v1-5-pruned-emaonly.safetensors"
    assert store.path("lora_filmvelvia3") == tmp_path / "loras/FilmVelvia3.safetensors"
    with pytest.raises(InvalidRequest, match="Checkpoints"):
        ModelStore(tmp_path, {"Checkpoints": tmp_path})
    with pytest.raises(InvalidRequest, match="unknown model role"):
        store.path("no_such_role")


def test_require_missing_names_file_source_size_and_manual_place(tmp_path):
    store = ModelStore(tmp_path)
    msg = str(pytest.raises(ModelUnavailable, store.require, "vae_sd15").value)
    assert "vae-ft-mse-840000-ema-pruned.safetensors" in msg
    assert "huggingface.co/stabilityai/sd-vae-ft-mse-original" in msg
    assert "334.6 MB" in msg and REGISTRY["vae_sd15"].sha256 in msg
    assert str(tmp_path / "VAE" / "vae-ft-mse-840000-ema-pruned.safetensors") in msg
    assert "easyphoto models download vae_sd15" in msg
    target = put(store.path("vae_sd15"), b"weights")
    assert store.require("vae_sd15") == target


# ---- URL downloads ------------------------------------------------------------------------
def test_url_download_verifies_then_publishes(tmp_path):
    data = payload()
    with FileServer({TINY: data}) as srv:
        store, seen = tiny_store(tmp_path, srv, data), []
        result = store.download("tiny_url", progress=lambda d, t: seen.append((d, t)))
        again = store.download("tiny_url")
    final = tmp_path / "Lora" / "tiny.safetensors"
    assert result.downloaded and result.path == final and result.sha256 == sha(data)
    assert final.read_bytes() == data
    assert not (tmp_path / "Lora" / "tiny.safetensors.part").exists()
    assert seen[-1] == (len(data), len(data))
    assert not again.downloaded and len(srv.requests) == 1


def test_resume_sends_range_from_partial_length(tmp_path):
    data, n = payload(), 123_457
    with FileServer({TINY: data}) as srv:
        part = put(tmp_path / "Lora" / "tiny.safetensors.part", data[:n])
        tiny_store(tmp_path, srv, data).download("tiny_url")
    assert srv.requests == [("GET", TINY, f"bytes={n}-", len(data) - n)]
    final = tmp_path / "Lora" / "tiny.safetensors"
    assert sha(final.read_bytes()) == sha(data) and not part.exists()


def test_interrupted_download_keeps_part_and_resumes(tmp_path):
    data = payload()
    with FileServer({TINY: data}) as srv:
        srv.cut, store = 100_000, tiny_store(tmp_path, srv, data)
        err = pytest.raises(ModelUnavailable, store.download, "tiny_url")
        assert "closed after 100000 of 300000 bytes" in str(err.value)
        assert "next download resumes it" in str(err.value)
        store.download("tiny_url")
    assert [r[2:] for r in srv.requests] == [(None, 100_000), ("bytes=100000-", 200_000)]
    assert (tmp_path / "Lora/tiny.safetensors").read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    data = payload()
    with FileServer({TINY: data}, honour_range=False) as srv:
        put(tmp_path / "Lora" / "tiny.safetensors.part", b"garbage that must not survive")
        tiny_store(tmp_path, srv, data).download("tiny_url")
    assert (tmp_path / "Lora" / "tiny.safetensors").read_bytes() == data


def test_checksum_mismatch_is_refused_and_deleted(tmp_path):
    good, bad = payload(seed=1), payload(seed=2)
    with FileServer({TINY: bad}) as srv, pytest.raises(ChecksumMismatch) as err:
        tiny_store(tmp_path, srv, good).download("tiny_url")
    msg = str(err.value)
    assert sha(good) in msg and sha(bad) in msg and "tiny.safetensors" in msg
    assert not (tmp_path / "Lora" / "tiny.safetensors").exists()
    assert not (tmp_path / "Lora" / "tiny.safetensors.part").exists()


def test_unreachable_server_gives_manual_placement_message(tmp_path):
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/m/tiny.safetensors"
    store = ModelStore(tmp_path, specs=[url_spec(url, b"x" * 10)], timeout=5)
    err = pytest.raises(ModelUnavailable, store.download, "tiny_url")
    msg = str(err.value)
    assert "tiny.safetensors" in msg and url in msg and "download failed" in msg
    assert f"place the file at {tmp_path / 'Lora' / 'tiny.safetensors'}" in msg
    assert not (tmp_path / "Lora" / "tiny.safetensors").exists()


def test_url_base_override_points_at_a_mirror(tmp_path, monkeypatch):
    data = payload(4096)
    with FileServer({"/mirror/tiny.safetensors": data}) as srv:
        monkeypatch.setenv("EASYPHOTO_MODEL_URL_BASE", srv.base_url + "/mirror/")
        spec = url_spec("https://models.example.invalid/webui/tiny.safetensors", data)
        store = ModelStore(tmp_path, specs=[spec])
        assert store.source_for("tiny_url") == srv.base_url + "/mirror/tiny.safetensors"
        store.download("tiny_url")
    assert (tmp_path / "Lora" / "tiny.safetensors").read_bytes() == data


def test_non_commercial_licence_needs_acceptance(tmp_path):
    data = payload(2048)
    with FileServer({TINY: data}) as srv:
        store = tiny_store(tmp_path, srv, data, commercial_use=False, licence="research use only")
        with pytest.raises(LicenceNotAccepted, match="research use only"):
            store.download("tiny_url")
        assert srv.requests == []  # refused before any connection
        result = store.download("tiny_url", accept_licence=True)
    assert result.downloaded and result.licence == "research use only"
    assert not result.commercial_use


def zip_spec(url: str, data: bytes) -> ModelSpec:
    """A zip pack unpacked into ``<root>/insightface/models/pack/``."""
    return url_spec(url, data, role="pack", filename="pack.zip", kind="face", family="any",
                    host_folder=None, subdir="insightface/models", unpack=True)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return buf.getvalue()


def test_zip_pack_is_verified_and_unpacked(tmp_path):
    data = _zip({"det.onnx": b"detector", "rec.onnx": b"recogniser"})
    with FileServer({"/r/pack.zip": data}) as srv:
        store = ModelStore(tmp_path, specs=[zip_spec(srv.base_url + "/r/pack.zip", data)])
        store.download("pack")
        store.download("pack")  # present: nothing fetched again
    assert len(srv.requests) == 1
    folder = tmp_path / "insightface/models/pack"
    assert store.path("pack") == folder and store.is_present("pack")
    assert (folder / "det.onnx").read_bytes() == b"detector"
    assert (folder / "rec.onnx").read_bytes() == b"recogniser"
    assert store.verify("pack") == "ok"


def test_zip_with_escaping_path_is_refused(tmp_path):
    data = _zip({"../evil.txt": b"x", "ok.onnx": b"y"})
    with FileServer({"/r/pack.zip": data}) as srv:
        store = ModelStore(tmp_path, specs=[zip_spec(srv.base_url + "/r/pack.zip", data)])
        pytest.raises(ModelUnavailable, store.download, "pack").match("unsafe path")
    assert not (tmp_path / "evil.txt").exists() and not store.is_present("pack")


# ---- Hugging Face Hub ---------------------------------------------------------------------
def test_hf_download_through_local_endpoint(tmp_path, monkeypatch):
    data = payload(50_000)
    path = "/acme/tiny-model/resolve/main/weights/tiny.pth"
    with FileServer({path: data}) as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.base_url)  # read at call time
        cn = tmp_path / "webui" / "ControlNet"
        store = ModelStore(tmp_path / "ep", {"ControlNet": cn}, specs=[hf_spec(data)])
        result = store.download("tiny_hf")
    assert result.path == cn / "tiny-local.pth" and result.path.read_bytes() == data
    # (huggingface_hub may also ask the endpoint for /api/... registries: not ours to check)
    assert [m for m, p, _, _ in srv.requests if p == path] == ["HEAD", "GET"]
    assert not (tmp_path / "ep" / ".downloads" / "tiny_hf").exists()


def test_hf_checksum_mismatch_leaves_nothing(tmp_path):
    path = "/acme/tiny-model/resolve/main/weights/tiny.pth"
    store = ModelStore(tmp_path, specs=[hf_spec(payload(1000, seed=4))])
    with FileServer({path: payload(1000, seed=3)}) as srv, pytest.raises(ChecksumMismatch):
        store.hf_endpoint = srv.base_url
        store.download("tiny_hf")
    assert not store.path("tiny_hf").exists()
    assert not (tmp_path / ".downloads" / "tiny_hf").exists()


def test_hf_offline_mode_refuses_without_connecting(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with FileServer({}) as srv, pytest.raises(ModelUnavailable) as err:
        ModelStore(tmp_path, specs=[hf_spec(b"x" * 10)], hf_endpoint=srv.base_url).download(
            "tiny_hf")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE=1" in msg and "tiny-local.pth" in msg
    assert "acme/tiny-model" in msg and "weights/tiny.pth" in msg
    assert str(tmp_path / "ControlNet" / "tiny-local.pth") in msg
    assert srv.requests == []


# ---- ModelScope -----------------------------------------------------------------------------
def test_modelscope_not_installed_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # import fails
    with pytest.raises(ModelUnavailable) as err:
        ModelStore(tmp_path).download("saliency_u2net")
    msg = str(err.value)
    assert "pip install modelscope" in msg and "damo/cv_u2net_salient-detection" in msg
    assert str(tmp_path / "modelscope/damo/cv_u2net_salient-detection") in msg


def test_modelscope_snapshot_goes_to_the_store_path(tmp_path, monkeypatch):
    calls = []

    def snapshot_download(model_id, revision=None, cache_dir=None, local_dir=None):
        calls.append((model_id, revision, local_dir))
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        (Path(local_dir) / "configuration.json").write_text("{}")
        return local_dir

    for name in ("modelscope", "modelscope.hub", "modelscope.hub.snapshot_download"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules[name].snapshot_download = snapshot_download
    store = ModelStore(tmp_path)
    store.download("face_fusion")
    target = str(store.path("face_fusion"))
    assert calls == [("damo/cv_unet-image-face-fusion_damo", "v1.3", target)]
    assert store.is_present("face_fusion") and store.verify("face_fusion") == "unverified"


def test_verify_flags_a_corrupt_file_but_leaves_it(tmp_path):
    data = payload(5000)
    nosum = url_spec("https://x.invalid/t2.bin", data, role="nosum", filename="t2.bin",
                     sha256=None, size=None)
    tiny = url_spec("https://x.invalid/tiny.safetensors", data)
    store = ModelStore(tmp_path, specs=[tiny, nosum])
    assert store.verify("tiny_url") == "missing"
    target = put(store.path("tiny_url"), data[:-1] + b"!")
    with pytest.raises(ChecksumMismatch) as err:
        store.verify("tiny_url")
    assert sha(data) in str(err.value) and sha(target.read_bytes()) in str(err.value)
    assert target.exists()
    target.write_bytes(data)
    assert store.verify("tiny_url") == "ok"
    store.path("nosum").write_bytes(b"anything")
    assert store.verify("nosum") == "unverified"
