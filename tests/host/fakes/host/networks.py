"""The built-in Lora extension's ``networks`` module (found through sys.modules)."""

import os

from modules import shared

available_networks = {}
refreshes = []


def list_available_networks():
    available_networks.clear()
    folder = shared.cmd_opts.lora_dir
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        available_networks[os.path.splitext(name)[0]] = os.path.join(folder, name)
    refreshes.append(sorted(available_networks))
