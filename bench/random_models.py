"""Full-size SD1.5 / SDXL architectures with random weights, for GPU benchmarks only.

Built from the configs EasyPhoto ships (``models/configs/<family>``), directly on the device,
so a benchmark measures real-size compute without any weight download. The tokenizer is the
tiny preset's byte-level one (its ids fit CLIP's 49408-row embedding); images are noise.
"""

from __future__ import annotations

import torch

from easyphoto.train.components import TrainComponents
from easyphoto.train.single_file import CONFIGS_DIR


def random_components(family: str = "sd15", device: str = "cuda", dtype=torch.float16,
                      with_canny: bool = True, seed: int = 0) -> TrainComponents:
    """TrainComponents of ``family`` with random weights, frozen, on ``device`` in ``dtype``."""
    from diffusers import AutoencoderKL, ControlNetModel, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from easyphoto.train.tiny import build_tiny_tokenizer

    folder = CONFIGS_DIR / family
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(folder / "text_encoder_2")))
        canny = ControlNetModel.from_unet(unet) if with_canny else None
    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(folder / "scheduler"))
    vae_dtype = torch.float32 if family == "sdxl" else dtype

    def frozen(module, kind=dtype):
        return module.requires_grad_(False).to(device=device, dtype=kind).eval()

    return TrainComponents(
        family=family, unet=frozen(unet), vae=frozen(vae, vae_dtype),
        text_encoders=[frozen(te) for te in encoders],
        tokenizers=[build_tiny_tokenizer() for _ in encoders], noise_scheduler=scheduler,
        device=torch.device(device), dtype=dtype, base_id="random-" + family,
        canny_controlnet=frozen(canny) if canny is not None else None)
