"""``WebUIEngine``: the :class:`~easyphoto.engine.base.DiffusionEngine` that paints through the
running WebUI (no host import here: it works on the :class:`~easyphoto.engine.webui.Host` record).

One call = one ``StableDiffusionProcessingImg2Img`` (inpaint) or ``…Txt2Img`` with exactly the
fields HOST.md lists (mask blur, "original" fill, whole picture, one image, nothing saved), run by
``processing.process_images`` while holding the :class:`~easyphoto.engine.webui.HostGpuLock`:

* ``p.is_api = True`` is set before the scripts are attached, so the built-in Seed/Sampler
  scripts cannot overwrite seed, steps, sampler or scheduler; the scripts are a copy of the
  host's runner that keeps only ControlNet, with a full-length ``script_args`` list and our units
  (plus disabled fillers) in ControlNet's ``args_from:args_to`` slice — the shared runner's
  ranges are never touched;
* everything ControlNet would swallow is checked before the call: unit images (H, W, 3) uint8 of
  the generation size, weights, model names resolved to ``"<stem> [<hash>]"``, enough unit slots;
  after it, that ControlNet recorded every unit (``ControlNet <i>`` parameters);
* LoRAs: ``<lora:NAME:W>`` appended to the prompt, the file placed in the host's Lora folder;
* 1.9+: the sampler name is split into sampler and scheduler;
* the result is the first of ``len(all_seeds)`` images from ``index_of_first_image``, composited
  back with the blurred mask, so pixels the blurred mask does not reach are returned unchanged;
* ``shared.state``: one job per call, a ``textinfo`` line; an interrupt from the WebUI becomes
  :class:`~easyphoto.progress.Cancelled`.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import InvalidRequest, ModelUnavailable
from ..progress import Cancelled
from ..weights_registry import REGISTRY
from .base import Generation, LoraRef
from .checks import active_units, check_generation, check_units, inpaint_mask
from .diffusers_engine import blur_mask, composite
from .models import CONTROLNET_ROLES
from .webui import (
    Host,
    HostGpuLock,
    install_lora,
    lora_folder,
    resolve_checkpoint,
    switch_checkpoint,
    switch_vae,
)
from .webui_units import (
    FORGE,
    SD15,
    SDXL,
    UNKNOWN,
    ControlNetApi,
    ControlNetError,
    build_unit,
    checkpoint_family,
    disabled_unit,
    match_model_name,
    parse_controlnet_version,
    script_args_for,
    split_sampler,
    unit_slots,
    with_lora_tags,
)

logger = logging.getLogger(__name__)

#: ``control_net_model_cache_size`` below this reloads a ControlNet on most portrait calls.
GOOD_MODEL_CACHE = 4
CONTROL_STEMS = {kind: Path(REGISTRY[role].filename).stem
                 for kind, role in CONTROLNET_ROLES["sd15"].items()}
_WRONG_FAMILY = {"sd2": "an SD2", "sdxl": "an SDXL", "sdxl_refiner": "an SDXL refiner"}


def _script_namespace(host: Host, script: Any) -> dict:
    """The globals of the module that defined ``script``'s class (its ``scripts_data`` entry,
    else a method's ``__globals__``): ControlNet keeps ``external_code`` there."""
    for data in getattr(host.scripts, "scripts_data", ()) or ():
        if getattr(data, "script_class", None) is type(script) and getattr(data, "module", None):
            return vars(data.module)
    for klass in type(script).__mro__:
        function = vars(klass).get("title")
        if inspect.isfunction(function):
            return function.__globals__
    return {}


def find_controlnet(host: Host, runner: Any) -> ControlNetApi:
    """ControlNet in ``runner`` (resolved at call time: the user may have cloned it under
    another folder name); :class:`ControlNetError` saying how to install it."""
    if not getattr(runner, "scripts", None):
        raise ControlNetError("The WebUI has not set up its img2img/txt2img scripts yet: open "
                              "the WebUI once (or call its API once) and retry.")
    script = next((s for s in runner.alwayson_scripts if str(s.title()).lower() == "controlnet"),
                  None)
    namespace = _script_namespace(host, script) if script is not None else {}
    external_code = namespace.get("external_code")
    if external_code is None or not hasattr(external_code, "ControlNetUnit"):
        where = ("Forge's built-in ControlNet (sd_forge_controlnet) is disabled: enable it"
                 if host.forge else "install the sd-webui-controlnet extension")
        raise ControlNetError(f"EasyPhoto needs ControlNet and the WebUI has none loaded: {where} "
                              "(Extensions tab), then restart the WebUI.")
    if host.forge:
        state = namespace.get("global_state") or getattr(external_code, "global_state", None)
        return ControlNetApi(external_code, script, FORGE, None, state)
    flag = getattr(namespace.get("controlnet_version"), "version_flag", None)
    return ControlNetApi(external_code, script, version=parse_controlnet_version(flag))


