"""VAE list and reload (reads ``opts.sd_vae``)."""

from modules import call_queue, shared

vae_dict = {}
events = []


def refresh_vae_list():
    events.append(("refresh",))


def reload_vae_weights(sd_model=None, vae_file=None):
    events.append(("reload", shared.opts.data.get("sd_vae", "Automatic"),
                   call_queue.queue_lock.locked()))
