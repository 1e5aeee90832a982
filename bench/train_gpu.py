"""GPU benchmark of EasyPhoto training (SPEC 1.3–1.4) vs a re-enactment of the reference's way.

Full-size SD1.5 architecture with random weights (bench/random_models.py), the 10-photo dataset
made by bench/prepare_train_data.py (carried in ``.bench/train10``), reference defaults:
rank 128 / alpha 64, 512 px, batch 1 × accumulation 4, 800 steps, checkpoint + validation every
100 steps (4 templates, 20 steps, canny ControlNet), top-10 fusion.

    python bench/train_gpu.py ours        # EasyPhoto's trainer and validator
    python bench/train_gpu.py ours:channels_last=1,attention=cudnn   # other TrainSpeedups
    python bench/train_gpu.py variants    # steps/s of each TrainSpeedups variant (one process)
    python bench/train_gpu.py reference   # stock-diffusers re-enactment (bench/train_reference.py)

Prints one JSON line with per-stage wall times, steps/s, peak VRAM and the GPU name.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DATA = ROOT / ".bench" / "train10"


def _sync() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def gpu_info() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "torch": torch.__version__}


def speedups_of(way: str):
    """``ours`` → the defaults; ``ours:channels_last=1,attention=cudnn,cuda_graph=0``."""
    from easyphoto.train.lora import TrainSpeedups

    changes = dict(item.split("=") for item in way.partition(":")[2].split(",") if item)
    typed = {k: (v if k == "attention" else v == "1") for k, v in changes.items()}
    return TrainSpeedups(**typed)


#: (name, TrainSpeedups changes) timed by ``variants``; the variants measured before fused LoRA
#: linears, the channels-last GroupNorm and flash attention by default name their settings
OLD = {"fused_lora": False, "channels_last": False, "attention": "default",
       "fused_geglu": False}
OFF = {**OLD, "master_weights": False}
MASTER = {**OLD, "master_weights": True}
VARIANTS = (("graph", OFF), ("graph+channels_last", {**OFF, "channels_last": True}),
            ("graph+cudnn_attention", {**OFF, "attention": "cudnn"}),
            ("graph+flash_attention", {**OFF, "attention": "flash"}),
            ("graph+channels_last+cudnn_attention", {**OFF, "channels_last": True,
                                                     "attention": "cudnn"}),
            ("graph+master_weights", MASTER),
            ("graph+master_weights+channels_last", {**MASTER, "channels_last": True,
                                                    "nhwc_group_norm": False}),
            ("graph+master_weights+cudnn_benchmark", {**MASTER, "cudnn_benchmark": True}),
            ("graph+master_weights+fused_lora", {**MASTER, "fused_lora": True}),
            ("graph+master_weights+fused_lora+channels_last_native_gn",
             {**MASTER, "fused_lora": True, "channels_last": True, "nhwc_group_norm": False}),
            ("graph+master_weights+fused_lora+channels_last_nhwc_gn",
             {**MASTER, "fused_lora": True, "channels_last": True}),
            ("graph+master_weights+fused_lora+channels_last_nhwc_gn+flash_attention",
             {"fused_geglu": False}),
            ("graph+master_weights+fused_lora+channels_last_nhwc_gn+flash+fused_geglu (defaults)",
             {}),
            ("graph+master_weights+fused_lora+channels_last_nhwc_gn+fused_geglu+cudnn_attention",
             {"attention": "cudnn"}),
            ("graph+master_weights+fused_lora+channels_last_nhwc_gn+cudnn_attention",
             {"fused_geglu": False, "attention": "cudnn"}))


def run_variants(steps: int, only: str = "") -> dict:
    """Steps/s of the training step under each variant: same models and latent cache, a fresh
    LoRA per variant, 10 untimed steps (warm-up, graph capture), then ``steps`` timed steps
    read one by one like the training loop does."""
    import dataclasses

    from easyphoto.params import TrainRequest
    from easyphoto.train.latent_cache import build_latent_cache
    from easyphoto.train.lora import (LoraTrainer, TrainSpeedups, _speedups_applied,
                                      remove_lora, tf32_matmuls)
    from easyphoto.train.step_graph import GraphedSteps
    from random_models import random_components

    request = TrainRequest(user_id="bench", base_model="", mixed_precision="bf16").resolved()
    components = random_components("sd15", dtype=torch.bfloat16, with_canny=False)
    cache = build_latent_cache(components, DATA / "dataset", request.resolution,
                               request.random_flip, request.seed)
    rows = {}
    for name, changes in VARIANTS:
        if only and name != "graph" and only not in name:  # "variants 150 master"
            continue
        changes = dict(changes)  # "cudnn_benchmark": torch's flag, for that variant only
        torch.backends.cudnn.benchmark = changes.pop("cudnn_benchmark", False)
        speedups = dataclasses.replace(TrainSpeedups(), **changes)
        torch.cuda.reset_peak_memory_stats()
        with tf32_matmuls(components.device), _speedups_applied(components, speedups):
            trainer = LoraTrainer(components, request, steps + 10, graphable=speedups.cuda_graph,
                                  master_weights=speedups.masters_for(components.dtype))
            stepper = GraphedSteps(trainer) if speedups.cuda_graph else trainer.step
            with trainer.fused(speedups.fused_lora):
                losses = [float(stepper(trainer.draw_batch(cache))) for _ in range(10)]
                start = _sync()
                losses += [float(stepper(trainer.draw_batch(cache))) for _ in range(steps)]
                elapsed = _sync() - start
        torch.backends.cudnn.benchmark = False
        rows[name] = {"steps_per_s": round(steps / elapsed, 3),
                      "ms_per_step": round(1000 * elapsed / steps, 2),
                      "peak_vram_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                      "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)]}
        print(f"VARIANT {name} {rows[name]}", flush=True)
        remove_lora(components)
        del trainer, stepper
        torch.cuda.empty_cache()
    return {"way": "variants", "steps": steps, "variants": rows}


def run_validation_compare(steps: int, out: Path) -> dict:
    """Validation alone on the checkpoints of a short training: the diffusers pipeline, the
    own loop (CUDA graph) with the LoRA branches, the own loop with each checkpoint merged."""
    from easyphoto.face.lite import LiteBackend
    from easyphoto.params import TrainRequest
    from easyphoto.train.lora import train_lora
    from easyphoto.train.validate import (ValidationRenderer, render_all_checkpoints,
                                          validation_templates)
    from random_models import random_components

    request = TrainRequest(user_id="bench", base_model="", mixed_precision="bf16").resolved()
    components = random_components("sd15", dtype=torch.bfloat16)
    output = train_lora(components, DATA / "dataset", request, out / "checkpoints", steps)
    templates = validation_templates(None, sorted((DATA / "photos").iterdir()),
                                     backend=LiteBackend())
    rows = {}
    # the second pass of each own-loop way: its graph already captured
    for name, own, merge in (("pipeline", False, False), ("own", True, False),
                             ("own", True, False), ("own+merged", True, True),
                             ("own+merged", True, True)):
        renderer = ValidationRenderer(components, request, own_loop=own, merge_lora=merge)
        start = _sync()
        render_all_checkpoints(components, output.checkpoints, templates, request,
                               out / f"validation-{name}", renderer=renderer)
        row = {"render_s": round(_sync() - start, 3),
               "checkpoints": len(output.checkpoints), "templates": len(templates),
               **{k: round(v, 3) for k, v in renderer.seconds.items()}}
        if renderer.loop is not None:
            row["captures"] = renderer.loop.graphs.captures
        rows[name] = row
        print(f"VALIDATION {name} {row}", flush=True)
    return {"way": "validation", "steps": steps, "validation": rows}


#: kernel-name fragments → the category a profile sums them under (first match wins)
KERNEL_KINDS = (("layout", ("nchwToNhwc", "nhwcToNchw", "transpose", "Transpose")),
                ("attention", ("flash", "fmha", "attention", "Attention")),
                ("norm", ("group_norm", "GroupNorm", "layer_norm", "LayerNorm", "welford")),
                ("optimizer", ("adam", "Adam", "multi_tensor", "foreach")),
                ("copy/cast", ("copy", "Copy", "cast")),
                ("gemm/conv", ("gemm", "Gemm", "cutlass", "xmma", "conv", "Conv", "sm90", "sm80",
                               "cudnn", "wgrad", "dgrad")),
                ("elementwise", ("elementwise", "vectorized", "reduce", "Reduce")))


def kernel_kinds(events, steps: int) -> dict:
    """ms per step per :data:`KERNEL_KINDS` category of the profiled CUDA kernels."""
    sums: dict = {}
    for event in events:
        ms = (event.device_time_total or 0) / 1000 / steps
        if not ms:
            continue
        kind = next((k for k, parts in KERNEL_KINDS if any(p in event.key for p in parts)), "other")
        sums[kind] = sums.get(kind, 0.0) + ms
    return {k: round(v, 2) for k, v in sorted(sums.items(), key=lambda kv: -kv[1])}


def run_profile(steps: int, speedups) -> dict:
    """torch.profiler over ``steps`` eager training steps (after 5 warm-up steps) with the
    default :class:`TrainSpeedups` precision (fp32 master weights): the CUDA kernels that take
    the time, by name and by :data:`KERNEL_KINDS` category."""
    from torch.profiler import ProfilerActivity, profile

    from easyphoto.params import TrainRequest
    from easyphoto.train.latent_cache import build_latent_cache
    from easyphoto.train.lora import LoraTrainer, _speedups_applied, tf32_matmuls
    from random_models import random_components

    request = TrainRequest(user_id="bench", base_model="", mixed_precision="bf16").resolved()
    components = random_components("sd15", dtype=torch.bfloat16, with_canny=False)
    cache = build_latent_cache(components, DATA / "dataset", request.resolution,
                               request.random_flip, request.seed)
    with tf32_matmuls(components.device), _speedups_applied(components, speedups):
        trainer = LoraTrainer(components, request, steps + 5, graphable=False,
                              master_weights=True)
        with trainer.fused(speedups.fused_lora):
            for _ in range(5):
                float(trainer.step(trainer.draw_batch(cache)))
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                         record_shapes=True) as prof:
                for _ in range(steps):
                    float(trainer.step(trainer.draw_batch(cache)))
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    top = sorted((e for e in events if e.device_time_total), key=lambda e: -e.device_time_total)
    for event in top[:40]:  # ms per step, calls per step, kernel name
        print(f"KERNEL {event.device_time_total / 1000 / steps:7.3f} ms "
              f"{event.count / steps:6.1f}x {event.key[:170]}", flush=True)
    print_op_sources(prof, steps)
    total = sum(e.device_time_total for e in events if e.device_time_total) / 1000 / steps
    return {"way": "profile", "steps": steps, "cuda_ms_per_step_sum": round(total, 2),
            "ms_per_step_by_kind": kernel_kinds(events, steps)}


def print_op_sources(prof, steps: int, rows: int = 45) -> None:
    """The operators (with input shapes) whose own kernels take the most GPU time: which
    copies, additions and conversions a step makes, and on what."""
    ops = [e for e in prof.key_averages(group_by_input_shape=True)
           if e.device_type.name == "CPU" and e.self_device_time_total]
    for event in sorted(ops, key=lambda e: -e.self_device_time_total)[:rows]:
        print(f"OP {event.self_device_time_total / 1000 / steps:7.3f} ms "
              f"{event.count / steps:6.1f}x {event.key} {str(event.input_shapes)[:150]}",
              flush=True)


def run_validation_profile(out: Path) -> dict:
    """torch.profiler (CPU + CUDA) over the validation of one checkpoint (4 templates), after
    a warm-up render: where a render's time goes."""
    from torch.profiler import ProfilerActivity, profile

    from easyphoto.face.lite import LiteBackend
    from easyphoto.params import TrainRequest
    from easyphoto.train.lora import train_lora
    from easyphoto.train.validate import (ValidationRenderer, render_all_checkpoints,
                                          validation_templates)
    from random_models import random_components

    request = TrainRequest(user_id="bench", base_model="", mixed_precision="bf16").resolved()
    components = random_components("sd15", dtype=torch.bfloat16)
    output = train_lora(components, DATA / "dataset", request, out / "checkpoints", 100)
    templates = validation_templates(None, sorted((DATA / "photos").iterdir()),
                                     backend=LiteBackend())
    renderer = ValidationRenderer(components, request)
    render_all_checkpoints(components, output.checkpoints, templates, request, out / "warm",
                           renderer=renderer)
    start = _sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        render_all_checkpoints(components, output.checkpoints, templates, request,
                               out / "profiled", renderer=renderer)
    wall = _sync() - start
    events = prof.key_averages()
    print(events.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=70))
    print(events.table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=70))
    return {"way": "validation-profile", "wall_s": round(wall, 3),
            "seconds": {k: round(v, 3) for k, v in renderer.seconds.items()}}


