"""Forge's ``lib_controlnet.global_state``: exact model names, refreshed on request."""

from cn_common import MODELS, refreshes


def get_all_controlnet_names():
    return list(MODELS)


def update_controlnet_filenames():
    refreshes.append("update_controlnet_filenames")
