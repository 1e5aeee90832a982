"""Inference: template → two-stage portrait → multi-person group → batch."""
