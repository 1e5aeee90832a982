"""Diffusion engines behind one protocol (diffusers standalone, the WebUI host)."""
