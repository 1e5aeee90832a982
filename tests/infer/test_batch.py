"""Batches, bad templates, image modes, seeds, cancel, the CLI and text → template.

Proves: a batch reports each failing template with its reason (no face, not an image, 1 pixel,
12000×12000 over the pixel limit) and goes on with the others, in order; a 12000-pixel-wide
template that fits the limit is processed at its size; RGBA keeps its alpha, greyscale stays
greyscale, CMYK and 16-bit come back as RGB with a note; seed −1 draws a seed per template,
records it, and that seed reproduces the image; cancelling stops the batch; progress counts
templates; ``easyphoto infer`` writes PNGs with metadata and reports failures (exit 3); the
text → template prompt builder validates its choices and renders through the engine's SDXL
txt2img (REAL tiny engine), and its result runs through the normal pipeline.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from infer_helpers import infer, request
from PIL import Image

from easyphoto.cli import main
from easyphoto.errors import InvalidRequest
from easyphoto.infer.batch import Template, collect_templates, run_batch
from easyphoto.infer.prompts import TemplateChoices, template_prompt, text_to_template
from easyphoto.progress import Cancelled, CancelToken


def _png(path, image: Image.Image):
    image.save(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory, rgb, photo):
    """Templates: good ones and every kind of bad one, named so that they sort in this order."""
    root = tmp_path_factory.mktemp("templates")
    face = Image.fromarray(rgb("obama2.jpg"))
    face.save(root / "a_good.jpg")
    Image.open(photo("coffee.png")).save(root / "b_no_face.png")
    (root / "c_broken.jpg").write_bytes(b"this is not an image")
    _png(root / "d_one_pixel.png", Image.new("RGB", (1, 1), (200, 150, 120)))
    _png(root / "e_huge.png", Image.new("1", (12000, 12000)))
    face.convert("CMYK").save(root / "f_cmyk.jpg")
    return root


def test_a_failing_template_does_not_stop_the_batch(folder, backend, users, fake_engine):
    events = []
    batch = run_batch(collect_templates(folder=folder), request(), engine=fake_engine,
                      backend=backend, users=users, progress=events.append)
    assert [r.template for r in batch.results] == ["a_good.jpg", "f_cmyk.jpg"]
    errors = {e.template: e for e in batch.errors}
    assert list(errors) == ["b_no_face.png", "c_broken.jpg", "d_one_pixel.png", "e_huge.png"]
    assert "no face found in the template" in errors["b_no_face.png"].error
    assert errors["b_no_face.png"].type == "FaceNotFound"
    assert "not an image file" in errors["c_broken.jpg"].error
    assert "no face found" in errors["d_one_pixel.png"].error
    assert "12000×12000" in errors["e_huge.png"].error and "limit" in errors["e_huge.png"].error
    assert all(e.error.startswith(e.template) for e in batch.errors)  # each names its file
    infer_events = [e for e in events if e.stage == "infer"]
    assert infer_events[0].done == 0 and infer_events[-1].done == infer_events[-1].total == 6
    messages = [e.message for e in infer_events]
    assert "a_good.jpg: obama: first_diffusion" in messages and "f_cmyk.jpg: loading" in messages
    cmyk = batch.results[1]
    assert cmyk.image.mode == "RGB" and any("mode CMYK is written as RGB" in n for n in cmyk.notes)


def test_a_12000_pixel_wide_template_is_processed_at_its_size(rgb, backend, users, fake_engine):
    canvas = np.full((1500, 12000, 3), 235, np.uint8)
    face = rgb("obama.jpg")
    canvas[200:200 + face.shape[0], 5000:5000 + face.shape[1]] = face
    result = infer(canvas, fake_engine, backend, users)
    out = np.asarray(result.image)
    assert out.shape == canvas.shape
    changed = np.argwhere(np.any(out != canvas, axis=2))
    assert changed.size and changed[:, 1].min() >= 5000 - 600 and changed[:, 1].max() < 5910 + 600


def test_modes_rgba_grey_16_bit(tmp_path, rgb, photo, backend, users, fake_engine):
    rgba = Image.open(photo("32bit.png"))
    assert rgba.mode == "RGBA"
    result = infer(photo("32bit.png"), fake_engine, backend, users)
    assert result.image.mode == "RGBA" and result.image.size == rgba.size
    assert np.array_equal(np.asarray(result.image.getchannel("A")),
                          np.asarray(rgba.getchannel("A")))
    grey = _png(tmp_path / "grey.png", Image.fromarray(rgb("obama2.jpg")).convert("L"))
    assert infer(grey, fake_engine, backend, users).image.mode == "L"
    deep = (np.asarray(Image.open(grey), np.uint16) * 257).astype(np.uint16)
    sixteen = _png(tmp_path / "sixteen.png", Image.fromarray(deep))
    assert Image.open(sixteen).mode.startswith("I")
    result = infer(sixteen, fake_engine, backend, users)
    assert result.image.mode == "RGB" and result.image.size == Image.open(grey).size
    assert any("written as RGB" in n for n in result.notes)


def test_random_seed_per_template_is_recorded_and_reproducible(rgb, backend, users,
                                                               fake_engine):
    template = rgb("obama2.jpg")
    batch = run_batch([template, template], request(seed=-1), engine=fake_engine,
                      backend=backend, users=users)
    seeds = [r.seed for r in batch.results]
    assert len(set(seeds)) == 2 and all(0 <= s < 2 ** 32 for s in seeds)
    for result in batch.results:
        assert f"Seed: {result.seed}," in result.parameters
    again = infer(template, fake_engine, backend, users, seed=seeds[0])
    assert again.png_bytes() == batch.results[0].png_bytes()


def test_batch_size_uses_consecutive_seeds(rgb, backend, users, fake_engine):
    batch = run_batch([rgb("obama2.jpg")], request(seed=10, batch_size=2), engine=fake_engine,
                      backend=backend, users=users)
    assert [(r.index, r.seed) for r in batch.results] == [(0, 10), (1, 11)]


def test_cancel_stops_the_batch(rgb, backend, users, fake_engine):
    token = CancelToken()

    def progress(event):
        if event.done == 1:
            token.cancel()

    with pytest.raises(Cancelled):
        run_batch([rgb("obama2.jpg")] * 3, request(), engine=fake_engine, backend=backend,
                  users=users, progress=progress, cancel=token)
    assert len(fake_engine.calls) == 2  # the first template only


def test_cli_writes_pngs_and_reports_failures(tmp_path, folder, store, capsys):
    out = tmp_path / "out"
    data = store.users_dir.parent
    args = ["infer", "--data-dir", str(data), "--user-id", "obama", "--base", "tiny-random",
            "--face-backend", "lite", "--seed", "5", "--first-diffusion-steps", "4",
            "--second-diffusion-steps", "4", "--out", str(out), "--json"]
    assert main(args + ["--template", str(folder / "a_good.jpg")]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["ok"] and payload["errors"] == []
    written = Image.open(payload["results"][0]["file"])
    assert written.size == Image.open(folder / "a_good.jpg").size
    assert "Seed: 5," in written.text["parameters"] and "Steps: 4," in written.text["parameters"]
    code = main(args + ["--templates", str(folder)])
    payload = json.loads(capsys.readouterr().out)
    assert code == 3 and len(payload["errors"]) == 4 and len(payload["results"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["a_good.png", "f_cmyk.png"]


def test_cli_unknown_user_is_a_clear_error(tmp_path, folder, store, capsys):
    code = main(["infer", "--data-dir", str(store.users_dir.parent), "--user-id", "nobody",
                 "--base", "tiny-random", "--face-backend", "lite", "--out", str(tmp_path),
                 "--template", str(folder / "a_good.jpg")])
    assert code == 1 and "user id 'nobody' does not exist" in capsys.readouterr().err


def test_template_prompt_from_choices():
    choices = TemplateChoices(portrait_ratio="headshot", gender="man", cloth_colour="navy",
                              cloth="suit", pose="smiling", place="library", season="autumn",
                              time_of_day="morning", weather="sunny", free_text="bokeh")
    positive, negative = template_prompt(choices)
    assert positive.startswith("close-up headshot photo of a man wearing a navy suit, smiling, "
                               "in a library, autumn, morning, sunny, bokeh")
    assert "multiple people" in negative
    with pytest.raises(InvalidRequest, match="gender"):
        TemplateChoices(gender="robot").validate()
    with pytest.raises(InvalidRequest, match="unknown template choice"):
        TemplateChoices.from_dict({"colour": "red"})


def test_text_to_template_renders_with_sdxl_txt2img(real_engine):
    image = text_to_template(real_engine, TemplateChoices(), seed=3, tiny=True)
    call = real_engine.calls[-1]
    assert image.shape == (160, 96, 3) and image.dtype == np.uint8
    assert (call.size, call.family) == ((96, 160), "sdxl")
    assert (call.generation.steps, call.generation.cfg, call.generation.sampler) == \
        (30, 7.0, "DPM++ 2M SDE Karras")
    assert np.array_equal(text_to_template(real_engine, TemplateChoices(), seed=3, tiny=True),
                          image)


def test_text_template_feeds_the_normal_pipeline(rgb, backend, users):
    from infer_helpers import FakeEngine

    engine = FakeEngine(txt2img_image=rgb("obama.jpg"))
    generated = text_to_template(engine, TemplateChoices(orientation="square"), seed=1,
                                 size=(256, 256))
    result = infer(Template("generated", generated), engine, backend, users)
    assert result.image.size == (256, 256) and result.template == "generated"
    assert [c.method for c in engine.calls] == ["txt2img", "inpaint", "inpaint"]
    assert re.search(r"Template: generated", result.parameters)
