"""Random peft LoRA adapters on tiny models, shared by the training and inference tests."""

from __future__ import annotations

import torch

from easyphoto.train.lora_io import lora_target_modules


def add_random_lora(models, family: str = "sd15", seed: int = 1, scale: float = 0.3,
                    rank: int = 4, alpha: float = 2.0) -> list[dict]:
    """Wrap ``models`` (UNet first, then the text encoder(s)) with peft LoRA adapters whose A and
    B are ``scale × N(0, 1)`` (seeded); returns their peft state dicts in the same order."""
    from peft import LoraConfig, get_peft_model_state_dict

    targets = lora_target_modules(family)
    generator = torch.Generator().manual_seed(seed)
    states = []
    for index, model in enumerate(models):
        names = targets.unet if index == 0 else targets.text_encoder
        model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(names)))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_" in name:
                    param.copy_(scale * torch.randn(param.shape, generator=generator))
        states.append({k: v.clone() for k, v in get_peft_model_state_dict(model).items()})
    return states
