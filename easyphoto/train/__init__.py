"""Training: photo check → preprocess → LoRA → validation → fusion."""
