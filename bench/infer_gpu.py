"""GPU benchmark of inference (SPEC §2): ours vs a re-enactment of the reference's call sequence.

Full-size SD1.5 + 4 ControlNets (canny, openpose, colour, tile) with random weights written as a
diffusers folder on the device, a random rank-128 user LoRA, EasyPhoto defaults, 512 crop, warm
(one untimed portrait first). The face stages (lite backend) run on the CPU as in production.

    python bench/infer_gpu.py prepare     # here: .bench/infer/ with 3 small photos (git-ignored)
    python bench/infer_gpu.py ours        # on the GPU
    python bench/infer_gpu.py reference   # on the GPU: stock-diffusers call sequence

"reference": fp16 pipelines loaded separately for each stage's ControlNet set (own copies of
the base weights, as separate pipeline objects per stage), the user LoRA loaded + merged before
and unmerged + unloaded after every diffusion call. The portrait logic (crops, masks, fusion,
colour shift) is the same code for both, so only the diffusion call sequence differs.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
DATA = ROOT / ".bench" / "infer"
WORK = Path("/tmp/easyphoto-infer-bench")
#: torch.compile mode of the "ours-compiled" experiment ("reduce-overhead" = CUDA graphs:
#: fails with diffusers ControlNet residuals overwritten between graph replays).
COMPILE_MODE = "default"


def prepare() -> None:
    """Small JPEGs of real photos (from PyPI packages) to carry to the device."""
    from PIL import Image

    sys.path.insert(0, str(ROOT / "tests"))
    from assets import asset

    DATA.mkdir(parents=True, exist_ok=True)
    Image.open(asset("obama.jpg")).convert("RGB").save(DATA / "single.jpg", quality=92)
    Image.open(asset("obama2.jpg")).convert("RGB").save(DATA / "face_id.jpg", quality=92)
    Image.open(asset("t1.jpg")).convert("RGB").crop((0, 60, 420, 500)).save(DATA / "two.jpg",
                                                                            quality=92)


def build_models(folder: Path):
    """Random full-size SD1.5 + ControlNets saved as a diffusers folder; returns the LoRA path."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionPipeline

    from random_models import random_components

    comps = random_components("sd15", dtype=torch.float16, with_canny=False)
    StableDiffusionPipeline(vae=comps.vae, text_encoder=comps.text_encoders[0],
                            tokenizer=comps.tokenizers[0], unet=comps.unet,
                            scheduler=comps.noise_scheduler, safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False
                            ).save_pretrained(folder)
    for kind in ("canny", "openpose", "color", "tile"):
        ControlNetModel.from_unet(comps.unet).to(torch.float16).save_pretrained(
            folder / f"controlnet-{kind}")
    return random_lora(comps, WORK / "lora.safetensors")


def random_lora(comps, path: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    from easyphoto.train.lora_io import lora_target_modules, save_kohya_lora

    targets = lora_target_modules("sd15")
    states = []
    for model, names in ((comps.unet, targets.unet), (comps.text_encoders[0], targets.text_encoder)):
        model.add_adapter(LoraConfig(r=128, lora_alpha=64, init_lora_weights="gaussian",
                                     target_modules=list(names)))
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=1e-3)
        states.append({k: v.half() for k, v in get_peft_model_state_dict(model).items()})
    return save_kohya_lora(path, states[0], [states[1]], 128, 64)


def make_user(data_dir: Path, lora: Path):
    import shutil

    from easyphoto.store import UserStore

    store = UserStore(data_dir)
    run = store.begin_run("bench")
    shutil.copyfile(lora, run / "lora.safetensors")
    shutil.copyfile(DATA / "face_id.jpg", run / "face_id.jpg")
    shutil.copyfile(DATA / "face_id.jpg", run / "ref.jpg")
    store.commit_run("bench", run)
    return store


def _device_backend():
    """The lite backend without MediaPipe (it needs numpy < 2, which the GPU image cannot take):
    part masks come from the lite backend's own 5-landmark fallback. Face stages run on the
    CPU and are identical for both ways; their cost on the CPU is measured by bench/face_lite.py."""
    from easyphoto.face.lite import LiteBackend

    class DeviceBackend(LiteBackend):
        def face_mesh(self, image, face):
            return None

        def saliency(self, image):
            import numpy as np
            return np.full(image.shape[:2], 255, np.uint8)

    return DeviceBackend


