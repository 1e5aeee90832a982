"""Checkpoint list, selection, fuzzy match, load / unload per version (Forge main: no-ops)."""

import hashlib
import os

import fake_host_config as C

from modules import call_queue, shared

checkpoints_list = {}
checkpoint_aliases = {}
events = []


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        self.name = os.path.basename(filename)
        self.model_name = os.path.splitext(self.name)[0]
        self.hash = hashlib.sha256(self.name.encode()).hexdigest()[:8]
        self.title = f"{self.name} [{self.hash}]"

    def register(self):
        checkpoints_list[self.title] = self
        for alias in (self.title, self.name, self.model_name, self.filename):
            checkpoint_aliases[alias] = self
        return self


class FakeModel:
    def __init__(self, info):
        self.sd_checkpoint_info, self.sd_model_checkpoint, self.device = info, info.filename, "cuda"


class SdModelData:
    def __init__(self):
        self.sd_model = None


model_data = SdModelData()


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    if search_string in checkpoint_aliases:
        return checkpoint_aliases[search_string]
    found = sorted((i for i in checkpoints_list.values() if search_string in i.title),
                   key=lambda i: len(i.title))
    return found[0] if found else None


def select_checkpoint():
    info = checkpoint_aliases.get(shared.opts.sd_model_checkpoint)
    if info is not None:
        return info
    if not checkpoints_list:
        raise FileNotFoundError("No checkpoints found.")
    return next(iter(checkpoints_list.values()))


def send_model_to_cpu(m):
    if not C.FORGE:
        m.device = "cpu"
        events.append(("to_cpu", m.sd_checkpoint_info.title))


def send_model_to_device(m):
    if not C.FORGE:
        m.device = "cuda"
        events.append(("to_device", m.sd_checkpoint_info.title))


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    events.append(("reload", call_queue.queue_lock.locked()))
    if C.FORGE:
        return None
    info = info or select_checkpoint()
    model = sd_model or model_data.sd_model
    if model is not None and model.sd_model_checkpoint == info.filename:
        return model  # same checkpoint: returns early, even when it sits on the CPU
    model_data.sd_model = FakeModel(info)
    return model_data.sd_model


def unload_model_weights(sd_model=None, info=None):
    events.append(("unload",))
    if C.FORGE:
        events.append(("unload_all_models",))
    elif C.WEBUI < (1, 7):
        model_data.sd_model = None
    else:
        send_model_to_cpu(sd_model or model_data.sd_model)
    return sd_model
