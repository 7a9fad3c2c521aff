"""TGATE for PixArt-Sigma: diffusers' PixArtSigmaPipeline plus ``gate_step``."""

from diffusers import PixArtSigmaPipeline

from common.pipeline import TgateMixin


class TgatePixArtSigmaPipeline(TgateMixin, PixArtSigmaPipeline):
    """``PixArtSigmaPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE).

    The PixArt-Alpha path as is: PixArtSigmaPipeline, like PixArtAlphaPipeline, has no
    ``callback_on_step_end`` and decides guidance once, so the guidance cut works at the transformer (latents,
    timestep, the 300-token text attention mask). Sigma's transformer takes no resolution or aspect-ratio
    conditions; its VAE is SDXL's.

    >>> pipe = TgatePixArtSigmaPipeline.from_pretrained("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS")
    >>> image = pipe("an astronaut sitting in a diner, eating fries, cinematic, analog film.",
    ...              num_inference_steps=25, gate_step=15).images[0]
    """
