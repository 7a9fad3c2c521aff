"""TGATE on the two latent consistency models of the paper: LCM-SDXL and PixArt-LCM.

LCM samples without a guidance branch (LCM-SDXL takes the guidance scale as an embedding,
``time_cond_proj_dim``; PixArt-LCM runs at guidance 0), so TGATE only caches cross-attention: at the gate
each cross-attention module keeps its own output and returns it for the remaining steps.

- LCM-SDXL: the ``latent-consistency/lcm-sdxl`` UNet in SDXL base, ``LCMScheduler``, 4 steps, gate 1.
- PixArt-LCM: the ``PixArt-alpha/PixArt-LCM-XL-2-1024-MS`` pipeline (its own ``LCMScheduler``), 4 steps, gate 1.

>>> pipe = load_lcm("sdxl")  # or "pixart"; the paper's settings are in get_model(LCM_MODELS[base])
>>> image = pipe("Self-portrait oil painting, a beautiful cyborg with golden hair, 8k",
...              num_inference_steps=4, gate_step=1).images[0]
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from common.models import ModelSpec, get_model
from PixArt_alpha.pipeline import TgatePixArtAlphaPipeline
from SDXL.pipeline import TgateStableDiffusionXLPipeline

# --base choice -> registry key
LCM_MODELS = {"sdxl": "lcm_sdxl", "pixart": "lcm_pixart"}

__all__ = ["LCM_MODELS", "TgatePixArtAlphaPipeline", "TgateStableDiffusionXLPipeline", "load_lcm", "load_lcm_sdxl"]


def load_lcm(base: str = "sdxl", source: str | None = None, torch_dtype: torch.dtype | None = None):
    """The TGATE pipeline of LCM-``base`` (``sdxl`` or ``pixart``) with its real weights and LCMScheduler."""
    if base not in LCM_MODELS:
        raise ValueError(f"unknown LCM base {base!r}; choose one of: {', '.join(LCM_MODELS)}")
    return get_model(LCM_MODELS[base]).load(source, torch_dtype=torch_dtype)


def load_lcm_sdxl(spec: ModelSpec, source: str, torch_dtype: torch.dtype | None) -> TgateStableDiffusionXLPipeline:
    """The registry loader of ``lcm_sdxl``: the LCM UNet from ``source`` inside SDXL base.

    ``source`` is the UNet (hub id or folder, e.g. ``latent-consistency/lcm-sdxl``) or a full SDXL pipeline
    folder whose ``unet`` is the LCM one. The scheduler is installed by the registry (``LCMScheduler``).
    """
    if (Path(source) / "model_index.json").is_file():
        return TgateStableDiffusionXLPipeline.from_pretrained(source, dtype=torch_dtype)
    unet = UNet2DConditionModel.from_pretrained(source, dtype=torch_dtype)
    base = get_model("sdxl").checkpoint
    try:
        return TgateStableDiffusionXLPipeline.from_pretrained(base, unet=unet, dtype=torch_dtype)
    except (OSError, ValueError) as error:
        raise OSError(f"SDXL base '{base}' (text encoders, VAE) for the LCM UNet: {error}") from error
