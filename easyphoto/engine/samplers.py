"""WebUI sampler names → diffusers schedulers (``easyphoto.params.SAMPLERS``).

Each name maps to a scheduler class and the settings that make it the WebUI's sampler:

=====================  =========================================================================
WebUI name             diffusers scheduler
=====================  =========================================================================
DPM++ 2M SDE Karras    ``DPMSolverMultistepScheduler`` ``algorithm_type="sde-dpmsolver++"``,
                       order 2, Karras sigmas. The SDE noise comes from the call's generator
                       (independent Gaussian per step; the WebUI draws it from a Brownian tree,
                       so images differ from the WebUI's even at equal seeds).
DPM++ 2M Karras        ``DPMSolverMultistepScheduler`` ``algorithm_type="dpmsolver++"``, order 2,
                       Karras sigmas.
Euler a                ``EulerAncestralDiscreteScheduler``, ``timestep_spacing="linspace"`` (the
                       k-diffusion discretisation the WebUI uses: t = 999 … 0 evenly).
Euler                  ``EulerDiscreteScheduler``, ``timestep_spacing="linspace"``.
DDIM                   ``DDIMScheduler`` (η = 0), the base model's spacing.
UniPC                  ``UniPCMultistepScheduler`` (bh2, order 2).
=====================  =========================================================================

A :class:`SamplerBank` builds each scheduler once from the base model's scheduler config (its
noise schedule: β range, prediction type, …) and hands out the same instance on every call;
diffusers schedulers reset their per-run state in ``set_timesteps``, which every pipeline call
runs first, so re-use never carries state from one call into the next.

img2img / inpaint strength: diffusers runs ``int(steps × strength)`` of a ``steps``-step
schedule (the last ones), like the WebUI (SPEC 2.6: 50 steps at 0.45 → 22 denoising steps).
"""

from __future__ import annotations

import logging
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import InvalidRequest

logger = logging.getLogger(__name__)

#: WebUI sampler name → (diffusers scheduler class name, config overrides); the keys are
#: ``easyphoto.params.SAMPLERS`` in order (checked by the tests).
SCHEDULERS: Mapping[str, tuple[str, Mapping[str, Any]]] = MappingProxyType({
    "DPM++ 2M SDE Karras": ("DPMSolverMultistepScheduler", MappingProxyType(
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True})),
    "DPM++ 2M Karras": ("DPMSolverMultistepScheduler", MappingProxyType(
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True})),
    "Euler a": ("EulerAncestralDiscreteScheduler",
                MappingProxyType({"timestep_spacing": "linspace"})),
    "Euler": ("EulerDiscreteScheduler", MappingProxyType({"timestep_spacing": "linspace"})),
    "DDIM": ("DDIMScheduler", MappingProxyType({})),
    "UniPC": ("UniPCMultistepScheduler", MappingProxyType({"solver_order": 2})),
})

def check_sampler(name: str) -> str:
    """``name`` if it is a known WebUI sampler name, else :class:`InvalidRequest`."""
    if name not in SCHEDULERS:
        raise InvalidRequest(f"Unknown sampler {name!r}; choose one of: "
                             + ", ".join(repr(known) for known in SCHEDULERS) + ".")
    return name


def denoising_steps(steps: int, strength: float) -> int:
    """Denoising steps diffusers runs for ``steps`` at ``strength`` (0 < strength ≤ 1):
    ``int(steps × strength)`` (e.g. 50 × 0.45 → 22)."""
    return min(int(steps * strength), steps)


def schedule_length(steps: int, strength: float) -> int:
    """The ``num_inference_steps`` to request so at least one step runs: ``steps`` itself,
    or, when ``int(steps × strength)`` is 0, the smallest longer schedule whose last
    ``strength`` fraction holds one step (so a low strength still denoises at its noise level)."""
    if strength <= 0:
        raise InvalidRequest("denoising strength must be > 0 to run the sampler.")
    length = max(int(steps), 1)
    while denoising_steps(length, strength) < 1:
        length += 1
    if length != steps:
        logger.info("%d steps at strength %.3g would run no step; using a %d-step schedule "
                    "(1 denoising step)", steps, strength, length)
    return length


class SamplerBank:
    """One scheduler instance per WebUI sampler name, all built from one base config.

    ``base_config``: the base model's scheduler config (a ``FrozenDict`` / mapping, e.g.
    ``DDPMScheduler.config``). Instances are created on first use and re-used.
    """

    def __init__(self, base_config: Mapping[str, Any]) -> None:
        self._base_config = dict(base_config)
        self._made: dict[str, Any] = {}

    def get(self, name: str):
        """The scheduler for sampler ``name`` (:class:`InvalidRequest` if unknown)."""
        check_sampler(name)
        if name not in self._made:
            import diffusers

            class_name, overrides = SCHEDULERS[name]
            scheduler_cls = getattr(diffusers, class_name)
            self._made[name] = scheduler_cls.from_config(self._base_config, **dict(overrides))
            logger.debug("sampler %r: %s %s", name, class_name, dict(overrides))
        return self._made[name]
