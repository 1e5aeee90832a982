"""Preprocessing (SPEC 1.2) on real photos with the lite face backend.

One preprocess run of six photos (four of Obama, Biden, a coffee cup) is shared by most tests;
two retouch-off runs of a small set (a downscaled Obama + obama2) serve the enhancement and
retouch tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from easyphoto.errors import EasyPhotoError
from easyphoto.face.types import Box
from easyphoto.params import CAPTION, TrainRequest
from easyphoto.train.photo_check import PhotoCheck
from easyphoto.train.preprocess import (BOX_SHIFT_DOWN, BOX_WIDEN, Sample, copy_originals,
                                        crop_face, enhance_small_crops, foreground_mask,
                                        preprocess, training_box, whiten_background)

MAIN_PHOTOS = ["obama.jpg", "obama2.jpg", "obama3.jpg", "obama_partial_face.jpg", "biden.jpg",
               "coffee.png"]
WHITE = 255


@pytest.fixture(scope="module")
def lite():
    from easyphoto.face.lite import LiteBackend

    backend = LiteBackend()
    yield backend
    backend.unload()


@pytest.fixture(scope="module")
def main_run(tmp_path_factory, photo, lite):
    """``(result, out_dir, progress calls)`` of the six-photo run (skin retouch on, default)."""
    out_dir = tmp_path_factory.mktemp("main_run")
    calls = []
    result = preprocess([photo(n) for n in MAIN_PHOTOS], out_dir, lite, TrainRequest(user_id="u"),
                        progress=lambda done, total, message: calls.append((done, total, message)))
    return result, out_dir, calls


@pytest.fixture(scope="module")
def off_runs(tmp_path_factory, photo, lite):
    """Two identical retouch-off runs of [obama downscaled ×0.5 (crop < 512 px), obama2]."""
    folder = tmp_path_factory.mktemp("small_photos")
    obama = Image.open(photo("obama.jpg")).convert("RGB")
    obama.resize((obama.width // 2, obama.height // 2), Image.LANCZOS).save(
        folder / "obama_small.jpg", quality=95)
    (folder / "obama2.jpg").write_bytes(photo("obama2.jpg").read_bytes())
    paths = [folder / "obama_small.jpg", folder / "obama2.jpg"]
    request = TrainRequest(user_id="u", skin_retouch=False)
    return [preprocess(paths, tmp_path_factory.mktemp(f"off_{i}"), lite, request) for i in (1, 2)]


def entry(result, name: str) -> dict:
    return next(p for p in result.report["photos"] if p["file"] == name)


def dataset_image(result, name: str) -> np.ndarray:
    return np.asarray(Image.open(result.dataset_dir.parent / entry(result, name)["dataset_image"]))


def largest_face(backend, image):
    faces = backend.detect(image)
    assert faces, "no face detected"
    return max(faces, key=lambda f: f.box.area)


def test_dataset_four_images_with_fixed_caption(main_run):
    result, out_dir, _ = main_run
    assert result.kept == 4 and len(result.images) == 4
    files = sorted(p.name for p in (out_dir / "dataset").iterdir())
    assert files == ["000.png", "001.png", "002.png", "003.png", "metadata.jsonl"]
    lines = (out_dir / "dataset" / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"file_name": f"{i:03d}.png", "text": CAPTION} for i in range(4)]
    assert [p.name for p in result.images] == [f"{i:03d}.png" for i in range(4)]


def test_report_lists_every_photo_with_verdict_and_reason(main_run):
    result, out_dir, _ = main_run
    report = json.loads((out_dir / "preprocess.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    verdicts = {p["file"]: p["verdict"] for p in report["photos"]}
    assert verdicts == {"obama.jpg": "ok", "obama2.jpg": "ok", "obama3.jpg": "ok",
                        "obama_partial_face.jpg": "ok", "biden.jpg": "other_person",
                        "coffee.png": "no_face"}
    assert "probably another person" in entry(result, "biden.jpg")["reason"]
    assert "no face" in entry(result, "coffee.png")["reason"]
    assert report["kept"] == 4 and report["dropped"] == 2 and report["backend"] == "lite"
    assert report["reference"].startswith("obama") and report["ref_image"] == "ref.jpg"
    assert report["caption"] == CAPTION and report["resolution"] == 512
    assert set(report["timings_s"]) >= {"check", "crop_retouch", "enhance", "write", "total"}
    kept = [p for p in report["photos"] if p["verdict"] == "ok"]
    assert sorted(p["dataset_image"] for p in kept) == report["images"]
    assert all(p["retouched"] for p in kept)


def test_progress_reaches_its_total(main_run):
    _, _, calls = main_run
    done = [c[0] for c in calls]
    assert done == sorted(done) and calls[-1][:2] == (13, 13)  # 2 × 6 photos + 1
    assert all(total == 13 for _, total, _ in calls)


def test_dataset_images_short_side_face_and_white_background(main_run, lite):
    result, _, _ = main_run
    for name in MAIN_PHOTOS[:4]:
        info, image = entry(result, name), dataset_image(result, name)
        assert image.dtype == np.uint8 and image.ndim == 3 and min(image.shape[:2]) == 512, name
        assert [image.shape[1], image.shape[0]] == info["size"]
        face = largest_face(lite, image)
        height, width = image.shape[:2]
        x0, y0, x1, y1 = Box(*info["dataset_train_box"]).to_int()
        outside = np.ones((height, width), bool)
        outside[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2] = False
        assert (image[outside] == WHITE).all(), name
        band_x, band_y = width // 20, height // 20  # the outer 5 % all round
        strips = {"top": (image[:band_y], y0 > band_y + 2),
                  "bottom": (image[-band_y:], y1 < height - band_y - 2),
                  "left": (image[:, :band_x], x0 > band_x + 2),
                  "right": (image[:, -band_x:], x1 < width - band_x - 2)}
        checked = [side for side, (strip, clear) in strips.items() if clear]
        assert len(checked) >= 3, (name, checked)  # only a face cut by the photo's edge loses one
        for side in checked:
            assert (strips[side][0] == WHITE).all(), (name, side)
        core = crop_face(image, face, ratio=0.6)[0]
        assert (core == WHITE).all(axis=2).mean() < 0.02, name


def test_widened_box_rule_left_of_box_is_white(main_run, lite):
    result, _, _ = main_run
    for name in MAIN_PHOTOS[:4]:
        info, image = entry(result, name), dataset_image(result, name)
        face, train = Box(*info["dataset_face_box"]), Box(*info["dataset_train_box"])
        expected = training_box(face, image.shape[1], image.shape[0])
        assert train.to_list() == pytest.approx(expected.to_list(), abs=0.02)
        assert train.y0 == pytest.approx(min(face.y0 + BOX_SHIFT_DOWN * face.height,
                                             image.shape[0]), abs=0.02)
        left = int(np.floor(face.x0 - BOX_WIDEN * face.width)) - 1  # the face the rule used
        if left > 0:
            assert (image[:, :left] == WHITE).all(), name
        found = largest_face(lite, image).box  # detected afresh in the white-background image
        left = int(found.x0 - (BOX_WIDEN + 0.1) * found.width)
        if left > 0:
            assert (image[:, :left] == WHITE).all(), name
        right = int(np.ceil(found.x1 + (BOX_WIDEN + 0.1) * found.width))
        assert (image[:, right:] == WHITE).all(), name
        assert left > 0 or name == "obama_partial_face.jpg"


def test_whiten_background_follows_the_saliency_and_box_mask(lite, rgb):
    image = rgb("obama.jpg")
    region, _ = crop_face(image, largest_face(lite, image))
    mask, face, box = foreground_mask(region, lite)
    white = whiten_background(region, mask)
    assert (white[mask == 0] == WHITE).all()
    assert np.array_equal(white[mask > 0], region[mask > 0])
    assert not (lite.saliency(region)[mask > 0] <= 128).any()
    ys, xs = np.nonzero(mask)
    assert xs.min() >= np.floor(face.box.x0 - BOX_WIDEN * face.box.width)
    assert xs.max() < np.ceil(face.box.x1 + BOX_WIDEN * face.box.width)
    assert ys.min() >= np.floor(face.box.y0 + BOX_SHIFT_DOWN * face.box.height)
    assert box == training_box(face.box, region.shape[1], region.shape[0])


def test_reference_crop_has_a_face_and_is_not_whitened(main_run, lite, rgb):
    result, out_dir, _ = main_run
    assert result.ref_image == out_dir / "ref.jpg"
    ref = np.asarray(Image.open(result.ref_image))
    largest_face(lite, ref)
    info = entry(result, result.report["reference"])
    assert info["is_reference"] and [ref.shape[1], ref.shape[0]] == info["crop_size"]
    assert (ref == WHITE).all(axis=2).mean() < 0.05  # the background was kept


def test_originals_are_byte_identical_copies(main_run, photo):
    result, out_dir, _ = main_run
    assert sorted(p.name for p in (out_dir / "photos").iterdir()) == sorted(MAIN_PHOTOS)
    for name in MAIN_PHOTOS:
        assert (out_dir / "photos" / name).read_bytes() == photo(name).read_bytes()
        assert entry(result, name)["stored_as"] == name


def test_embeddings_saved_without_pickle(main_run):
    result, out_dir, _ = main_run
    saved = np.load(out_dir / "embeddings.npy", allow_pickle=False)
    assert saved.shape == (4, 128) and saved.dtype == np.float32
    assert np.array_equal(saved, result.embeddings)
    norms = np.linalg.norm(saved, axis=1)
    assert np.all((norms > 0.5) & (norms < 1.5))  # dlib descriptors, not zeros


def test_small_crop_is_resized_up_and_reported(off_runs):
    result = off_runs[0]
    small, big = entry(result, "obama_small.jpg"), entry(result, "obama2.jpg")
    assert min(small["crop_size"]) < 512 and small["verdict"] == "ok"
    assert small["enhance"].startswith("none available, resized")
    assert "Lanczos" in small["enhance"] and "lite" in small["enhance"]
    assert big["enhance"] == "not needed"
    assert min(dataset_image(result, "obama_small.jpg").shape[:2]) == 512


def test_retouch_changes_the_face_and_off_is_deterministic(main_run, off_runs):
    on, first_off, second_off = main_run[0], off_runs[0], off_runs[1]
    for name in ("obama_small.jpg", "obama2.jpg"):
        assert np.array_equal(dataset_image(first_off, name), dataset_image(second_off, name))
        assert entry(first_off, name)["retouched"] is False
    retouched, plain = dataset_image(on, "obama2.jpg"), dataset_image(first_off, "obama2.jpg")
    assert retouched.shape == plain.shape
    face = Box(*entry(first_off, "obama2.jpg")["dataset_face_box"]).scaled(0.6)
    x0, y0, x1, y1 = face.to_int()
    diff = np.abs(retouched[y0:y1, x0:x1].astype(int) - plain[y0:y1, x0:x1].astype(int))
    assert diff.mean() > 0.5 and (diff.max(axis=2) > 3).mean() > 0.05


def test_no_usable_photo_names_every_photo_and_reason(tmp_path, photo, lite):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("coffee.png", "grass.png"):
        (folder / name).write_bytes(photo(name).read_bytes())
    (folder / "broken.jpg").write_bytes(photo("obama.jpg").read_bytes()[:2000])
    with pytest.raises(EasyPhotoError) as caught:
        preprocess(sorted(folder.iterdir()), tmp_path / "out", lite, TrainRequest(user_id="u"))
    message = str(caught.value)
    for name in ("coffee.png", "grass.png", "broken.jpg"):
        assert name in message
    assert message.count("no_face (no face was found") == 2
    assert "broken.jpg: unreadable (broken.jpg: not a readable image" in message
    assert not (tmp_path / "out" / "dataset").exists()


class _NoSaliency:
    """The lite backend with an empty saliency mask (every step-7 mask comes out empty)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def saliency(self, image):
        return np.zeros(image.shape[:2], np.uint8)


