"""`TgateMixin`: adds TGATE's `gate_step` to a diffusers pipeline class, around `super().__call__()`."""

from __future__ import annotations

import inspect

import torch

from .gate import check_gate_step, gated_sampling


class TgateMixin:
    """Mix in before a diffusers text-to-image pipeline class to give its ``__call__`` a ``gate_step``.

    ``pipe(..., gate_step=None)`` is the stock pipeline; ``gate_step=g`` runs ``g`` stock steps, caches
    cross-attention at step ``g - 1`` and runs the remaining steps with the cache and without guidance.
    ``gate_step >= num_inference_steps`` gives the stock output bit for bit. The denoiser is ``unet`` or
    ``transformer``, whichever the pipeline has; everything else is the parent pipeline's own code.

    To gate an already-built stock pipeline, share its components: ``TgateX.from_pipe(stock_pipe)``.
    """

    @property
    def denoiser(self) -> torch.nn.Module:
        return self.unet if hasattr(self, "unet") else self.transformer

    @property
    def native_resolution(self) -> int:
        """The image side the pipeline makes by default: the denoiser's sample size times the VAE factor."""
        return self.denoiser.config.sample_size * self.vae_scale_factor

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Whether a call with ``guidance_scale`` runs classifier-free guidance (a doubled batch).

        The rule of diffusers' SD, SDXL and PixArt pipelines: guidance above 1, unless the denoiser takes
        the guidance scale as an embedding (LCM's ``time_cond_proj_dim``) instead of a second branch.
        """
        return guidance_scale > 1 and getattr(self.denoiser.config, "time_cond_proj_dim", None) is None

    def __call__(self, *args, gate_step: int | None = None, **kwargs):
        if gate_step is None:
            return super().__call__(*args, **kwargs)
        check_gate_step(gate_step)
        call = inspect.signature(super().__call__).bind(*args, **kwargs)
        call.apply_defaults()
        guided = self.uses_guidance(call.arguments["guidance_scale"])
        with gated_sampling(self.denoiser, self.scheduler, gate_step, guided):
            return super().__call__(*args, **kwargs)
