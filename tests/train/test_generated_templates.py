"""Validation templates EasyPhoto generates with the base model (SPEC 1.4, licence-clean).

Rendering runs on the tiny-random models (noise, so no face): the caching, provenance, order
and face check are tested with a real photo standing in for a generated portrait."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from easyphoto.errors import InvalidRequest
from easyphoto.face import get_face_backend
from easyphoto.train import generated_templates as gen
from easyphoto.train import pipeline
from easyphoto.train.components import TrainComponents
from easyphoto.train.tiny import build_tiny_sd15
from easyphoto.train.validate import SOURCE_TEMPLATES, validation_templates

pytestmark = pytest.mark.usefixtures("offline", "one_thread")

SMALL = dict(negative_prompt="blurry", width=64, height=64, steps=2, cfg=5.0)


def components(models, base_id="base-under-test") -> TrainComponents:
    return TrainComponents("sd15", models.unet, models.vae, [models.text_encoder],
                           [models.tokenizer], models.scheduler, torch.device("cpu"),
                           torch.float32, base_id)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_sd15(0)


def recipe(name="portrait-1", seed=1, **changes):
    return gen.Recipe(name=name, prompt="upper body portrait photo", seed=seed,
                      **{**SMALL, **changes})


def test_the_shipped_manifest_has_four_recipes():
    shipped = gen.recipes(pipeline.TEMPLATES_DIR / "manifest.json")
    assert len(shipped) == 4 and len({r.name for r in shipped}) == 4
    assert len({r.seed for r in shipped}) == 4
    for item in shipped:
        assert "portrait" in item.prompt and item.width % 64 == 0 and item.height % 64 == 0
        assert item.height > item.width  # upper body: portrait format


def test_bad_recipes_and_missing_manifests(tmp_path):
    assert gen.recipes(tmp_path / "absent.json") == []
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"generated": [{"name": "odd", "prompt": "p", "seed": 1,
                                                   "width": 500}]}))
    with pytest.raises(InvalidRequest, match="'odd'.*multiples of 64"):
        gen.recipes(manifest)
    manifest.write_text(json.dumps({"generated": [{"name": "no-seed", "prompt": "p"}]}))
    with pytest.raises(InvalidRequest, match="no-seed"):
        gen.recipes(manifest)


def test_render_is_the_recipes_size_and_seeded(tiny):
    parts = components(tiny)
    first = gen.render(parts, recipe(width=64, height=128))
    assert first.shape == (128, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, gen.render(parts, recipe(width=64, height=128)))
    other = gen.render(parts, recipe(seed=2, width=64, height=128))
    assert np.abs(first.astype(int) - other).mean() > 1


def test_render_refuses_models_that_carry_a_lora(tiny):
    from peft import LoraConfig

    unet = copy.deepcopy(tiny.unet)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]))
    parts = dataclasses.replace(components(tiny), unet=unet)
    with pytest.raises(InvalidRequest, match="bare base model"):
        gen.render(parts, recipe())


def test_generated_once_per_base_model_with_provenance(tiny, tmp_path, monkeypatch):
    parts, made = components(tiny), []
    real = gen.render
    monkeypatch.setattr(gen, "render", lambda *a: made.append(a[1].name) or real(*a))
    wanted = [recipe(f"portrait-{i}", seed=i) for i in range(1, 5)]
    paths = gen.generated_templates(parts, wanted, tmp_path, count=3)
    assert made == ["portrait-1", "portrait-2", "portrait-3"]
    assert [p.name for p in paths] == ["portrait-1.png", "portrait-2.png", "portrait-3.png"]
    assert all(p.parent == tmp_path / gen.base_key(parts) for p in paths)
    record = json.loads(paths[0].with_suffix(".json").read_text())
    assert record["recipe"]["prompt"] == "upper body portrait photo"
    assert record["recipe"]["seed"] == 1 and record["base_model_id"] == "base-under-test"
    assert "no third-party image" in record["licence"]
    assert Image.open(paths[0]).size == (64, 64)
    again = gen.generated_templates(parts, wanted, tmp_path, count=4)
    assert made == ["portrait-1", "portrait-2", "portrait-3", "portrait-4"]  # only the new one
    assert again[:3] == paths
    other = gen.generated_templates(components(tiny, "another-base"), wanted, tmp_path, 1)
    assert other[0].parent != paths[0].parent and made[-1] == "portrait-1"
    assert gen.generated_templates(components(tiny, "tiny-random"), wanted, tmp_path, 4) == []
    assert gen.generated_templates(parts, wanted, tmp_path, 0) == []


def test_generated_files_join_the_templates_when_they_show_a_face(photo, tmp_path):
    """A generated file with a face is used after the folder's images; one without is skipped
    with its reason."""
    folder, made = tmp_path / "validation", tmp_path / "made"
    folder.mkdir()
    made.mkdir()
    shutil.copyfile(photo("biden.jpg"), folder / "a-template.jpg")
    shutil.copyfile(photo("obama.jpg"), made / "portrait-1.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), np.uint8)).save(
        made / "portrait-2.png")
    chosen = validation_templates(folder, [], backend=get_face_backend("lite"),
                                  generated=[made / "portrait-1.png", made / "portrait-2.png"])
    assert chosen.source == SOURCE_TEMPLATES
    assert [t.name for t in chosen] == ["a-template", "portrait-1"]
    assert "1 generated by the base model" in chosen.message
    assert chosen.skipped == [{"file": str(made / "portrait-2.png"),
                               "reason": "portrait-2.png: no face detected"}]


def test_the_training_generates_only_what_the_folder_lacks(tiny, tmp_path, monkeypatch, photo):
    folder = tmp_path / "validation"
    folder.mkdir()
    shutil.copyfile(photo("biden.jpg"), folder / "one.jpg")
    recipes = [dict(name=f"portrait-{i}", prompt="portrait", seed=i, **SMALL) for i in range(4)]
    (folder / "manifest.json").write_text(json.dumps({"generated": recipes}))
    monkeypatch.setattr(pipeline, "TEMPLATES_DIR", folder)
    monkeypatch.setattr(gen, "render", lambda parts, item, pipe=None:
                        np.full((64, 64, 3), item.seed, np.uint8))
    paths = pipeline.template_generation_stage(components(tiny), tmp_path / "models")
    assert [p.name for p in paths] == ["portrait-0.png", "portrait-1.png", "portrait-2.png"]
    assert all(p.is_file() and p.is_relative_to(tmp_path / "models") for p in paths)


def test_generation_reports_progress_and_can_be_cancelled(tiny, tmp_path, monkeypatch):
    from easyphoto.progress import CancelToken, Cancelled

    monkeypatch.setattr(gen, "render", lambda parts, item, pipe=None:
                        np.full((64, 64, 3), item.seed, np.uint8))
    wanted = [recipe(f"portrait-{i}", seed=i) for i in range(1, 4)]
    events = []
    gen.generated_templates(components(tiny), wanted[:1], tmp_path, 1, progress=events.append)
    events.clear()
    gen.generated_templates(components(tiny), wanted, tmp_path, 3, progress=events.append)
    assert [(e.stage, e.done, e.total) for e in events] == [
        ("templates", 0, 3), ("templates", 1, 3), ("templates", 2, 3), ("templates", 3, 3)]
    assert "cached" in events[0].message and "generating" in events[1].message
    token = CancelToken()
    token.cancel()
    more = [recipe("portrait-9", seed=9)]
    with pytest.raises(Cancelled):
        gen.generated_templates(components(tiny), more, tmp_path, 1, cancel=token)
    assert not (tmp_path / gen.base_key(components(tiny)) / "portrait-9.png").exists()


def test_sdxl_renders_at_twice_the_recipe_size():
    from easyphoto.train.loading import load_components

    parts = dataclasses.replace(load_components("tiny-random", sdxl=True, device="cpu",
                                                with_canny=False), base_id="xl-under-test")
    image = gen.render(parts, recipe(width=64, height=128))
    assert image.shape == (256, 128, 3) and image.dtype == np.uint8
