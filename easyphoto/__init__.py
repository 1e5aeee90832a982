"""EasyPhoto: a face LoRA ("digital doppelganger") from a few photos, painted into templates."""

__version__ = "0.1.0"