def run_loop(steps: int, out: Path) -> dict:
    """The training loop of ``train_lora`` (``steps`` steps, checkpoints every 100) in one
    process under: the defaults, read-ahead off, without kept snapshots, and the defaults
    again — seconds of steps per way (what differs from the bare ``variants`` step)."""
    import dataclasses

    from easyphoto.params import TrainRequest
    from easyphoto.train.lora import TrainSpeedups, train_lora
    from random_models import random_components

    request = TrainRequest(user_id="bench", base_model="", mixed_precision="bf16").resolved()
    components = random_components("sd15", dtype=torch.bfloat16, with_canny=False)
    rows = {}
    for name, changes, keep in (("defaults", {}, True), ("no_read_ahead", {"read_ahead": False},
                                                         True),
                                ("no_snapshots", {}, False), ("defaults_again", {}, True)):
        speedups = dataclasses.replace(TrainSpeedups(), **changes)
        output = train_lora(components, DATA / "dataset", request, out / name, steps,
                            speedups=speedups, keep_snapshots=keep)
        rows[name] = {k: round(v, 3) for k, v in output.seconds.items()}
        rows[name]["ms_per_step"] = round(1000 * output.seconds["train"] / steps, 2)
        print(f"LOOP {name} {rows[name]}", flush=True)
        del output
        torch.cuda.empty_cache()
    return {"way": "loop", "steps": steps, "loop": rows}