def only_controlnet(runner: Any, script: Any) -> Any:
    """A shallow copy of ``runner`` whose only script is ControlNet (other extensions' scripts
    and the Seed/Sampler scripts do not run; the shared runner is untouched)."""
    runner = copy.copy(runner)
    runner.scripts, runner.alwayson_scripts, runner.selectable_scripts = [script], [script], []
    if hasattr(runner, "callback_map"):
        runner.callback_map = {}
    return runner


class WebUIEngine:
    """DiffusionEngine through the host. ``checkpoint``: the SD1.5 checkpoint for inpainting (a
    title, stem, file path or registry role; empty = whatever the host has selected);
    ``sdxl_checkpoint``: for SDXL txt2img (empty = the host's when it is SDXL, else the
    registry's ``sdxl_base``); ``vae``: a VAE file name to use (empty = the host's setting).
    Switched checkpoints / VAEs return to the user's at the end of the job (lock release)."""

    def __init__(self, host: Host, lock: HostGpuLock, *, checkpoint: str = "",
                 sdxl_checkpoint: str = "", vae: str = "") -> None:
        if checkpoint.strip() == "tiny-random":
            raise InvalidRequest("the 'tiny-random' preset is for standalone smoke tests; in the "
                                 "WebUI choose one of its checkpoints (or leave it empty).")
        self.host, self.lock = host, lock
        self.checkpoint, self.sdxl_checkpoint, self.vae = checkpoint, sdxl_checkpoint, vae
        self.last_call: dict = {}
        self._families: dict[tuple[str, int], str] = {}
        self._cache_checked = False

    # ---- protocol -------------------------------------------------------------------------
    def available_controls(self) -> tuple[str, ...]:
        """Control kinds whose ControlNet model the host's ControlNet lists right now."""
        try:
            api = find_controlnet(self.host, self.host.scripts.scripts_img2img)
            names = api.model_names()
        except ControlNetError:
            return ()
        return tuple(k for k, stem in CONTROL_STEMS.items() if match_model_name(stem, names))

    def unload(self) -> None:
        """Nothing to release: the host owns every model (switched ones return at lock
        release)."""

    def inpaint(self, image: np.ndarray, mask: np.ndarray, strength: float,
                generation: Generation, mask_blur: int = 8) -> np.ndarray:
        """SPEC 2.6/2.7 inpaint through ``img2img``; same contract as DiffusersEngine."""
        mask = inpaint_mask(image, mask, generation)
        if not 0.0 <= float(strength) <= 1.0:
            raise InvalidRequest(f"denoising strength must be in [0, 1], got {strength}.")
        soft = blur_mask(mask, mask_blur)
        if strength == 0 or not soft.any():
            return image.copy()
        height, width = image.shape[:2]
        with self.lock:
            self._prepare(SD15)
            p = self._processing("StableDiffusionProcessingImg2Img", generation, width, height,
                                 init_images=[Image.fromarray(np.ascontiguousarray(image))],
                                 mask=Image.fromarray(mask), mask_blur=int(mask_blur),
                                 inpainting_fill=1, inpaint_full_res=False,
                                 denoising_strength=float(strength))
            generated = self._run(p, "scripts_img2img", generation, (height, width))
        return composite(generated, image, soft)

    def txt2img(self, size: tuple[int, int], generation: Generation,
                family: str = "sdxl") -> np.ndarray:
        """A new image of ``size`` = (width, height) from the ``family`` checkpoint."""
        width, height = (int(side) for side in size)
        if width < 8 or height < 8 or width % 8 or height % 8:
            raise InvalidRequest(f"size {width}×{height} must be positive multiples of 8.")
        check_units(generation.controls)
        check_generation(generation)
        if family == SDXL and generation.controls:
            raise InvalidRequest("SDXL txt2img through the WebUI takes no ControlNet units.")
        with self.lock:
            self._prepare(SDXL if family == SDXL else SD15)
            p = self._processing("StableDiffusionProcessingTxt2Img", generation, width, height)
            return self._run(p, "scripts_txt2img", generation, (height, width))

    # ---- checkpoint, VAE, settings --------------------------------------------------------
    def _family(self, path: Path) -> str:
        key = (str(path), path.stat().st_mtime_ns if path.is_file() else 0)
        if key not in self._families:
            self._families[key] = checkpoint_family(path)
        return self._families[key]

    def _wanted(self, family: str) -> Any | None:
        """The CheckpointInfo to switch to for ``family`` (``None``: keep the current one)."""
        host = self.host
        name = self.checkpoint if family == SD15 else self.sdxl_checkpoint
        if name and name in REGISTRY:
            name = Path(REGISTRY[name].filename).stem
        if name:
            return resolve_checkpoint(host, name)
        original = self.lock.original("sd_model_checkpoint")
        if family == SD15:
            return resolve_checkpoint(host, original) if original else None
        current = Path(host.sd_models.select_checkpoint().filename)
        if self._family(current) == SDXL:
            return None
        return resolve_checkpoint(host, Path(REGISTRY["sdxl_base"].filename).stem)

    def _prepare(self, family: str) -> None:
        """Checkpoint and VAE for this call (inside the lock); refuse a wrong family."""
        info = self._wanted(family)
        if info is not None:
            switch_checkpoint(self.host, self.lock, info)
        path = Path((info or self.host.sd_models.select_checkpoint()).filename)
        found = self._family(path)
        wrong = found in _WRONG_FAMILY if family == SD15 else found not in (SDXL, UNKNOWN)
        if wrong:
            need = "an SDXL" if family == SDXL else "an SD1.5"
            raise InvalidRequest(
                f"{path.name} is {_WRONG_FAMILY.get(found, 'an SD1.5')} checkpoint but this step "
                f"needs {need} one: choose {need} checkpoint in the WebUI (or as the base model).")
        if self.vae:
            switch_vae(self.host, self.lock, self.vae)
        self._check_model_cache()

    def _check_model_cache(self) -> None:
        if self._cache_checked:
            return
        self._cache_checked = True
        key = "control_net_model_cache_size"
        label = getattr(self.host.shared.opts, "data_labels", {}).get(key)  # set by ControlNet
        size = self.host.option(key, getattr(label, "default", None))
        if label is not None and isinstance(size, (int, float)) and size < GOOD_MODEL_CACHE:
            logger.warning(
                "ControlNet keeps only %s model(s) in memory; a portrait uses 4 (canny, openpose, "
                "colour, tile) and reloads one on most calls. Raise Settings → ControlNet → "
                "\"Model cache size\" to %d or more.", size, GOOD_MODEL_CACHE)

    # ---- one call -------------------------------------------------------------------------
    def _sampler(self, name: str) -> dict:
        sampler, scheduler = split_sampler(name, self.host.scheduler_labels())
        find = getattr(self.host.sd_samplers, "find_sampler_config", None)
        if callable(find) and find(sampler) is None:
            known = [s.name for s in getattr(self.host.sd_samplers, "all_samplers", ())]
            raise InvalidRequest(f"The WebUI has no sampler {sampler!r}; it has: "
                                 f"{', '.join(known)}.")
        return {"sampler_name": sampler, **({"scheduler": scheduler} if scheduler else {})}

    def _lora_names(self, loras: Sequence[LoraRef]) -> list[tuple[str, float]]:
        folder, names = lora_folder(self.host).resolve(), []
        for ref in loras:
            path = Path(ref.path)
            if path.is_file():
                inside = folder in path.resolve().parents
                names.append((path.stem if inside else install_lora(self.host, path), ref.weight))
            elif path.suffix or len(path.parts) > 1:
                raise ModelUnavailable(f"LoRA file {ref.path} does not exist.")
            else:
                names.append((ref.path, ref.weight))
        return names

    def _processing(self, cls_name: str, generation: Generation, width: int, height: int,
                    **fields: Any) -> Any:
        """The processing object with HOST.md's fields (one image, nothing saved)."""
        prompt = with_lora_tags(generation.prompt, self._lora_names(generation.loras))
        cls = getattr(self.host.processing, cls_name)
        return cls(prompt=prompt, negative_prompt=generation.negative_prompt,
                   steps=int(generation.steps), cfg_scale=float(generation.cfg),
                   seed=int(generation.seed), width=width, height=height, batch_size=1,
                   n_iter=1, do_not_save_samples=True, do_not_save_grid=True,
                   override_settings={}, **self._sampler(generation.sampler), **fields)

    def _attach(self, p: Any, runner_name: str, generation: Generation,
                shape: tuple[int, int]) -> list:
        """``is_api`` first, then ControlNet's units in a copy of the runner; the kinds sent."""
        p.is_api = True
        units = active_units(generation.controls)
        if not units:
            return []
        runner = getattr(self.host.scripts, runner_name)
        api = find_controlnet(self.host, runner)
        built = self._units(api, units, shape)
        p.scripts = only_controlnet(runner, api.script)
        p.script_args = script_args_for(runner.scripts, api.script, built,
                                        lambda: disabled_unit(api))
        return [unit.kind for unit in units] if api.writes_infotext else []

    def _units(self, api: ControlNetApi, units: Sequence[Any], shape: tuple[int, int]) -> list:
        slots = unit_slots(api.script)
        if slots < len(units):
            key, label = api.unit_count_setting
            raise ControlNetError(
                f"ControlNet has {slots} unit slot(s) but EasyPhoto needs {len(units)}: open "
                f"Settings → ControlNet, set \"{label}\" ({key}) to 3 or more, apply settings and "
                f"restart the WebUI. (The value now is {self.host.option(key, slots)}.)")
        names = api.model_names()
        built = []
        for unit in units:
            if unit.image.shape[:2] != shape:
                raise InvalidRequest(f"control {unit.kind} is {unit.image.shape[:2]}, the "
                                     f"generation is {shape} (H, W).")
            stem = CONTROL_STEMS[unit.kind]
            model = match_model_name(stem, names) or match_model_name(
                stem, names := api.model_names(refresh=True))
            if model is None:
                raise ModelUnavailable(
                    f"ControlNet has no model {stem!r} for the {unit.kind} control: put "
                    f"{REGISTRY[CONTROLNET_ROLES['sd15'][unit.kind]].filename} in the WebUI's "
                    f"ControlNet models folder (or run `easyphoto models download "
                    f"{CONTROLNET_ROLES['sd15'][unit.kind]}`) and retry.")
            built.append(build_unit(api, kind=unit.kind, model=model, image=unit.image,
                                    weight=unit.weight, start=unit.start, end=unit.end))
        return built

    def _run(self, p: Any, runner_name: str, generation: Generation,
             shape: tuple[int, int]) -> np.ndarray:
        state = self.host.shared.state
        kinds = self._attach(p, runner_name, generation, shape)
        if state.interrupted:
            raise Cancelled("interrupted from the WebUI")
        state.job_count = max(int(state.job_count or 0), 0) + 1
        state.textinfo = f"EasyPhoto: {'inpaint' if runner_name.endswith('img2img') else 'txt2img'}"
        try:
            processed = self.host.processing.process_images(p)
        finally:
            getattr(p, "close", lambda: None)()
        if state.interrupted:
            raise Cancelled("interrupted from the WebUI")
        missing = [f"{i} ({kind})" for i, kind in enumerate(kinds)
                   if f"ControlNet {i}" not in (getattr(p, "extra_generation_params", None) or {})]
        if missing:
            raise ControlNetError(
                f"ControlNet did not apply unit(s) {', '.join(missing)}, so the image would be made "
                "without them; see the WebUI console for ControlNet's error.")
        self.last_call = {"seed": (processed.all_seeds or [p.seed])[0], "controls": kinds,
                          "sampler": p.sampler_name, "scheduler": getattr(p, "scheduler", None)}
        return _first_image(processed, shape)


def _first_image(processed: Any, shape: tuple[int, int]) -> np.ndarray:
    """The first generated image (detect maps and grids are skipped) as (H, W, 3) uint8."""
    start = int(getattr(processed, "index_of_first_image", 0) or 0)
    count = len(getattr(processed, "all_seeds", None) or [None])
    images = list(processed.images)[start:start + count]
    if not images:
        raise ControlNetError("The WebUI returned no image (see its console for the error).")
    result = np.asarray(images[0].convert("RGB"))
    if result.shape[:2] != shape:
        import cv2

        logger.warning("the WebUI returned %s, expected %s: resizing", result.shape[:2], shape)
        result = cv2.resize(result, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(result)
