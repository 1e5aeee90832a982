"""Request dataclasses: SPEC defaults, validation messages, CLI flags derived from fields."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from easyphoto.cli.requests import add_request_arguments, request_from_args
from easyphoto.errors import InvalidRequest, InvalidUserId
from easyphoto.params import InferRequest, TrainRequest


def test_train_defaults_follow_spec():
    request = TrainRequest(user_id="alice").validate().resolved()
    assert (request.rank, request.network_alpha, request.resolution, request.max_train_steps) == \
        (128, 64, 512, 800)
    assert (request.steps_per_photo, request.validation_steps, request.learning_rate) == (200, 100, 1e-4)
    assert (request.train_batch_size, request.gradient_accumulation_steps) == (1, 4)
    assert request.text_encoder_lr_scale == 0.5 and request.fusion_top_k == 10
    assert (request.validation_strength, request.validation_sample_steps, request.validation_cfg) == \
        (0.65, 20, 9.0)
    sdxl = TrainRequest(user_id="alice", sdxl=True).resolved()
    assert (sdxl.rank, sdxl.network_alpha, sdxl.resolution, sdxl.max_train_steps) == (32, 16, 1024, 600)


def test_explicit_values_survive_resolution():
    request = TrainRequest(user_id="alice", sdxl=True, rank=8).resolved()
    assert request.rank == 8 and request.network_alpha == 16


@pytest.mark.parametrize("kept, expected", [(3, 600), (4, 800), (10, 800), (1, 200)])
def test_step_formula_counts_kept_photos(kept, expected):
    assert TrainRequest(user_id="a").train_steps(kept) == expected


def test_infer_defaults_follow_spec():
    r = InferRequest(user_ids=["alice"]).validate()
    assert (r.lora_weight, r.face_fusion_ratio_before, r.face_fusion_ratio_after) == (0.9, 0.5, 0.5)
    assert (r.first_diffusion_steps, r.first_denoising_strength) == (50, 0.45)
    assert (r.second_diffusion_steps, r.second_denoising_strength) == (20, 0.30)
    assert (r.canny_weight, r.openpose_weight, r.color_weight) == (0.5, 0.5, 0.85)
    assert r.seed == -1 and r.cfg_scale == 7.0 and r.sampler == "DPM++ 2M SDE Karras"
    assert r.super_resolution and r.super_resolution_ratio == 0.5
    assert not r.skin_retouching and not r.background_restore and not r.display_score
    assert r.background_restore_denoising_strength == 0.35
    assert r.additional_prompt == "masterpiece, beauty"


def test_every_field_has_help_text():
    for cls in (TrainRequest, InferRequest):
        for info in cls.fields_info():
            assert info["help"], f"{cls.__name__}.{info['name']} has no help text"


@pytest.mark.parametrize("changes, fragment", [
    ({"learning_rate": 1.0}, "'learning_rate' value must be ≤ 0.01"),
    ({"steps_per_photo": 0}, "'steps_per_photo' value must be ≥ 1"),
    ({"steps_per_photo": 2.5}, "'steps_per_photo' must be a whole number"),
    ({"mixed_precision": "fp8"}, "'mixed_precision' must be one of no, fp16, bf16"),
    ({"random_flip": "yes"}, "'random_flip' must be true or false"),
    ({"learning_rate": float("nan")}, "'learning_rate' must be finite"),
    ({"user_id": "../etc"}, "contains '/'"),
    ({"user_id": "none"}, "reserved"),
    ({"user_id": ""}, "'user_id' length must be ≥ 1"),
])
def test_validation_names_the_parameter(changes, fragment):
    with pytest.raises(InvalidRequest) as info:
        TrainRequest(**{"user_id": "alice", **changes}).validate()
    assert fragment in str(info.value)


def test_from_dict_rejects_unknown_and_missing():
    with pytest.raises(InvalidRequest, match="unknown parameter.*learning_rat"):
        TrainRequest.from_dict({"user_id": "a", "learning_rat": 1e-4})
    with pytest.raises(InvalidRequest, match="missing required parameter.*user_id"):
        TrainRequest.from_dict({})
    with pytest.raises(InvalidRequest, match="missing required parameter.*user_ids"):
        InferRequest.from_dict({})


def test_infer_user_ids_rules():
    assert InferRequest(user_ids=["a", "none", "b", "none"]).validate().people() == ["a", "none", "b"]
    with pytest.raises(InvalidRequest, match="every user id is 'none'"):
        InferRequest(user_ids=["none", "NONE"]).validate()
    with pytest.raises(InvalidRequest, match="length must be ≤ 5"):
        InferRequest(user_ids=["a"] * 6).validate()
    with pytest.raises(InvalidUserId):
        InferRequest(user_ids=["a b"]).validate()
    with pytest.raises(InvalidRequest, match="must be a list"):
        InferRequest(user_ids="alice").validate()


def _parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_request_arguments(parser, cls)
    return parser.parse_args(argv)


def test_cli_flags_are_derived_from_fields():
    args = _parse(TrainRequest, ["--user-id", "bob", "--max-train-steps", "20", "--no-random-flip",
                                 "--sdxl", "--learning-rate", "5e-5"])
    request = request_from_args(TrainRequest, args)
    assert request.max_train_steps == 20 and request.random_flip is False and request.sdxl is True
    assert request.learning_rate == 5e-5
    assert request.steps_per_photo == 200  # untouched flags keep the dataclass default


def test_cli_covers_every_field_and_lists_repeat():
    parser = argparse.ArgumentParser()
    add_request_arguments(parser, InferRequest)
    flags = {opt for action in parser._actions for opt in action.option_strings}
    for f in dataclasses.fields(InferRequest):
        expected = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        assert expected in flags
    args = parser.parse_args(["--user-id", "a", "--user-id", "none", "--seed", "7"])
    request = request_from_args(InferRequest, args)
    assert request.user_ids == ["a", "none"] and request.seed == 7


def test_cli_range_errors_are_clear():
    args = _parse(InferRequest, ["--user-id", "a", "--lora-weight", "3"])
    with pytest.raises(InvalidRequest, match="'lora_weight' value must be ≤ 2.0"):
        request_from_args(InferRequest, args)
    with pytest.raises(SystemExit):
        _parse(InferRequest, ["--user-id", "a", "--sampler", "LMS"])


def test_tiny_random_preset_defaults():
    tiny = TrainRequest(user_id="a", base_model="tiny-random").resolved()
    assert (tiny.resolution, tiny.rank, tiny.network_alpha) == (64, 4, 2)
    assert TrainRequest(user_id="a", base_model="tiny-random", rank=8).resolved().rank == 8


def test_unavailable_rl_is_refused_not_ignored():
    with pytest.raises(InvalidRequest, match="DDPO reinforcement .* not available"):
        TrainRequest(user_id="a", enable_rl=True).validate()
