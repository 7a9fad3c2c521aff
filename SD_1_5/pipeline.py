"""TGATE for Stable Diffusion 1.x and 2.x: diffusers' SD pipelines plus TGATE's ``gate_step`` (and V2 settings)."""

from diffusers import (
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from common.controlnet import ControlNetGuard
from common.pipeline import TgateMixin


class TgateStableDiffusionPipeline(TgateMixin, StableDiffusionPipeline):
    """``StableDiffusionPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE).

    >>> pipe = TgateStableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    >>> image = pipe("A coral reef bustling with diverse marine life.", num_inference_steps=25, gate_step=10).images[0]
    """


class TgateStableDiffusionImg2ImgPipeline(TgateMixin, StableDiffusionImg2ImgPipeline):
    """``StableDiffusionImg2ImgPipeline`` with TGATE: ``gate_step`` counts the steps run after ``strength``.

    >>> pipe = TgateStableDiffusionImg2ImgPipeline.from_pipe(text_to_image_pipe)
    >>> image = pipe("A coral reef, oil painting", image=init_image, strength=0.6, gate_step=6).images[0]
    """


class TgateStableDiffusionInpaintPipeline(TgateMixin, StableDiffusionInpaintPipeline):
    """``StableDiffusionInpaintPipeline`` with TGATE: ``gate_step`` counts the steps run after ``strength``.

    >>> pipe = TgateStableDiffusionInpaintPipeline.from_pipe(text_to_image_pipe)
    >>> image = pipe("A coral reef", image=init_image, mask_image=mask, gate_step=10).images[0]
    """


# ControlNet: the ControlNet runs the same single branch as the UNet after the gate and its cross-attention is
# gated too; guess mode under guidance is refused (common/controlnet.py).


class TgateStableDiffusionControlNetPipeline(ControlNetGuard, TgateMixin, StableDiffusionControlNetPipeline):
    """``StableDiffusionControlNetPipeline`` with TGATE (also a MultiControlNetModel).

    >>> controlnet = ControlNetModel.from_pretrained("lllyasviel/sd-controlnet-canny")
    >>> pipe = TgateStableDiffusionControlNetPipeline.from_pipe(text_to_image_pipe, controlnet=controlnet)
    >>> image = pipe("a bird", image=canny_edges, num_inference_steps=25, gate_step=10).images[0]
    """


class TgateStableDiffusionControlNetImg2ImgPipeline(
    ControlNetGuard, TgateMixin, StableDiffusionControlNetImg2ImgPipeline
):
    """``StableDiffusionControlNetImg2ImgPipeline`` with TGATE: ``gate_step`` counts the steps run after ``strength``.

    >>> image = pipe("a bird", image=init_image, control_image=canny_edges, strength=0.8, gate_step=8).images[0]
    """


class TgateStableDiffusionControlNetInpaintPipeline(
    ControlNetGuard, TgateMixin, StableDiffusionControlNetInpaintPipeline
):
    """``StableDiffusionControlNetInpaintPipeline`` with TGATE: ``gate_step`` counts the steps run after ``strength``.

    >>> image = pipe("a bird", image=init_image, mask_image=mask, control_image=control, gate_step=10).images[0]
    """