def run_coldstart(speedups, out: Path, steps: int = 8, warm_attention: str = "") -> dict:
    """A fresh process's first training steps one by one (eager warm-up, capture, replays)
    and its first two validation rounds: what the first use of each kernel costs (cuDNN
    plans, runtime-compiled attention kernels) under ``speedups``. ``warm_attention``: cuDNN's
    attention warmed up while the models are built (bench/attention_warmup.py): ``"thread"``
    on a background thread, ``"main"`` on this thread (the models built on another)."""
    from easyphoto.face.lite import LiteBackend
    from easyphoto.params import TrainRequest
    from easyphoto.train.latent_cache import build_latent_cache
    from easyphoto.train.lora import Checkpoint, LoraTrainer, _speedups_applied, tf32_matmuls
    from easyphoto.train.step_graph import GraphedSteps
    from easyphoto.train.validate import (ValidationRenderer, render_all_checkpoints,
                                          validation_templates)
    from random_models import random_components

    request = TrainRequest(user_id="bench", base_model="", mixed_precision="bf16").resolved()
    start = _sync()
    if warm_attention == "main":  # the warm-up on this thread, the models built beside it
        import threading

        from attention_warmup import warm_sdpa

        built = {}
        builder = threading.Thread(target=lambda: built.update(
            c=random_components("sd15", dtype=torch.bfloat16)))
        builder.start()
        warm_sdpa()
        print(f"COLD attention warmed on the main thread in {_sync() - start:.2f} s", flush=True)
        builder.join()
        components = built["c"]
    else:
        warm = None
        if warm_attention:
            from attention_warmup import start_sdpa_warm_up

            warm = start_sdpa_warm_up()
        components = random_components("sd15", dtype=torch.bfloat16)
        if warm is not None:
            warm.join()
    print(f"COLD models built (and attention warmed: {warm_attention}) in "
          f"{_sync() - start:.2f} s", flush=True)
    cache = build_latent_cache(components, DATA / "dataset", request.resolution,
                               request.random_flip, request.seed)
    seconds, checkpoints = [], []
    with tf32_matmuls(components.device), _speedups_applied(components, speedups):
        trainer = LoraTrainer(components, request, steps, graphable=speedups.cuda_graph,
                              master_weights=speedups.masters_for(components.dtype))
        stepper = GraphedSteps(trainer) if speedups.cuda_graph else trainer.step
        with trainer.fused(speedups.fused_lora):
            for step in range(1, steps + 1):
                start = _sync()
                float(stepper(trainer.draw_batch(cache)))
                seconds.append(round(_sync() - start, 3))
            for step in (steps - 1, steps):
                checkpoints.append(Checkpoint(step, out / f"c{step}.safetensors",
                                              trainer.snapshot(step)))
        print(f"COLD steps {seconds}", flush=True)
        templates = validation_templates(None, sorted((DATA / "photos").iterdir()),
                                         backend=LiteBackend())
        renderer = ValidationRenderer(components, request)
        rounds = []
        for checkpoint in checkpoints:  # (with the attention order of ``speedups`` too)
            start = _sync()
            render_all_checkpoints(components, [checkpoint], templates, request,
                                   out / f"v{checkpoint.step}", renderer=renderer)
            rounds.append(round(_sync() - start, 3))
    print(f"COLD validation rounds {rounds}", flush=True)
    return {"way": "coldstart", "speedups": str(speedups), "step_seconds": seconds,
            "validation_round_seconds": rounds}


