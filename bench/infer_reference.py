"""The reference's diffusion call sequence, re-enacted on stock diffusers (benchmark baseline).

Implements the DiffusionEngine protocol like ``DiffusersEngine`` but the way the reference
extension drives generation: a separate fp16 ControlNet-inpaint pipeline object per stage
(per ControlNet set), each loaded from disk with its own copy of the base weights, and the user
LoRA loaded and merged into the weights before every call, unmerged and unloaded after it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from easyphoto.engine.base import Generation
from easyphoto.engine.diffusers_engine import blur_mask, composite


class ReferenceWayEngine:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.pipes: dict = {}
        self.timings: dict = {}

    def _pipe(self, kinds: tuple):
        """One pipeline object per ControlNet set (per stage), loaded from disk on first use."""
        from diffusers import (ControlNetModel, DPMSolverMultistepScheduler,
                               StableDiffusionControlNetInpaintPipeline)

        if kinds not in self.pipes:
            nets = [ControlNetModel.from_pretrained(self.folder / f"controlnet-{k}",
                                                    torch_dtype=torch.float16) for k in kinds]
            pipe = StableDiffusionControlNetInpaintPipeline.from_pretrained(
                self.folder, controlnet=nets, torch_dtype=torch.float16, safety_checker=None)
            pipe.scheduler = DPMSolverMultistepScheduler.from_config(
                pipe.scheduler.config, algorithm_type="sde-dpmsolver++", use_karras_sigmas=True)
            self.pipes[kinds] = pipe.to("cuda")
        return self.pipes[kinds]

    def inpaint(self, image: np.ndarray, mask: np.ndarray, strength: float,
                generation: Generation, mask_blur: int = 8) -> np.ndarray:
        units = [u for u in generation.controls if u.weight > 0]
        pipe = self._pipe(tuple(u.kind for u in units))
        for lora in generation.loras:  # merged per call, as the reference does
            pipe.load_lora_weights(lora.path)
            pipe.fuse_lora(lora_scale=lora.weight)
        soft = blur_mask(mask, mask_blur)
        height, width = image.shape[:2]
        result = pipe(generation.prompt, negative_prompt=generation.negative_prompt,
                      image=Image.fromarray(image), mask_image=Image.fromarray(soft),
                      control_image=[Image.fromarray(u.image) for u in units],
                      controlnet_conditioning_scale=[u.weight for u in units],
                      strength=strength, num_inference_steps=generation.steps,
                      guidance_scale=generation.cfg, width=width, height=height,
                      generator=torch.Generator("cuda").manual_seed(generation.seed),
                      output_type="np").images[0]
        if generation.loras:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()
        return composite((result * 255).round().astype(np.uint8), image, soft)

    def txt2img(self, size, generation, family="sdxl"):
        raise NotImplementedError("not part of this benchmark")

    def available_controls(self, family: str = "sd15"):
        return ("canny", "openpose", "color", "tile")

    def unload(self) -> None:
        self.pipes.clear()
        torch.cuda.empty_cache()
