"""GPU benchmark of inference (SPEC §2): ours vs a re-enactment of the reference's call sequence.

Full-size SD1.5 + 4 ControlNets (canny, openpose, colour, tile) with random weights written as a
diffusers folder on the device, a random rank-128 user LoRA, EasyPhoto defaults, 512 crop, warm
(one untimed single and one untimed two-person portrait first: model loads, CUDA-graph captures;
their times are reported). The face stages (lite backend) run on the CPU as in production.

    python bench/infer_gpu.py prepare     # here: .bench/infer/ with 3 small photos (git-ignored)
    python bench/infer_gpu.py all OUT.json  # on the GPU: ours, ours-before, reference → one JSON
    python bench/infer_gpu.py ours        # on the GPU: the engine's defaults (+ checks, variants)
    python bench/infer_gpu.py ours-before # every speed-up off (pipeline __call__, peft adapters)
    python bench/infer_gpu.py ours:cuda_graphs=0,channels_last=1  # other Speedups
    python bench/infer_gpu.py reference   # on the GPU: stock-diffusers call sequence

Each way prints ``BENCH {json}``: GPU name, single / two-person medians, batch-of-8 rate, peak
VRAM, and per inpaint call of one profiled portrait its wall time and median step time (each
scheduler step synchronised). "ours" adds ``checks`` (the profiled calls re-run with CUDA graphs
off and with every speed-up off: |Δ| of the uint8 outputs) and ``variants`` (other settings).

"reference": fp16 pipelines loaded separately for each stage's ControlNet set (own copies of
the base weights, as separate pipeline objects per stage), the user LoRA loaded + merged before
and unmerged + unloaded after every diffusion call. The portrait logic (crops, masks, fusion,
colour shift) is the same code for both, so only the diffusion call sequence differs.
"""

from __future__ import annotations

import json
import os
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
VARIANTS_ON = os.environ.get("BENCH_VARIANTS", "1") != "0"  # BENCH_VARIANTS=0: skip them


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
    """Random full-size SD1.5 + ControlNets saved as a diffusers folder (once per machine:
    kept for the next process); returns the LoRA path."""
    import torch

    if (WORK / "lora.safetensors").is_file() and (folder / "controlnet-tile").is_dir():
        return WORK / "lora.safetensors"
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

    models, start = engine.models.get("sd15"), time.perf_counter()
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
        if hasattr(backend, "memo"):  # each run as a new template and user (conservative)
            backend.memo.clear()
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = run_batch([template] * per_run, request, engine=engine, backend=backend,
                           store=store)
        torch.cuda.synchronize()
        if result.errors:
            raise RuntimeError(str(result.errors[0].to_dict()))
        times.append(time.perf_counter() - start)
    return times


class StepTimer:
    """Wall time of every denoising step (synchronised at each scheduler step), per engine
    call: ``calls`` holds, per inpaint call, its controls, steps, wall time and step times."""

    def __init__(self, engine) -> None:
        self.engine, self.calls, self.args = engine, [], []

    def __enter__(self) -> "StepTimer":
        import torch
        from diffusers import DPMSolverMultistepScheduler

        self._class, self._inpaint = DPMSolverMultistepScheduler, self.engine.inpaint
        self._step = original = DPMSolverMultistepScheduler.step
        calls = self.calls

        def step(scheduler, *args, **kwargs):
            torch.cuda.synchronize()
            calls[-1]["stamps"].append(time.perf_counter())
            return original(scheduler, *args, **kwargs)

        def inpaint(*args, **kwargs):
            self.args.append((args, kwargs))
            calls.append({"controls": [u.kind for u in args[3].controls], "stamps": []})
            torch.cuda.synchronize()
            start = time.perf_counter()
            out = self._inpaint(*args, **kwargs)
            torch.cuda.synchronize()
            calls[-1]["wall_s"] = round(time.perf_counter() - start, 4)
            calls[-1]["phases_ms"] = {k: round(1000 * v, 1) for k, v in
                                      getattr(self.engine, "timings", {}).items()}
            return out

        DPMSolverMultistepScheduler.step = step
        self.engine.inpaint = inpaint
        return self

    def __exit__(self, *exc) -> None:
        self._class.step = self._step
        self.engine.inpaint = self._inpaint

    def summary(self) -> list[dict]:
        for call in self.calls:
            stamps = call.pop("stamps")
            gaps = [1000 * (b - a) for a, b in zip(stamps, stamps[1:])]
            call.update(steps=len(stamps), step_ms_median=_median(gaps) if gaps else None)
        return self.calls