def run_first_step(speedups) -> dict:
    """The first training steps of a process, eager, under torch.profiler (CPU): which
    operators spend the first step's seconds (kernel selection, runtime compilation, module
    loading), step by step; run it first on a freshly started machine."""
    from torch.profiler import ProfilerActivity, profile

    from easyphoto.params import TrainRequest
    from easyphoto.train.latent_cache import build_latent_cache
    from easyphoto.train.lora import LoraTrainer, _speedups_applied, tf32_matmuls
    from random_models import random_components

    request = TrainRequest(user_id="bench", base_model="", mixed_precision="bf16").resolved()
    components = random_components("sd15", dtype=torch.bfloat16, with_canny=False)
    start = _sync()
    cache = build_latent_cache(components, DATA / "dataset", request.resolution,
                               request.random_flip, request.seed)
    print(f"FIRST latents {_sync() - start:.3f} s", flush=True)
    seconds = []
    with tf32_matmuls(components.device):
        start = _sync()
        with _speedups_applied(components, speedups):
            print(f"FIRST speedups applied {_sync() - start:.3f} s", flush=True)
            trainer = LoraTrainer(components, request, 10, graphable=False, master_weights=True)
            with trainer.fused(speedups.fused_lora):
                for step in range(3):
                    start = _sync()
                    with profile(activities=[ProfilerActivity.CPU]) as prof:
                        float(trainer.step(trainer.draw_batch(cache)))
                    seconds.append(round(_sync() - start, 3))
                    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
                    for event in ops[:12]:
                        print(f"FIRST step{step + 1} {event.self_cpu_time_total / 1e6:7.3f} s "
                              f"{event.count:5d}x {event.key[:100]}", flush=True)
    print(f"FIRST steps {seconds}", flush=True)
    return {"way": "firststep", "speedups": str(speedups), "step_seconds": seconds}


