"""Forge marker package: importable only when the fake host is Forge."""

import fake_host_config as C

if not C.FORGE:
    raise ImportError("not Forge")