def test_empty_mask_skips_the_photo_with_a_reason(tmp_path, photo, lite):
    with pytest.raises(EasyPhotoError) as caught:
        preprocess([photo("obama.jpg")], tmp_path, _NoSaliency(lite),
                   TrainRequest(user_id="u", skin_retouch=False))
    assert "obama.jpg: empty_mask (the person mask" in str(caught.value)


class _DoublingSR:
    name = "fake"

    @staticmethod
    def super_resolve(image):
        return np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)


def _sample(side: int) -> Sample:
    return Sample(PhotoCheck(file=f"{side}.jpg"), np.zeros((side, side + 10, 3), np.uint8))


def test_enhance_at_most_half_smallest_first():
    samples = [_sample(s) for s in (300, 100, 600, 200, 400)]
    enhance_small_crops(samples, _DoublingSR(), enabled=True)
    notes = {s.check.file: s.notes["enhance"] for s in samples}
    assert notes["100.jpg"].startswith("super-resolved by the fake backend: 110×100 → 220×200")
    assert notes["200.jpg"].startswith("super-resolved")
    assert notes["300.jpg"].startswith("not enhanced: at most half")
    assert notes["400.jpg"].startswith("not enhanced") and notes["600.jpg"] == "not needed"
    assert [s.image.shape[0] for s in samples] == [300, 200, 600, 400, 400]
    off = [_sample(100), _sample(200)]
    enhance_small_crops(off, _DoublingSR(), enabled=False)
    assert off[0].notes["enhance"].startswith("off") and off[0].image.shape[0] == 100


def test_copy_originals_keeps_bytes_and_dedupes_names(tmp_path):
    sources = []
    for index, (folder, name) in enumerate([("a", "x.jpg"), ("b", "x.jpg"), ("c", "X.jpg")]):
        (tmp_path / folder).mkdir()
        sources.append(tmp_path / folder / name)
        sources[-1].write_bytes(bytes([index]) * 10)
    stored = copy_originals([*sources, tmp_path / "missing.jpg"], tmp_path / "photos")
    assert stored == ["x.jpg", "x_1.jpg", "X_2.jpg", None]
    for source, name in zip(sources, stored):
        assert (tmp_path / "photos" / name).read_bytes() == source.read_bytes()
    again = copy_originals([tmp_path / "photos" / "x.jpg"], tmp_path / "photos")
    assert again == ["x_3.jpg"] and (tmp_path / "photos" / "x.jpg").read_bytes() == bytes(10)
