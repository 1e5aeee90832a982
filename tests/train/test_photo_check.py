"""Photo check (SPEC 1.2 steps 1-6): rules on synthetic scores, then on real photos (lite backend)."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from easyphoto.face.types import Box, Face
from easyphoto.train.photo_check import PhotoCheck, check_photos, choose_reference, score_identity


class _Scores:
    """Backend stand-in for the rule functions: lite's similarity (1 − distance), threshold 0.4."""

    name = "test"
    same_person_threshold = 0.4

    @staticmethod
    def similarity(a, b):
        return 1.0 - float(np.linalg.norm(a - b))


def _check(name, embedding, roll=0.0):
    eyes = np.array([[0.0, 0.0], [10.0, 10.0 * np.tan(np.radians(roll))]])
    landmarks = np.vstack([eyes, [[5, 5], [2, 8], [8, 8]]]).astype(np.float32)
    return PhotoCheck(file=name, readable=True, face=Face(Box(0, 0, 100, 100), landmarks),
                      angle_score=(90 - roll) / 90, embedding=np.asarray(embedding, float))


def test_outlier_excluded_only_with_three_or_more():
    group = [_check(f"a{i}", [0.0, 0.05 * i]) for i in range(3)] + [_check("b", [1.0, 0.0])]
    score_identity(group, _Scores())
    assert [c.verdict for c in group] == ["ok", "ok", "ok", "other_person"]
    assert "probably another person" in group[3].reason and "< 0.40" in group[3].reason
    pair = [_check("a", [0.0, 0.0]), _check("b", [1.0, 0.0])]
    score_identity(pair, _Scores())
    assert [c.verdict for c in pair] == ["ok", "ok"]
    assert all("may be another person" in c.reason for c in pair)


def test_reference_maximises_angle_times_identity_and_top_k_kept():
    checks = [_check("tilted", [1.0, 0.0], roll=40), _check("level", [1.0, 0.1], roll=0),
              _check("far", [1.0, 0.6], roll=0)]
    score_identity(checks, _Scores())
    choose_reference(checks, max_photos=2)
    assert [c.is_reference for c in checks] == [False, True, False]
    assert checks[2].verdict == "surplus" and "best 2" in checks[2].reason
    assert checks[0].verdict == checks[1].verdict == "ok"


def test_id_score_is_cosine_to_group_mean():
    checks = [_check("x", [1.0, 0.0]), _check("y", [0.0, 1.0]), _check("z", [1.0, 1.0])]
    score_identity(checks, _Scores())
    mean = np.array([2.0, 2.0]) / 3
    expected = [np.dot(c.embedding, mean) / np.linalg.norm(c.embedding) / np.linalg.norm(mean)
                for c in checks]
    assert [c.id_score for c in checks] == pytest.approx(expected)


@pytest.fixture(scope="module")
def lite():
    from easyphoto.face import lite as lite_module
    backend = lite_module.LiteBackend()
    yield backend
    backend.unload()


def _folder(tmp_path, photo, names):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in names:
        shutil.copy(photo(name), folder / name)
    return folder


def test_real_photos_flag_biden_corrupt_and_landscape(tmp_path, photo, lite):
    folder = _folder(tmp_path, photo, ["obama.jpg", "obama2.jpg", "obama3.jpg",
                                       "obama_partial_face.jpg", "biden.jpg", "coffee.png"])
    data = photo("obama.jpg").read_bytes()
    (folder / "corrupt.jpg").write_bytes(data[: len(data) // 4])
    report = check_photos(sorted(folder.iterdir()), lite)
    verdicts = {p.file: p.verdict for p in report.photos}
    assert verdicts == {"biden.jpg": "other_person", "coffee.png": "no_face", "corrupt.jpg": "unreadable",
                        "obama.jpg": "ok", "obama2.jpg": "ok", "obama3.jpg": "ok",
                        "obama_partial_face.jpg": "ok"}, json.dumps(report.to_dict(), indent=1)
    assert report.reference is not None and report.reference.file.startswith("obama")
    biden = next(p for p in report.photos if p.file == "biden.jpg")
    assert biden.group_similarity < lite.same_person_threshold
    assert all(p.group_similarity >= lite.same_person_threshold for p in report.kept)
    assert "corrupt or truncated" in next(p for p in report.photos if p.file == "corrupt.jpg").reason


def _bad_inputs(folder, obama: Image.Image):
    buffer = io.BytesIO()
    obama.save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "text.jpg").write_text("not an image")
    Image.fromarray(np.asarray(obama.convert("L"), np.uint16) * 257).save(folder / "deep16.png")
    obama.convert("CMYK").save(folder / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    obama.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", exif=exif.tobytes())
    rgba = obama.convert("RGBA")
    rgba.putalpha(255)
    rgba.save(folder / "rgba.png")
    Image.new("1", (12000, 12000)).save(folder / "huge.png")
    Image.new("RGB", (1, 1)).save(folder / "dot.png")


def test_bad_inputs_each_get_a_verdict(tmp_path, photo, lite):
    folder = tmp_path / "bad"
    folder.mkdir()
    _bad_inputs(folder, Image.open(photo("obama.jpg")).convert("RGB"))
    report = check_photos(sorted(folder.iterdir()), lite)
    verdicts = {p.file: p.verdict for p in report.photos}
    assert verdicts == {"zero.jpg": "unreadable", "truncated.jpg": "unreadable", "text.jpg": "unreadable",
                        "huge.png": "too_large", "dot.png": "too_small", "deep16.png": "ok",
                        "cmyk.jpg": "ok", "rotated.jpg": "ok", "rgba.png": "ok"}, verdicts
    reasons = {p.file: p.reason for p in report.photos}
    assert "empty" in reasons["zero.jpg"] and "not an image" in reasons["text.jpg"]
    assert "12000×12000" in reasons["huge.png"] and "1×1" in reasons["dot.png"]
    rotated = next(p for p in report.photos if p.file == "rotated.jpg")
    assert (rotated.width, rotated.height) == Image.open(photo("obama.jpg")).size
    assert rotated.face.angle_score > 0.9  # upright after EXIF, eyes level


def test_duplicate_file_flagged(tmp_path, photo, lite):
    folder = _folder(tmp_path, photo, ["obama.jpg"])
    shutil.copy(folder / "obama.jpg", folder / "obama_copy.jpg")
    report = check_photos(sorted(folder.iterdir()), lite)
    assert [p.verdict for p in report.photos] == ["ok", "duplicate"]
    assert "obama.jpg" in report.photos[1].reason


def test_cli_photos_check_json(tmp_path, photo, lite, capsys):
    from easyphoto.cli import main

    folder = _folder(tmp_path, photo, ["obama.jpg", "obama2.jpg", "biden.jpg"])
    (folder / "landscape.png").write_bytes(photo("grass.png").read_bytes())
    code = main(["photos", "check", str(folder), "--json", "--face-backend", "lite"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["backend"] == "lite"
    verdicts = {p["file"]: p["verdict"] for p in report["photos"]}
    assert verdicts["landscape.png"] == "no_face"
    assert verdicts["biden.jpg"] == "other_person" and report["reference"].startswith("obama")
    assert all(len(p["face_box"]) == 4 for p in report["photos"] if p["verdict"] == "ok")
