"""``opts``, ``cmd_opts``, ``state`` and ``OptionInfo`` as extensions see them."""

import argparse

import fake_host_config as C

from modules import call_queue, options
from modules.options import OptionInfo


class State:
    def __init__(self):
        self.interrupted, self.job, self.job_count, self.job_no, self.textinfo = False, "", 0, 0, None
        self.events = []

    def begin(self, job="(unknown)"):
        self.events.append(("begin", job, call_queue.queue_lock.locked()))
        self.interrupted, self.job, self.job_count, self.job_no = False, job, 0, 0

    def end(self):
        self.events.append(("end", self.job))
        self.job = ""

    def interrupt(self):
        self.interrupted = True


def _reload_model():
    from modules import sd_models

    sd_models.reload_model_weights()


def _reload_vae():
    from modules import sd_vae

    sd_vae.reload_vae_weights()


state = State()
unit_key = "control_net_unit_count" if C.CONTROLNET_UNIT_KEY_NEW else "control_net_max_models_num"
opts = options.Options({
    "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint"),
    "sd_vae": OptionInfo("Automatic", "SD VAE"),
    "forge_additional_modules": OptionInfo([], "VAE / Text Encoder"),
    unit_key: OptionInfo(3, "ControlNet units"),
    "control_net_model_cache_size": OptionInfo(2, "Model cache size"),
})
if not C.FORGE:  # A1111: both handlers take queue_lock (Forge main manages these itself)
    opts.onchange("sd_model_checkpoint", call_queue.wrap_queued_call(_reload_model), call=False)
    opts.onchange("sd_vae", call_queue.wrap_queued_call(_reload_vae), call=False)
opts.data.update(C.OPTS)
cmd_opts = argparse.Namespace(**C.CMD_OPTS)
