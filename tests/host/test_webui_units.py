"""The host-independent pieces of the adapter (``easyphoto/engine/webui_units.py``).

Proves: WebUI and ControlNet versions parse with a real version parser (Forge's tag included;
ControlNet 1.2.0 is newer than 1.1.455 and accepted — the reference's ``patch < 417`` test
would reject it); combined sampler names split into sampler + scheduler only where the host
has schedulers; model names match "<stem> [<hash>]"; the checkpoint family comes from real
safetensors headers (metadata, tensor names, cross-attention width) without loading tensors,
and pickles are never opened; unit kwargs follow each generation's declared fields; the
script_args list has every slot; LoRA names are stable and the prompt tags exact; --api-auth
parses into pairs.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from types import SimpleNamespace

import numpy as np
import pytest
from host_helpers import write_checkpoint
from packaging.version import Version

from easyphoto.engine import webui_units as units
from easyphoto.errors import InvalidRequest


@pytest.mark.parametrize("tag, expected", [
    ("v1.10.1", "1.10.1"), ("v1.6.0-2-g4afaaf8a", "1.6.0"), ("1.6.0", "1.6.0"),
    ("v1.9.4", "1.9.4"), ("f2.0.1v1.10.1-v1.10.1", "1.10.1"), ("v1.7.0-RC-5-gf92d6149", "1.7.0"),
    ("<none>", None), ("", None), (None, None), ("4afaaf8a", None)])
def test_webui_version(tag, expected):
    assert units.parse_webui_version(tag) == (Version(expected) if expected else None)


def test_controlnet_version_is_compared_as_a_version():
    parse = units.parse_controlnet_version
    assert parse("v1.1.455") == Version("1.1.455")
    assert parse("v1.2.0") > parse("v1.1.455") > parse("v1.1.417") > parse("v1.1.99")
    assert parse("nonsense") is None and parse(None) is None
    unit = dataclasses.make_dataclass("ControlNetUnit", [(name, object, None) for name in
                                                          units.REQUIRED_UNIT_FIELDS])
    api = units.ControlNetApi(SimpleNamespace(ControlNetUnit=unit), None,
                              version=parse("v1.2.0"))
    assert units.check_unit_class(api) == units.REQUIRED_UNIT_FIELDS  # 1.2.0 accepted
    too_old = dataclasses.replace(api, version=parse("v1.1.199"))
    with pytest.raises(units.ControlNetError, match="too old"):
        units.check_unit_class(too_old)


LABELS_19 = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform")


@pytest.mark.parametrize("name, expected", [
    ("DPM++ 2M SDE Karras", ("DPM++ 2M SDE", "Karras")),
    ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")), ("Euler a", ("Euler a", "Automatic")),
    ("Euler", ("Euler", "Automatic")), ("DDIM", ("DDIM", "Automatic")),
    ("UniPC", ("UniPC", "Automatic")), ("DPM++ SDE SGM Uniform", ("DPM++ SDE", "SGM Uniform"))])
def test_sampler_split_on_19(name, expected):
    assert units.split_sampler(name, LABELS_19) == expected


def test_sampler_names_stay_combined_before_19():
    assert units.split_sampler("DPM++ 2M SDE Karras", ()) == ("DPM++ 2M SDE Karras", None)


def test_model_names_with_hashes():
    names = ["None", "control_v11p_sd15_canny [d14c016b]", "Control_V11P_SD15_OpenPose [cab727d4]"]
    assert units.match_model_name("control_v11p_sd15_canny", names) == names[1]
    assert units.match_model_name("control_v11p_sd15_openpose", names) == names[2]
    assert units.match_model_name("control_v11p_sd15_canny [d14c016b]", names) == names[1]
    assert units.match_model_name("control_v11f1e_sd15_tile", names) is None
    assert units.model_stem("x_y [0123abcd]") == "x_y"


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_family_from_tensor_names(tmp_path, family):
    path = write_checkpoint(tmp_path / f"{family}.safetensors", family)
    assert units.checkpoint_family(path) == family


@pytest.mark.parametrize("architecture, family", [
    ("stable-diffusion-xl-v1-base", "sdxl"), ("stable-diffusion-xl-v1-refiner", "sdxl_refiner"),
    ("stable-diffusion-v2-768-v", "sd2"), ("stable-diffusion-v1", "sd15")])
def test_family_from_modelspec_metadata(tmp_path, architecture, family):
    path = write_checkpoint(tmp_path / "m.safetensors", "sd15",
                            {"modelspec.architecture": architecture})
    assert units.checkpoint_family(path) == family


@pytest.mark.parametrize("width, family", [(768, "sd15"), (1024, "sd2"), (2048, "sdxl")])
def test_family_from_cross_attention_width(tmp_path, width, family):
    """A UNet-only file: the header's cross-attention key shape (never the tensor data)."""
    from safetensors.numpy import save_file

    path = tmp_path / "unet.safetensors"
    save_file({units._CROSS_ATTN_KEY: np.zeros((4, width), np.float16)}, str(path))
    assert units.checkpoint_family(path) == family


