"""ControlNet pipelines under TGATE: the one call TGATE cannot cut correctly, refused before it runs.

The ControlNet is a denoiser of the call like the UNet (``TgateMixin.denoisers``): after the gate it runs the
same single (negative) branch and its cross-attention is gated. That holds while the ControlNet sees the
guidance batch ``[negative, positive]``. In *guess mode* under guidance (``guess_mode=True``, or a ControlNet
whose config has ``global_pool_conditions``) diffusers runs the ControlNet on the positive half only and
feeds the negative branch zero residuals, so the guidance cut, which keeps the first half of every batch,
would hand the ControlNet half of the positive batch (or fail on an odd batch): a wrong image, not a slower
one. :class:`ControlNetGuard` refuses that call with a ``ValueError``; guess mode without guidance (one batch,
no cut to make) and every call without ``gate_step`` run as usual.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

__all__ = ["ControlNetGuard", "check_guess_mode"]


def _global_pool_conditions(controlnet: Any) -> bool:
    """Whether a ControlNet (or the first of a MultiControlNetModel, as diffusers reads it) forces guess mode."""
    nets = getattr(controlnet, "nets", None)
    config = getattr(nets[0] if nets else controlnet, "config", None)
    return bool(getattr(config, "global_pool_conditions", False))


def check_guess_mode(pipe: Any, arguments: dict[str, Any]) -> None:
    """Raise a ``ValueError`` if a TGATE call with these bound ``__call__`` arguments would run guess mode
    under classifier-free guidance."""
    controlnet = getattr(pipe, "controlnet", None)
    if controlnet is None:
        return
    guess_mode = bool(arguments.get("guess_mode", False)) or _global_pool_conditions(controlnet)
    if guess_mode and pipe.uses_guidance(arguments.get("guidance_scale", 1.0)):
        reason = "guess_mode=True" if arguments.get("guess_mode") else "the ControlNet's global_pool_conditions"
        raise ValueError(
            f"TGATE cannot gate a ControlNet call in guess mode under classifier-free guidance ({reason}, "
            f"guidance_scale={arguments.get('guidance_scale')}): diffusers then runs the ControlNet on the "
            "positive half of the batch only, so after the gate it cannot run the same single branch as the UNet. "
            "Call without gate_step (stock), without guess mode, or with guidance_scale <= 1."
        )


class ControlNetGuard:
    """Put before :class:`~common.pipeline.TgateMixin` in a ControlNet pipeline class: a TGATE call in guess
    mode under guidance raises a ``ValueError`` (see the module docstring) instead of running wrong."""

    def _tgate_call(self, stock_call: Callable, args: tuple, kwargs: dict, tgate: dict[str, Any]):
        if tgate.get("gate_step") is not None:
            bound = inspect.signature(stock_call).bind(self, *args, **kwargs)
            bound.apply_defaults()
            check_guess_mode(self, bound.arguments)
        return super()._tgate_call(stock_call, args, kwargs, tgate)
