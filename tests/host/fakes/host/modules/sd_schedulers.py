"""Schedulers exist from 1.9 (importing this module fails before, as there is none)."""

from collections import namedtuple

import fake_host_config as C

if C.WEBUI < (1, 9):
    raise ImportError("no modules.sd_schedulers before WebUI 1.9")

Scheduler = namedtuple("Scheduler", ["name", "label", "function"])
schedulers = [Scheduler("automatic", "Automatic", None), Scheduler("uniform", "Uniform", None),
              Scheduler("karras", "Karras", None), Scheduler("exponential", "Exponential", None),
              Scheduler("polyexponential", "Polyexponential", None),
              Scheduler("sgm_uniform", "SGM Uniform", None)]
schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}