def test_family_reads_only_the_header(tmp_path):
    """A header that claims huge tensors whose bytes are not there still classifies."""
    header = json.dumps({"conditioner.embedders.1.model.ln_final.weight":
                         {"dtype": "F16", "shape": [10 ** 9], "data_offsets": [0, 2 * 10 ** 9]}})
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    assert units.checkpoint_family(path) == "sdxl"


def test_family_unknown_never_unpickles(tmp_path):
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04not-a-real-pickle")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"garbage")
    assert units.checkpoint_family(pickle) == "unknown"
    assert units.checkpoint_family(broken) == "unknown"
    assert units.checkpoint_family(tmp_path / "missing.safetensors") == "unknown"


@dataclasses.dataclass
class _Strict:
    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: object = None
    resize_mode: object = "Crop and Resize"
    guidance_start: float = 0.0
    guidance_end: float = 1.0


class _Plain:
    def __init__(self, enabled=True, module=None, model=None, weight=1.0, image=None,
                 resize_mode=0, guidance_start=0.0, guidance_end=1.0, low_vram=False):
        self.__dict__.update(locals())


@pytest.mark.parametrize("cls", [_Strict, _Plain])
def test_units_get_only_declared_fields(cls):
    api = units.ControlNetApi(SimpleNamespace(ControlNetUnit=cls), None)
    image = np.zeros((8, 8, 3), np.uint8)
    unit = units.build_unit(api, kind="canny", model="m [01234567]", image=image, weight=0.5,
                            start=0.1, end=0.9)
    assert (unit.enabled, unit.module, unit.model, unit.weight, unit.resize_mode) == \
        (True, "none", "m [01234567]", 0.5, "Just Resize")
    assert (unit.guidance_start, unit.guidance_end) == (0.1, 0.9)
    assert unit.image.dtype == np.uint8 and unit.image.shape == (8, 8, 3)
    assert units.disabled_unit(api).enabled is False
    with pytest.raises(InvalidRequest, match=r"\[0, 2\]"):
        units.build_unit(api, kind="canny", model="m", image=image, weight=2.5, start=0, end=1)


def test_script_args_fill_every_slot():
    script = SimpleNamespace
    seed, cn, other = script(args_from=1, args_to=7), script(args_from=7, args_to=10), \
        script(args_from=10, args_to=12)
    args = units.script_args_for([seed, cn, other], cn, ["u0", "u1"], lambda: "off")
    assert args == [0, None, None, None, None, None, None, "u0", "u1", "off", None, None]
    with pytest.raises(units.ControlNetError, match="do not fit"):
        units.script_args_for([cn], cn, ["a", "b", "c", "d"], lambda: "off")
    with pytest.raises(units.ControlNetError, match="not set up"):
        units.unit_slots(script(args_from=None, args_to=None))


def test_lora_names_and_tags(tmp_path):
    assert units.stable_lora_stem(tmp_path / "users" / "obama-1a2b3c4d5e" / "lora.safetensors") \
        == "easyphoto_obama-1a2b3c4d5e"
    assert units.stable_lora_stem(tmp_path / "My Style!.safetensors") == "easyphoto_My_Style"
    assert units.with_lora_tags("easyphoto_face, 1person", [("a", 0.9), ("b", 0.65)]) == \
        "easyphoto_face, 1person, <lora:a:0.9>, <lora:b:0.65>"
    assert units.with_lora_tags("x,", []) == "x"


def test_api_auth_pairs():
    assert units.parse_api_auth("u1:p1,u2:p:2") == [("u1", "p1"), ("u2", "p:2")]
    assert units.parse_api_auth(None) == [] and units.parse_api_auth("") == []
    with pytest.raises(InvalidRequest):
        units.parse_api_auth("nopassword")