def run_fusion(out: Path, checkpoints: int = 8) -> dict:
    """Fusion of ``checkpoints`` SD1.5 rank-128 LoRA checkpoints (random values, the training's
    keys and shapes) from their files and from their tensors kept on the GPU."""
    from peft import get_peft_model_state_dict

    from easyphoto.params import TrainRequest
    from easyphoto.train.lora import LoraTrainer
    from easyphoto.train.lora_io import fuse_checkpoints
    from random_models import random_components

    request = TrainRequest(user_id="bench", base_model="", mixed_precision="bf16").resolved()
    components = random_components("sd15", dtype=torch.bfloat16, with_canny=False)
    trainer = LoraTrainer(components, request, 10, graphable=True, master_weights=True)
    kept = []
    for step in range(checkpoints):
        for model in [components.unet, *components.text_encoders]:
            for tensor in get_peft_model_state_dict(model, adapter_name="easyphoto").values():
                tensor.data.normal_()
        snapshot = trainer.snapshot(step)
        kept.append((snapshot.write(out / f"c{step}.safetensors"), snapshot))
    paths, weights = [p for p, _ in kept], [1.0 / checkpoints] * checkpoints
    rows = {}
    for name in ("files", "memory", "files", "memory"):
        start = _sync()
        memory = {p: s.kohya_tensors() for p, s in kept} if name == "memory" else None
        fuse_checkpoints(paths, weights, out / f"fused-{name}.safetensors", memory)
        rows[name] = round(_sync() - start, 3)
        print(f"FUSION {name} {rows[name]} s", flush=True)
    return {"way": "fusion", "checkpoints": checkpoints, "seconds": rows}


