"""TGATE for PixArt-Alpha (and PixArt-LCM): diffusers' PixArtAlphaPipeline plus ``gate_step``."""

from diffusers import PixArtAlphaPipeline

from common.pipeline import TgateMixin


class TgatePixArtAlphaPipeline(TgateMixin, PixArtAlphaPipeline):
    """``PixArtAlphaPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE).

    PixArtAlphaPipeline has no ``callback_on_step_end`` and decides guidance once, in a local variable; the
    shared guidance cut works at the transformer instead, on every batch-sized input (latents, timestep,
    text attention mask, resolution and aspect-ratio conditions), and the learned-sigma output keeps both
    of its channel halves.

    >>> pipe = TgatePixArtAlphaPipeline.from_pretrained("PixArt-alpha/PixArt-XL-2-1024-MS")
    >>> image = pipe("An alpaca made of colorful building blocks, cyberpunk.",
    ...              num_inference_steps=25, gate_step=8).images[0]
    """
