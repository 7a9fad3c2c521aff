"""TGATE for Wan 2.1 / 2.2: diffusers' WanPipeline and WanImageToVideoPipeline plus ``gate_step``.

Wan's text (UMT5, padded to 512 tokens) enters every block through ``blocks[i].attn2`` (I2V: also the CLIP image
tokens, through ``add_k_proj`` / ``add_v_proj``). Its pipelines guide with two transformer calls per step (the
prompt in ``cache_context("cond")``, the negative prompt in ``cache_context("uncond")``), not one batched call;
Wan 2.2 runs ``transformer`` above ``boundary_ratio * 1000`` and ``transformer_2`` below, each with its guidance
scale. TGATE on two-call guidance is the gate's (common/gate.py).

>>> pipe = load_wan("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", torch.bfloat16).to("cuda")
>>> video = pipe("A cat and a dog baking a cake together in a kitchen.", height=480, width=832, num_frames=81,
...              guidance_scale=5.0, gate_step=20).frames[0]
>>> export_to_video(video, "wan_tgate.mp4", fps=16)
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, WanImageToVideoPipeline, WanPipeline

from common.pipeline import TgateMixin


class TgateWanPipeline(TgateMixin, WanPipeline):
    """``WanPipeline`` (Wan 2.1 and 2.2 text-to-video) whose ``__call__`` also takes ``gate_step`` (TGATE)."""


class TgateWanImageToVideoPipeline(TgateMixin, WanImageToVideoPipeline):
    """``WanImageToVideoPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE)."""


def load_wan(spec_or_source, source: str | None = None, torch_dtype: torch.dtype | None = None):
    """A registry Wan model's TGATE pipeline from ``source`` with its VAE in float32, as the model cards load it
    (the VAE's decode is sensitive to bfloat16). ``load_wan(spec, source, dtype)`` is the registry's loader;
    ``load_wan(source, dtype)`` loads a text-to-video checkpoint."""
    if isinstance(spec_or_source, str):
        pipeline_class, source, torch_dtype = TgateWanPipeline, spec_or_source, source
    else:
        pipeline_class = spec_or_source.pipeline_class
    vae = AutoencoderKLWan.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
    return pipeline_class.from_pretrained(source, vae=vae, torch_dtype=torch_dtype)
