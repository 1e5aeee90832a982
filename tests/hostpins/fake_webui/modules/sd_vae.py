"""No VAEs in this fake WebUI."""

vae_dict = {}
