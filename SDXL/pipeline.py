"""TGATE for SDXL (and LCM-SDXL): diffusers' SDXL pipelines plus TGATE's ``gate_step`` (and V2 settings)."""

from diffusers import (
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

from common.controlnet import ControlNetGuard
from common.pipeline import TgateMixin


class TgateStableDiffusionXLPipeline(TgateMixin, StableDiffusionXLPipeline):
    """``StableDiffusionXLPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE).

    After the gate the single branch is the negative one everywhere it enters the UNet: prompt embeddings,
    pooled ``text_embeds`` and ``time_ids`` (the shared guidance cut keeps the first half of every
    batch-sized input, ``added_cond_kwargs`` included).

    >>> pipe = TgateStableDiffusionXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")
    >>> image = pipe("Astronaut in a jungle, cold color palette, muted colors, detailed, 8k",
    ...              num_inference_steps=25, gate_step=10).images[0]
    """


class TgateStableDiffusionXLImg2ImgPipeline(TgateMixin, StableDiffusionXLImg2ImgPipeline):
    """``StableDiffusionXLImg2ImgPipeline`` with TGATE: ``gate_step`` counts the steps run after ``strength``
    (and ``denoising_start``/``denoising_end``)."""


class TgateStableDiffusionXLInpaintPipeline(TgateMixin, StableDiffusionXLInpaintPipeline):
    """``StableDiffusionXLInpaintPipeline`` with TGATE: ``gate_step`` counts the steps run after ``strength``."""


# ControlNet: after the gate the ControlNet, like the UNet, runs the negative branch (prompt embeddings, pooled
# text_embeds, time_ids); guess mode under guidance is refused (common/controlnet.py).


class TgateStableDiffusionXLControlNetPipeline(ControlNetGuard, TgateMixin, StableDiffusionXLControlNetPipeline):
    """``StableDiffusionXLControlNetPipeline`` with TGATE.

    >>> controlnet = ControlNetModel.from_pretrained("diffusers/controlnet-canny-sdxl-1.0")
    >>> pipe = TgateStableDiffusionXLControlNetPipeline.from_pipe(sdxl_pipe, controlnet=controlnet)
    >>> image = pipe("a bird", image=canny_edges, num_inference_steps=25, gate_step=10).images[0]
    """


class TgateStableDiffusionXLControlNetImg2ImgPipeline(
    ControlNetGuard, TgateMixin, StableDiffusionXLControlNetImg2ImgPipeline
):
    """``StableDiffusionXLControlNetImg2ImgPipeline`` with TGATE: ``gate_step`` counts the steps run after ``strength``."""


class TgateStableDiffusionXLControlNetInpaintPipeline(
    ControlNetGuard, TgateMixin, StableDiffusionXLControlNetInpaintPipeline
):
    """``StableDiffusionXLControlNetInpaintPipeline`` with TGATE: ``gate_step`` counts the steps run after ``strength``."""
