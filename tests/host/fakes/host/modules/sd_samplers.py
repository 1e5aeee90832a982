"""Sampler names: combined names before 1.9, split sampler + scheduler from 1.9."""

from collections import namedtuple

import fake_host_config as C

SamplerData = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])
_SPLIT = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "Euler a", "Euler", "DDIM", "UniPC"]
_COMBINED = ["DPM++ 2M Karras", "DPM++ 2M SDE Karras", *_SPLIT]
all_samplers = [SamplerData(n, None, [], {}) for n in (_SPLIT if C.WEBUI >= (1, 9) else _COMBINED)]
all_samplers_map = {x.name: x for x in all_samplers}


def find_sampler_config(name):
    return all_samplers_map.get(name)
