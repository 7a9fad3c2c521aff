"""Bugs found by running diffusers' own fast suites on the TGATE classes with the gate on
(``tests/diffusers_suites/run.py``): a Wan 2.2 pipeline whose ``transformer`` is None (its low-noise expert
alone, optional in diffusers at ``boundary_ratio=1.0``), and Sana-Sprint, whose guidance is an embedding
(``guidance_embeds``), not a second branch; and diffusers' FirstBlockCache on LTX-Video, which guides in one batch:
after the gate it adds a residual kept from the guided batch to the one branch."""

import pytest
import torch
from diffusers import FirstBlockCacheConfig, SanaSprintPipeline, SanaTransformer2DModel, SCMScheduler, WanPipeline

from common.any_pipeline import tgate_class
from common.models import get_model
from common.tiny_dit import tiny_sana_components, tiny_wan22_components
from Wan.pipeline import TgateWanPipeline


def count_calls(module):
    calls = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_wan22_with_the_low_noise_expert_alone_gates_it():
    components = tiny_wan22_components()
    components.update(transformer=None, boundary_ratio=1.0)  # every step on transformer_2
    settings = dict(prompt="a cat", negative_prompt="blur", height=16, width=16, num_frames=5, num_inference_steps=3,
                    guidance_scale=5.0, output_type="pt")

    def run(pipe, **tgate):
        return pipe(generator=torch.Generator().manual_seed(0), **settings, **tgate).frames

    stock = run(WanPipeline(**components))
    pipe = TgateWanPipeline(**components)
    assert torch.equal(run(pipe, gate_step=3), stock)  # gate at the last step: stock bit for bit
    calls = count_calls(components["transformer_2"])
    gated = run(pipe, gate_step=1)
    assert len(calls) == 2 + 1 + 1  # two guided calls at step 0, then one per step
    assert torch.isfinite(gated).all() and not torch.equal(gated, stock)


def test_sana_sprint_embedded_guidance_is_not_a_guidance_batch():
    components = tiny_sana_components()
    torch.manual_seed(0)
    components["transformer"] = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=32, qk_norm="rms_norm_across_heads", guidance_embeds=True,
    ).eval()
    components["scheduler"] = SCMScheduler()
    settings = dict(prompt="a cat", num_inference_steps=2, guidance_scale=6.0, height=32, width=32,
                    max_sequence_length=16, output_type="pt", complex_human_instruction=None)

    def run(pipe, **tgate):
        return pipe(generator=torch.Generator().manual_seed(0), **settings, **tgate).images

    stock = run(SanaSprintPipeline(**components))
    pipe = tgate_class(SanaSprintPipeline)(**components)
    assert not pipe.uses_guidance(6.0)
    assert torch.equal(run(pipe, gate_step=2), stock)
    calls = count_calls(components["transformer"])
    gated = run(pipe, gate_step=1)  # caches each cross-attention's own output (one branch, as LCM)
    assert len(calls) == 2
    assert torch.isfinite(gated).all() and not torch.equal(gated, stock)


def test_a_cache_that_hands_the_one_branch_a_guided_batch_output_is_named():
    spec = get_model("ltx")
    pipe = spec.tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    # threshold 0.3: the tiny model's first block changes little, so FirstBlockCache skips the step after the gate
    # and adds the residual it kept at the guided step before (batch 2) to the one branch (batch 1)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.3))
    with pytest.raises(RuntimeError, match="returned 2 samples for the 1 of the one branch.*FirstBlockCache"):
        pipe("a cat", num_inference_steps=4, gate_step=1, generator=torch.Generator().manual_seed(0),
             output_type="latent", **dict(spec.tiny_call))
