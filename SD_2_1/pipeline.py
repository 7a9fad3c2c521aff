"""TGATE for Stable Diffusion 2.1: the SD-1.5 pipeline classes serve it unchanged (same pipeline family)."""

from SD_1_5.pipeline import (
    TgateStableDiffusionControlNetImg2ImgPipeline,
    TgateStableDiffusionControlNetInpaintPipeline,
    TgateStableDiffusionControlNetPipeline,
    TgateStableDiffusionImg2ImgPipeline,
    TgateStableDiffusionInpaintPipeline,
    TgateStableDiffusionPipeline,
)

__all__ = [
    "TgateStableDiffusionControlNetImg2ImgPipeline",
    "TgateStableDiffusionControlNetInpaintPipeline",
    "TgateStableDiffusionControlNetPipeline",
    "TgateStableDiffusionImg2ImgPipeline",
    "TgateStableDiffusionInpaintPipeline",
    "TgateStableDiffusionPipeline",
]