def interval_pace(marks: list, start: float, interval: int) -> list:
    """ms per step within each ``interval`` of steps (the first includes latents, warm-up
    and capture: it is measured from ``start``)."""
    pace, last = [], start
    for step, at in marks:
        if step % interval == 0 or step == marks[-1][0]:
            previous = pace and sum(p[0] for p in pace) or 0
            pace.append((step - previous, at - last))
            last = at
    return [round(1000 * seconds / count, 1) for count, seconds in pace]


def run_ours(steps: int, out: Path, speedups=None, with_start_up: bool = True) -> dict:
    """The training pipeline's GPU stages, timed (scoring after rendering, as the pipeline;
    scoring on the validation worker measured slower: see render_all_checkpoints)."""
    import numpy as np

    from easyphoto.face.lite import LiteBackend
    from easyphoto.params import TrainRequest
    from easyphoto.train.fusion import choose_and_fuse
    from easyphoto.train.lora import TrainSpeedups, train_lora
    from easyphoto.train.lora_io import fuse_checkpoints
    from easyphoto.train.start_up import TrainingStartUp
    from easyphoto.train.validate import (ValidationRenderer, render_all_checkpoints, score_renders,
                                          validation_templates)
    from random_models import random_components

    request = TrainRequest(user_id="bench", base_model="", mixed_precision="bf16").resolved()
    times = {}
    start = _sync()
    # as the pipeline: GPU libraries read ahead and kernels compiled while the models load
    start_up = TrainingStartUp(request) if with_start_up else None
    components = random_components("sd15", dtype=torch.bfloat16)
    if speedups is None:  # plain "ours": what the pipeline picks
        speedups = start_up.speedups(steps) if start_up is not None else TrainSpeedups()
    times["load_models"] = _sync() - start
    start = _sync()
    marks = []  # (step, time) as each step's loss is read: the loop's pace by interval

    def progress(event) -> None:
        if event.stage == "train":
            marks.append((event.done, time.perf_counter()))

    output = train_lora(components, DATA / "dataset", request, out / "checkpoints", steps,
                        speedups=speedups, keep_snapshots=True,  # as the training pipeline
                        progress=progress)
    times["train_total"] = _sync() - start
    times["ms_per_step_by_interval"] = interval_pace(marks, start, request.validation_steps)
    times["to_first_step_s"] = marks[0][1] - start - output.seconds["prepare"]
    times["first_steps_s"] = [round(b[1] - a[1], 3) for a, b in zip(marks[:12], marks[1:13])]
    if start_up is not None:
        prefetched = start_up.prefetch.join()
        times.update(prefetch_gb=prefetched.bytes / 1e9, prefetch_s=prefetched.seconds,
                     attention_warm_up_s=start_up.attention and start_up.attention.seconds,
                     attention=speedups.attention)
        start_up.finish()
    times.update({f"train_{k}": v for k, v in output.seconds.items()})
    backend = LiteBackend()
    start = _sync()
    templates = validation_templates(None, sorted((DATA / "photos").iterdir()), backend=backend)
    renderer = ValidationRenderer(components, request)
    renders = render_all_checkpoints(components, output.checkpoints, templates, request,
                                     out / "validation", renderer=renderer)
    times["validation_render"] = _sync() - start
    start = time.perf_counter()
    score_renders(renders, np.load(DATA / "embeddings.npy", allow_pickle=False), backend)
    times["validation_score"] = time.perf_counter() - start
    times.update({f"validation_{k}": v for k, v in renderer.seconds.items()})
    if renderer.loop is not None and renderer.loop.graphs is not None:
        times["validation_graph_captures"] = renderer.loop.graphs.captures
        times["validation_last_graphed"] = renderer.loop.graphs.last_graphed
    start = time.perf_counter()
    paths = [c.path for c in output.checkpoints]  # from the kept tensors, as the pipeline
    fuse_checkpoints(paths, [1.0 / len(paths)] * len(paths), out / "fused_all.safetensors",
                     {c.path: c.lora.kohya_tensors() for c in output.checkpoints})
    times["fusion_weighted_average"] = time.perf_counter() - start
    start = time.perf_counter()
    choose_and_fuse(renders, output.checkpoints, request.fusion_top_k, out / "lora.safetensors",
                    face_id_path=out / "face_id.jpg", ref_image=DATA / "ref.jpg")
    times["fusion_choose_and_fuse"] = time.perf_counter() - start  # random weights: no faces
    total = times["train_total"] + times["validation_render"] + times["validation_score"] + \
        times["fusion_weighted_average"]
    pre = json.loads((DATA / "bench_preprocess.json").read_text())["preprocess_s"]
    return {"way": "ours", "speedups": str(speedups), "steps": steps, "renders": len(renders), **times,
            "total_excl_load_and_preprocess": total, "total_with_preprocess": total + pre,
            "steps_per_s": steps / output.seconds["train"] if output.seconds["train"] else None}


