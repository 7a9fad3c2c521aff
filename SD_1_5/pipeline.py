"""TGATE for Stable Diffusion 1.x and 2.x: diffusers' StableDiffusionPipeline plus ``gate_step``."""

from diffusers import StableDiffusionPipeline

from common.pipeline import TgateMixin


class TgateStableDiffusionPipeline(TgateMixin, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE).

    >>> pipe = TgateStableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    >>> image = pipe("A coral reef bustling with diverse marine life.", num_inference_steps=25, gate_step=10).images[0]
    """
