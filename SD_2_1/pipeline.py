"""TGATE for Stable Diffusion 2.1: the SD-1.5 pipeline class serves it unchanged (same pipeline family)."""

from SD_1_5.pipeline import TgateStableDiffusionPipeline

__all__ = ["TgateStableDiffusionPipeline"]