def main() -> None:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    way = sys.argv[1] if len(sys.argv) > 1 else "ours"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 800
    out = Path("/tmp/easyphoto-bench") / way.partition(":")[0]
    torch.cuda.reset_peak_memory_stats()
    if way.startswith("ours"):  # ours-bare: without the pipeline's start-up work
        result = run_ours(steps, out, speedups_of(way) if ":" in way else None,
                          with_start_up=way.partition(":")[0] != "ours-bare")
    elif way.startswith("coldstart"):  # coldstart[-warm|-main][:attention=cudnn,...]
        warm = {"coldstart-warm": "thread", "coldstart-main": "main"}
        result = run_coldstart(speedups_of(way), out,
                               warm_attention=warm.get(way.partition(":")[0], ""))
    elif way.startswith("firststep"):  # firststep[:attention=cudnn,...]
        result = run_first_step(speedups_of(way))
    elif way == "fusion":
        result = run_fusion(out)
    elif way == "validation-profile":
        result = run_validation_profile(out)
    elif way.startswith("profile"):  # profile[:channels_last=1,...] [STEPS]
        result = run_profile(int(sys.argv[2]) if len(sys.argv) > 2 else 5, speedups_of(way))
    elif way == "loop":
        result = run_loop(int(sys.argv[2]) if len(sys.argv) > 2 else 300, out)
    elif way == "validation":
        result = run_validation_compare(int(sys.argv[2]) if len(sys.argv) > 2 else 200, out)
    elif way == "variants":
        result = run_variants(int(sys.argv[2]) if len(sys.argv) > 2 else 150,
                              sys.argv[3] if len(sys.argv) > 3 else "")
    else:
        from train_reference import run_reference

        result = run_reference(steps, out, DATA)
    result["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    pre = json.loads((DATA / "bench_preprocess.json").read_text())
    result["preprocess_cpu_s"] = pre["preprocess_s"]
    result.update(gpu_info())
    print("BENCH " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                 for k, v in result.items()}))


if __name__ == "__main__":
    main()
