"""Forge main's checkpoint / module switching (``opts.set`` with callbacks; Forge has none)."""

import os

from modules import call_queue, sd_models, shared

events = []
module_list = {}


def checkpoint_change(ckpt_name, save=True, refresh=True):
    events.append(("checkpoint_change", ckpt_name, save, call_queue.queue_lock.locked()))
    new = sd_models.get_closet_checkpoint_match(ckpt_name)
    if new == sd_models.get_closet_checkpoint_match(shared.opts.data.get("sd_model_checkpoint")):
        return False
    shared.opts.set("sd_model_checkpoint", ckpt_name)
    return True


def modules_change(module_values, save=True, refresh=True):
    events.append(("modules_change", list(module_values), save))
    modules = [module_list[os.path.basename(v)] for v in module_values
               if os.path.basename(v) in module_list]
    if sorted(modules) == sorted(shared.opts.data.get("forge_additional_modules", [])):
        return False
    shared.opts.set("forge_additional_modules", modules)
    return True