def profile_steps(engine, backend, store, request) -> tuple[list, list]:
    """One warm single portrait with per-step times; returns them and the inpaint calls'
    arguments (for the output checks)."""
    with StepTimer(engine) as timer:
        timed(engine, backend, store, DATA / "single.jpg", request, 1)
    return timer.summary(), timer.args


def set_speedups(engine, speedups) -> None:
    """Switch ``engine``'s speed-ups between calls (LoRA fusing, graphs' stream mode)."""
    from easyphoto.engine.step_graphs import StepGraphs

    if speedups.parallel_controlnets != engine.speedups.parallel_controlnets:
        engine.graphs = StepGraphs(parallel=speedups.parallel_controlnets)
    engine.speedups = speedups
    engine.models.get("sd15").loras.fuse = speedups.fuse_loras


def check_outputs(engine, calls) -> dict:
    """Each profiled inpaint call re-run with graphs off and with every speed-up off (weights
    left channels-last): max and mean |difference| of the uint8 outputs against the fast
    path's."""
    import dataclasses

    import numpy as np

    from easyphoto.engine.denoise import Speedups
    fast = engine.speedups
    ways = {"fast": fast, "eager": dataclasses.replace(fast, cuda_graphs=False),
            "off": Speedups.off()}
    outputs = {}
    for name, speedups in ways.items():
        set_speedups(engine, speedups)
        outputs[name] = [engine.inpaint(*args, **kwargs).astype(np.int16)
                         for args, kwargs in calls]
    set_speedups(engine, fast)
    return {f"fast_vs_{name}": [{"max": int(np.abs(a - b).max()),
                                 "mean": round(float(np.abs(a - b).mean()), 4)}
                                for a, b in zip(outputs["fast"], outputs[name])]
            for name in ("eager", "off")}


#: (name, Speedups changes) of the "ours" variants; "cudnn_benchmark" is torch's flag (set for
#: that variant only: it gained nothing on an H100). Channels-last stays once on (it re-lays
#: the weights out); without it a step took 24.8 ms parallel, 28.6 ms serial (H100).
VARIANTS = (("eager", {"cuda_graphs": False}), ("unfused", {"fuse_loras": False}),
            ("serial", {"parallel_controlnets": False}), ("defaults", {}))


def variants(engine, backend, store, request) -> dict:
    """Single-portrait time and per-step times under other speed-up settings (same process)."""
    import dataclasses

    import torch

    base, rows = engine.speedups, {}
    for name, changes in VARIANTS:
        changes = dict(changes)
        torch.backends.cudnn.benchmark = changes.pop("cudnn_benchmark", False)
        engine.graphs.clear()
        set_speedups(engine, dataclasses.replace(base, **changes))
        try:
            timed(engine, backend, store, DATA / "single.jpg", request, 1)  # captures
            single = _median(timed(engine, backend, store, DATA / "single.jpg", request, 3))
            steps, _ = profile_steps(engine, backend, store, request)
        except Exception as error:  # noqa: BLE001 - a variant's failure is a result
            rows[name] = {"error": repr(error)[:500]}
            continue
        rows[name] = {"single_s_median": single, "graphed": engine.last_call.get("graphed"),
                      "step_ms": [c["step_ms_median"] for c in steps]}
        print(f"VARIANT {name} {rows[name]}", flush=True)
    torch.backends.cudnn.benchmark = False
    return rows


