"""Several people on one template, finishing passes, metadata (SPEC 2.1, 2.2, 2.8).

Proves on a real two-person photo (a crop of insightface's t1.jpg) with the REAL tiny engine:
ids map to faces left → right (and swap when the ids swap); a ``none`` face is pixel-identical;
pixels outside every processed face's ``box×3`` are identical; the seam pass runs only for two
or more people, without LoRA, with canny 1.0 + colour 1.0, 30 steps, 0.3, on rings clipped to
the crops; more faces than ids leaves the extra faces as they are (with a note); more ids than
faces is a clear error. Background restore repaints the background only at the template's size;
retouching, super-resolution (skipped on lite, with a note; blended at ratio r otherwise) and
similarity scores run only when asked. The PNG carries every parameter as WebUI infotext.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from infer_helpers import SpyBackend, crops_mask, infer, request, two_faces
from PIL import Image

from easyphoto.infer.batch import run_batch
from easyphoto.infer.group import TooFewFaces, assign_people, isolate, super_resolve
from easyphoto.infer.prompts import DEFAULT_POSITIVE
from easyphoto.params import CAPTION, InferRequest


@pytest.fixture(scope="module")
def pair(rgb):
    return two_faces(rgb)


@pytest.fixture(scope="module")
def pair_faces(pair, backend):
    faces = backend.detect(pair)
    assert len(faces) == 2
    return faces


@pytest.fixture(scope="module")
def two_people(pair, backend, users, one_thread):
    from infer_helpers import SpyEngine, shared_engine

    engine = SpyEngine(shared_engine())
    return infer(pair, engine, backend, users, user_ids=["obama", "biden"]), engine


def test_ids_map_left_to_right(two_people, pair_faces, users):
    result, engine = two_people
    assert [p["user_id"] for p in result.people] == ["obama", "biden"]
    assert result.people[0]["box"][0] < result.people[1]["box"][0]
    lora_of = {str(u.lora_path): name for name, u in users.items()}
    owners = [lora_of[c.generation.loras[0].path] if c.generation.loras else None
              for c in engine.calls]
    assert owners == ["obama", "obama", "biden", "biden", None]  # the last call: seam pass
    for portrait, face in zip(result.group.portraits, pair_faces):
        x0, y0, x1, y1 = portrait.box
        cx, cy = face.box.center
        assert x0 < cx < x1 and y0 < cy < y1


def test_swapped_ids_swap_faces(pair, backend, users, fake_engine):
    result = infer(pair, fake_engine, backend, users, user_ids=["biden", "obama"])
    assert [p["user_id"] for p in result.people] == ["biden", "obama"]
    loras = [c.generation.loras[0].path for c in fake_engine.calls if c.generation.loras]
    assert loras[0] == str(users["biden"].lora_path) and loras[-1] == str(users["obama"].lora_path)


def test_outside_the_crops_nothing_changes(two_people, pair, pair_faces):
    result, _ = two_people
    out = np.asarray(result.image)
    assert result.image.size == (pair.shape[1], pair.shape[0]) and result.image.mode == "RGB"
    outside = ~crops_mask(pair.shape, pair_faces)
    assert np.array_equal(out[outside], pair[outside])
    for face in pair_faces:
        x0, y0, x1, y1 = face.box.to_int()
        assert not np.array_equal(out[y0:y1, x0:x1], pair[y0:y1, x0:x1])


def test_seam_pass_is_spec_2_8(two_people):
    result, engine = two_people
    assert result.stages == ["merge", "seam_pass"]
    seam = engine.calls[-1]
    assert list(seam.generation.loras) == []
    assert [(u.kind, u.weight) for u in seam.generation.controls] == [("canny", 1.0),
                                                                       ("color", 1.0)]
    assert (seam.generation.steps, seam.strength) == (30, 0.3)
    assert min(seam.image.shape[:2]) <= 96  # 768 at the 512 scale → 96 at the tiny scale
    assert seam.mask.any() and not seam.mask.all()


def test_none_face_is_pixel_identical(pair, pair_faces, backend, users, real_engine):
    result = infer(pair, real_engine, backend, users, user_ids=["none", "biden"])
    out = np.asarray(result.image)
    x0, y0, x1, y1 = pair_faces[0].box.to_int()
    assert np.array_equal(out[y0:y1, x0:x1], pair[y0:y1, x0:x1])
    assert [p["status"] for p in result.people] == ["none", "done"]
    assert "seam_pass" not in result.stages  # one person processed: no seam pass
    outside = ~crops_mask(pair.shape, pair_faces[1:])
    assert np.array_equal(out[outside], pair[outside])


def test_isolation_whitens_the_other_faces(pair, pair_faces):
    isolated = isolate(pair, pair_faces, 1)
    x0, y0, x1, y1 = pair_faces[0].box.to_int()
    assert (isolated[y0:y1, x0:x1] == 255).all()
    x0, y0, x1, y1 = pair_faces[1].box.to_int()
    assert np.array_equal(isolated[y0:y1, x0:x1], pair[y0:y1, x0:x1])


def test_more_faces_than_ids_leaves_the_extra_faces(rgb, backend, users, fake_engine):
    group = rgb("t1.jpg")
    faces = backend.detect(group)
    result = infer(group, fake_engine, backend, users, user_ids=["obama"])
    assert [p["status"] for p in result.people] == ["done"] + ["no id"] * (len(faces) - 1)
    assert any("6 faces found, 1 user id(s) given" in n for n in result.notes)
    out = np.asarray(result.image)
    outside = ~crops_mask(group.shape, faces[:1])
    assert np.array_equal(out[outside], group[outside])


def test_more_ids_than_faces_is_an_error_for_that_template(rgb, backend, users, fake_engine):
    batch = run_batch([rgb("obama2.jpg"), two_faces(rgb)], request(user_ids=["obama", "biden"]),
                      engine=fake_engine, backend=backend, users=users)
    assert [e.type for e in batch.errors] == ["TooFewFaces"]
    assert "has 1 face(s) but 2 user ids" in batch.errors[0].error
    assert len(batch.results) == 1 and batch.results[0].template == "template 2"
    with pytest.raises(TooFewFaces):
        assign_people(backend.detect(rgb("obama2.jpg")), ["obama", "none", "biden"], "x")
    # trailing 'none's only shorten the list
    people, notes = assign_people(backend.detect(rgb("obama2.jpg")),
                                  request(user_ids=["obama", "none"]).people(), "x")
    assert [p.status for p in people] == ["done"] and not notes


def test_background_restore_repaints_only_the_background(pair, pair_faces, backend, users,
                                                          fake_engine):
    result = infer(pair, fake_engine, backend, users, user_ids=["obama"], background_restore=True)
    assert result.stages == ["merge", "background_restore"]
    call = fake_engine.calls[-1]
    assert call.strength == 0.35 and list(call.generation.loras) == []
    assert [(u.kind, u.weight) for u in call.generation.controls] == [("canny", 1.0),
                                                                       ("color", 1.0)]
    out = np.asarray(result.image)
    assert out.shape == pair.shape
    assert not np.array_equal(out[:40, -40:], pair[:40, -40:])  # a background corner changed
    x0, y0, x1, y1 = pair_faces[1].box.to_int()  # the untouched face stays as it was
    assert np.array_equal(out[y0:y1, x0:x1], pair[y0:y1, x0:x1])


def test_retouch_sr_and_score_run_only_when_asked(rgb, backend, users, fake_engine):
    template, spy = rgb("obama2.jpg"), SpyBackend(backend)
    plain = infer(template, fake_engine, spy, users, super_resolution=False)
    assert spy.counts["retouch"] == spy.counts["super_resolve"] == spy.counts["embed"] == 0
    assert plain.scores == [] and plain.stages == ["merge"]
    full = infer(template, fake_engine, spy, users, skin_retouching=True, display_score=True)
    assert spy.counts["retouch"] == 1 and spy.counts["super_resolve"] == 1
    assert full.stages == ["merge", "skin_retouching", "similarity_score"]
    assert any("super-resolution skipped: the lite face backend" in n for n in full.notes)
    assert len(full.scores) == 1 and re.fullmatch(r"obama: -?\d+\.\d\d", full.scores[0])


def test_super_resolution_blends_at_the_ratio():
    class Doubling:
        def super_resolve(self, image):
            return np.full((image.shape[0] * 2, image.shape[1] * 2, 3), 200, np.uint8)

    image = np.full((10, 12, 3), 100, np.uint8)
    assert (super_resolve(Doubling(), image, 0.25) == 125).all()
    assert super_resolve(type("NoSR", (), {"super_resolve": lambda s, i: None})(), image, 0.5) \
        is None


def test_png_carries_every_parameter(two_people):
    result, _ = two_people
    text = Image.open(io.BytesIO(result.png_bytes())).text["parameters"]
    positive, negative, settings = text.split("\n")
    assert positive == (f"{CAPTION}, <lora:obama:0.9>, <lora:biden:0.9>, masterpiece, beauty, "
                        f"{DEFAULT_POSITIVE}")
    assert negative.startswith("Negative prompt: nsfw")
    assert ("Steps: 50, Sampler: DPM++ 2M SDE Karras, CFG scale: 7, Seed: 1, Size: 450x420"
            in settings)
    assert 'EasyPhoto user ids: "obama, biden"' in settings
    for name in InferRequest.__dataclass_fields__:
        if name not in ("sampler", "cfg_scale", "seed", "base_model", "additional_prompt",
                        "additional_negative_prompt", "style_lora"):
            assert f"EasyPhoto {name.replace('_', ' ')}: " in settings, name
