"""The tiny DiT components (common/tiny_dit.py) run each stock diffusers pipeline end to end on the CPU, fast."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from diffusers import HunyuanDiTPipeline, LTXPipeline, SanaPipeline, WanImageToVideoPipeline, WanPipeline
from PIL import Image

from common import tiny_dit
from common.models import get_model

CASES = {
    "wan": (WanPipeline, tiny_dit.tiny_wan_components,
            dict(prompt="a cat", negative_prompt="blurry", height=16, width=16, num_frames=5), (1, 5, 16, 16, 3)),
    "wan22": (WanPipeline, tiny_dit.tiny_wan22_components,
              dict(prompt="a cat", height=16, width=16, num_frames=5), (1, 5, 16, 16, 3)),
    "wan-i2v": (WanImageToVideoPipeline, tiny_dit.tiny_wan_i2v_components,
                dict(image=Image.new("RGB", (16, 16), "red"), prompt="a cat", height=16, width=16, num_frames=5),
                (1, 5, 16, 16, 3)),
    "ltx": (LTXPipeline, tiny_dit.tiny_ltx_components,
            dict(prompt="a cat", height=32, width=32, num_frames=5), (1, 5, 32, 32, 3)),
    "sana": (SanaPipeline, tiny_dit.tiny_sana_components,
             dict(prompt="a cat", height=32, width=32, use_resolution_binning=False), (1, 32, 32, 3)),
    "hunyuandit": (HunyuanDiTPipeline, tiny_dit.tiny_hunyuandit_components,
                   dict(prompt="a cat", height=32, width=32, use_resolution_binning=False), (1, 32, 32, 3)),
}


def count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("key", list(CASES))
def test_tiny_pipeline_runs_stock_fast(key):
    pipeline_class, components, call, shape = CASES[key]
    start = time.perf_counter()
    pipe = pipeline_class(**components())
    pipe.set_progress_bar_config(disable=True)
    calls = count_calls(pipe.transformer)
    out = pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np", **call)
    seconds = time.perf_counter() - start
    result = out.frames if hasattr(out, "frames") else out.images
    assert np.asarray(result).shape == shape and np.isfinite(result).all()
    assert seconds < 10, f"{key}: {seconds:.1f} s (meant to be about a second)"
    assert calls[0] >= 1
    # the registry entry builds the same components
    assert type(get_model(key).tiny_components()["transformer"]) is type(pipe.transformer)


def test_wan22_runs_both_experts_at_their_boundary():
    pipe = WanPipeline(**tiny_dit.tiny_wan22_components())
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.boundary_ratio == 0.875
    high, low = count_calls(pipe.transformer), count_calls(pipe.transformer_2)
    pipe("a cat", height=16, width=16, num_frames=5, num_inference_steps=4, guidance_scale=4.0, guidance_scale_2=3.0,
         generator=torch.Generator().manual_seed(0), output_type="latent")
    timesteps = pipe.scheduler.timesteps
    expected_high = int((timesteps >= 0.875 * 1000).sum())
    assert 0 < expected_high < 4
    assert high[0] == 2 * expected_high and low[0] == 2 * (4 - expected_high)  # two calls per guided step


def test_wan_i2v_image_tokens_enter_cross_attention():
    components = tiny_dit.tiny_wan_i2v_components()
    pipe = WanImageToVideoPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    image_keys = count_calls(pipe.transformer.blocks[0].attn2.add_k_proj)
    pipe(image=Image.new("RGB", (16, 16)), prompt="a cat", height=16, width=16, num_frames=5, num_inference_steps=1,
         output_type="latent")
    assert image_keys[0] == 2  # the cond and uncond calls of the single step


def test_offline_tokenizers_encode_text():
    gemma, bert = tiny_dit.tiny_gemma_tokenizer(), tiny_dit.tiny_bert_tokenizer()
    for tokenizer in (gemma, bert):
        ids = tokenizer("A cat, 2 dogs!").input_ids
        assert tokenizer.unk_token_id not in ids and len(ids) >= len("acat,2dogs!")  # a token per character
