"""Sampler names as WebUI 1.10 lists them (split from schedulers since 1.9)."""


class SamplerData:
    def __init__(self, name, aliases=()):
        self.name, self.aliases = name, list(aliases)


samplers = [SamplerData("DPM++ 2M", ["k_dpmpp_2m"]), SamplerData("Euler a", ["k_euler_a"]),
            SamplerData("DDIM", ["ddim"])]
all_samplers = samplers
