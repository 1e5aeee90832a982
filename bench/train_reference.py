"""A stock-diffusers re-enactment of the reference implementation's training, as the baseline.

What the reference does, re-enacted with the same random full-size SD1.5 models and dataset:
fp16 weights with fp16 autocast and fp32 LoRA parameters; batch 1 × gradient accumulation 4
(four separate forward/backward passes per step); every micro-step reads its image from disk,
flips/crops it and encodes it with the VAE (no latent cache); the text encoder runs every
micro-step; plain (non-fused) AdamW; every 100 steps a checkpoint is saved and validation
**rebuilds the ControlNet inpaint pipeline from disk**, merges the LoRA, renders the 4 templates
one at a time, unmerges and frees the pipeline.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from easyphoto.params import CAPTION


def _sync() -> float:
    torch.cuda.synchronize()
    return time.perf_counter()


def _save_base(components, folder: Path) -> None:
    """Write the random models once as diffusers folders (setup, not timed)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionControlNetInpaintPipeline

    scheduler = DPMSolverMultistepScheduler(use_karras_sigmas=True)
    pipe = StableDiffusionControlNetInpaintPipeline(
        vae=components.vae, text_encoder=components.text_encoders[0],
        tokenizer=components.tokenizers[0], unet=components.unet,
        controlnet=components.canny_controlnet, scheduler=scheduler, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)


def _micro_batch(paths, resolution: int, device) -> torch.Tensor:
    image = Image.open(random.choice(paths)).convert("RGB")
    if random.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    width, height = image.size
    left, top = random.randint(0, width - resolution), random.randint(0, height - resolution)
    image = image.crop((left, top, left + resolution, top + resolution))
    array = torch.from_numpy(np.asarray(image, np.float32) / 127.5 - 1.0)
    return array.permute(2, 0, 1)[None].to(device, torch.float16)


def _validate(base: Path, lora_path: Path, templates, out: Path, step: int) -> None:
    """Rebuild the pipeline from disk, merge the LoRA, render 4 templates one by one."""
    from diffusers import StableDiffusionControlNetInpaintPipeline

    pipe = StableDiffusionControlNetInpaintPipeline.from_pretrained(
        base, torch_dtype=torch.float16, safety_checker=None).to("cuda")
    pipe.load_lora_weights(str(lora_path))
    pipe.fuse_lora()
    for index, (image, mask, control) in enumerate(templates):
        result = pipe(CAPTION, image=image, mask_image=mask, control_image=control,
                      strength=0.65, num_inference_steps=20, guidance_scale=9.0,
                      generator=torch.Generator("cuda").manual_seed(index)).images[0]
        result.save(out / f"step{step}_{index}.jpg")
    pipe.unfuse_lora()
    del pipe
    torch.cuda.empty_cache()


def _templates(data: Path):
    import cv2

    templates = []
    for path in sorted((data / "dataset").glob("*.png"))[:4]:
        image = Image.open(path).convert("RGB").resize((512, 512))
        mask = Image.new("L", (512, 512), 0)
        mask.paste(255, (160, 128, 352, 384))
        control = Image.fromarray(cv2.Canny(np.asarray(image), 100, 200)).convert("RGB")
        templates.append((image, mask, control))
    return templates


def _lora(components, rank: int = 128, alpha: int = 64):
    from peft import LoraConfig

    from easyphoto.train.lora_io import lora_target_modules

    targets = lora_target_modules("sd15")
    components.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                           target_modules=list(targets.unet)))
    components.text_encoders[0].add_adapter(LoraConfig(
        r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
        target_modules=list(targets.text_encoder)))
    params = [p for m in (components.unet, components.text_encoders[0])
              for p in m.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def _save_lora(components, path: Path) -> None:
    from peft import get_peft_model_state_dict

    from easyphoto.train.lora_io import save_kohya_lora

    unet = {k: v.half() for k, v in get_peft_model_state_dict(components.unet).items()}
    te = {k: v.half() for k, v in get_peft_model_state_dict(components.text_encoders[0]).items()}
    save_kohya_lora(path, unet, [te], 128, 64)


def run_reference(steps: int, out: Path, data: Path) -> dict:
    from random_models import random_components

    out.mkdir(parents=True, exist_ok=True)
    components = random_components("sd15", dtype=torch.float16)
    _save_base(components, out / "base")
    params = _lora(components)
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim]}], lr=1e-4, betas=(0.9, 0.999),
        weight_decay=1e-2, eps=1e-8)
    scaler = torch.amp.GradScaler("cuda")
    unet, vae, te = components.unet, components.vae, components.text_encoders[0]
    scheduler, tokenizer = components.noise_scheduler, components.tokenizers[0]
    paths, templates = sorted((data / "dataset").glob("*.png")), _templates(data)
    ids = tokenizer(CAPTION, padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids.cuda()
    random.seed(0)
    times = {"train": 0.0, "checkpoints": 0.0, "validation": 0.0}
    for step in range(1, steps + 1):
        started = _sync()
        for _ in range(4):
            pixels = _micro_batch(paths, 512, "cuda")
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), device="cuda")
            with torch.autocast("cuda", dtype=torch.float16):
                hidden = te(ids)[0]
                pred = unet(scheduler.add_noise(latents, noise, t), t, hidden).sample
                loss = torch.nn.functional.mse_loss(pred.float(), noise.float()) / 4
            scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        times["train"] += _sync() - started
        if step % 100 == 0 or step == steps:
            started = _sync()
            path = out / f"checkpoint-{step}.safetensors"
            _save_lora(components, path)
            times["checkpoints"] += _sync() - started
            started = _sync()
            _validate(out / "base", path, templates, out, step)
            times["validation"] += _sync() - started
    total = sum(times.values())
    return {"way": "reference", "steps": steps, **times, "total_excl_load_and_preprocess": total,
            "steps_per_s": steps / times["train"]}