def _compile(engine, backend, store, one, two) -> float:
    """torch.compile(mode=COMPILE_MODE) of the UNet and ControlNets, then warm every shape."""
    import torch

    models = engine.models.get("sd15")
    start = time.perf_counter()
    models.unet = torch.compile(models.unet, mode=COMPILE_MODE)
    for kind in list(models.controlnets):
        models.controlnets[kind] = torch.compile(models.controlnets[kind], mode=COMPILE_MODE)
    for _ in range(2):
        timed(engine, backend, store, DATA / "single.jpg", one, 1)
        timed(engine, backend, store, DATA / "two.jpg", two, 1)
    return round(time.perf_counter() - start, 1)


def _without_loras(inpaint):
    import dataclasses

    def call(image, mask, strength, generation, mask_blur=8):
        return inpaint(image, mask, strength, dataclasses.replace(generation, loras=()), mask_blur)

    return call


def timed(engine, backend, store, template: Path, request, runs: int, per_run: int = 1) -> list[float]:
    import torch

    from easyphoto.infer.batch import run_batch

    times = []
    for _ in range(runs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = run_batch([template] * per_run, request, engine=engine, backend=backend,
                           store=store)
        torch.cuda.synchronize()
        if result.errors:
            raise RuntimeError(str(result.errors[0].to_dict()))
        times.append(time.perf_counter() - start)
    return times


def profile(engine, backend, store, request) -> None:
    """One warm portrait with the wall time of every stage and of every engine call."""
    import torch

    from easyphoto.infer.batch import run_batch

    marks, original = [], engine.inpaint

    def spy(*args, **kwargs):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = original(*args, **kwargs)
        torch.cuda.synchronize()
        marks.append(("inpaint", round(time.perf_counter() - start, 3),
                      [u.kind for u in args[3].controls], args[3].steps, args[2]))
        return out

    engine.inpaint = spy
    last = [time.perf_counter()]

    def progress(p):
        now = time.perf_counter()
        marks.append(("stage-begin", p.message, round(now - last[0], 3)))
        last[0] = now

    start = time.perf_counter()
    run_batch([DATA / "single.jpg"], request, engine=engine, backend=backend, store=store,
              progress=progress)
    marks.append(("total", round(time.perf_counter() - start, 3)))
    print("PROFILE " + json.dumps(marks, default=str))


def main() -> None:
    way = sys.argv[1]
    if way == "prepare":
        return prepare()
    import torch

    from easyphoto.params import InferRequest

    DeviceBackend = _device_backend()

    WORK.mkdir(parents=True, exist_ok=True)
    lora = build_models(WORK / "base")
    store = make_user(WORK / "data", lora)
    if way in ("ours", "ours-nolora", "ours-compiled"):
        from easyphoto.engine.diffusers_engine import DiffusersEngine
        engine = DiffusersEngine(base_model=str(WORK / "base"), dtype="fp16")
        if way == "ours-nolora":  # diagnostic: the same calls without any LoRA layer
            engine.inpaint = _without_loras(engine.inpaint)
    else:
        from infer_reference import ReferenceWayEngine
        engine = ReferenceWayEngine(WORK / "base")
    backend = DeviceBackend()
    one = InferRequest(user_ids=["bench"], base_model=str(WORK / "base"), seed=1)
    two = InferRequest(user_ids=["bench", "bench"], base_model=str(WORK / "base"), seed=1)
    torch.cuda.reset_peak_memory_stats()
    timed(engine, backend, store, DATA / "single.jpg", one, 1)  # warm-up
    if len(sys.argv) > 2 and sys.argv[2] == "profile":
        return profile(engine, backend, store, one)
    compile_s = None
    if way == "ours-compiled":  # experiment: CUDA graphs through torch.compile, warm shapes first
        compile_s = _compile(engine, backend, store, one, two)
        torch.cuda.reset_peak_memory_stats()
    single = timed(engine, backend, store, DATA / "single.jpg", one, 5)
    double = timed(engine, backend, store, DATA / "two.jpg", two, 3)
    batch = timed(engine, backend, store, DATA / "single.jpg", one, 1, per_run=8)
    props = torch.cuda.get_device_properties(0)
    print("BENCH " + json.dumps({
        "way": way, "gpu": props.name, "single_s_median": sorted(single)[2],
        "single_s_all": [round(t, 3) for t in single], "two_person_s_median": sorted(double)[1],
        "batch8_portraits_per_s": round(8 / sum(batch), 3),
        "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "compile_and_warm_s": compile_s,
        "engine_timings_last": getattr(engine, "timings", {})}, default=str))


if __name__ == "__main__":
    main()