def _median(values) -> float:  # the upper median of an even count
    return round(sorted(values)[len(values) // 2], 4)


def speedups_of(way: str):
    """``ours`` (defaults), ``ours-before`` (all off) or ``ours:key=0,key=1``."""
    from easyphoto.engine.denoise import Speedups

    if way == "ours-before":
        return Speedups.off()
    changes = dict(item.split("=") for item in way.partition(":")[2].split(",") if item)
    return Speedups(**{key: value == "1" for key, value in changes.items()})


def make_engine(way: str):
    if way.startswith("ours"):
        from easyphoto.engine.diffusers_engine import DiffusersEngine
        engine = DiffusersEngine(base_model=str(WORK / "base"), dtype="fp16",
                                 speedups=speedups_of(way.replace("-nolora", "")
                                                      .replace("-compiled", "")))
        if way == "ours-nolora":  # diagnostic: the same calls without any LoRA layer
            engine.inpaint = _without_loras(engine.inpaint)
        return engine
    from infer_reference import ReferenceWayEngine
    return ReferenceWayEngine(WORK / "base")


def measure(way: str, extra: bool) -> dict:
    import dataclasses

    import torch

    from easyphoto.params import InferRequest

    lora = build_models(WORK / "base")
    store = make_user(WORK / "data", lora)
    engine, backend = make_engine(way), _device_backend()()
    one = InferRequest(user_ids=["bench"], base_model=str(WORK / "base"), seed=1)
    two = InferRequest(user_ids=["bench", "bench"], base_model=str(WORK / "base"), seed=1)
    torch.cuda.reset_peak_memory_stats()
    first = timed(engine, backend, store, DATA / "single.jpg", one, 1)  # warm-up
    compile_s = None
    if way == "ours-compiled":  # experiment: CUDA graphs through torch.compile, warm shapes first
        compile_s = _compile(engine, backend, store, one, two)
        torch.cuda.reset_peak_memory_stats()
    first += timed(engine, backend, store, DATA / "two.jpg", two, 1)  # warm-up (its shapes)
    single = timed(engine, backend, store, DATA / "single.jpg", one, 5)
    double = timed(engine, backend, store, DATA / "two.jpg", two, 3)
    batch = timed(engine, backend, store, DATA / "single.jpg", one, 1, per_run=8)
    peak = torch.cuda.max_memory_allocated()
    steps, calls = profile_steps(engine, backend, store, one)
    row = {"way": way, "gpu": torch.cuda.get_device_properties(0).name,
           "torch": torch.__version__, "single_s_median": _median(single),
           "single_s_all": [round(t, 3) for t in single],
           "two_person_s_median": _median(double),
           "batch8_portraits_per_s": round(8 / sum(batch), 3),
           "peak_vram_gib": round(peak / 2**30, 2), "compile_and_warm_s": compile_s,
           "first_single_and_two_person_s": [round(t, 3) for t in first],
           "profile_calls": steps, "engine_timings_last": getattr(engine, "timings", {}),
           "speedups": dataclasses.asdict(engine.speedups) if hasattr(engine, "speedups")
           else None}
    if extra and hasattr(engine, "speedups"):
        print("BENCH " + json.dumps(row, default=str), flush=True)
        row["checks"] = check_outputs(engine, calls)
        row["variants"] = variants(engine, backend, store, one) if VARIANTS_ON else None
    return row


def run_all(out: Path, ways=("ours", "ours-before", "reference")) -> None:
    """Every way in its own process (own CUDA memory), the models built once; one JSON."""
    import subprocess

    results: dict = {}
    subprocess.run([sys.executable, __file__, "build"], check=True)
    for way in ways:
        proc = subprocess.run([sys.executable, __file__, way], capture_output=True, text=True)
        print(proc.stdout[-4000:], proc.stderr[-3000:], flush=True)
        rows = [line[6:] for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
        results[way] = json.loads(rows[-1]) if rows else {"error": proc.stderr[-2000:]}
        out.write_text(json.dumps(_with_ratios(results), indent=1))


def _with_ratios(results: dict) -> dict:
    ours, ref = results.get("ours", {}), results.get("reference", {})
    if "single_s_median" in ours and "single_s_median" in ref:
        results["ours_vs_reference"] = {f"{key}_speedup": round(
            ref[key] / ours[key] if key.endswith("median") else ours[key] / ref[key], 2)
            for key in ("single_s_median", "two_person_s_median", "batch8_portraits_per_s")}
    return results


def main() -> None:
    way = sys.argv[1]
    if way == "prepare":
        return prepare()
    WORK.mkdir(parents=True, exist_ok=True)
    if way == "build":
        return build_models(WORK / "base") and None
    if way == "all":
        return run_all(Path(sys.argv[2]) if len(sys.argv) > 2 else WORK / "bench.json")
    row = measure(way, extra=way == "ours")
    print("BENCH " + json.dumps(row, default=str), flush=True)


if __name__ == "__main__":
    main()
