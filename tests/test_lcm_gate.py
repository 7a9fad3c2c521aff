"""TGATE on LCM-SDXL and PixArt-LCM (tiny random components): no guidance branch, the cache is the output itself.

LCM-SDXL takes the guidance scale as an embedding (``time_cond_proj_dim``), so its pipeline never doubles the
batch; PixArt-LCM samples at guidance 0. The LCMScheduler injects fresh noise between steps.
"""

import pytest
import torch
from diffusers import LCMScheduler, PixArtAlphaPipeline, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor

from common.models import get_model
from common.tiny import tiny_lcm_pixart_components, tiny_lcm_sdxl_components
from LCM.pipeline import LCM_MODELS, TgatePixArtAlphaPipeline, TgateStableDiffusionXLPipeline, load_lcm
from tests.tgate_checks import (
    assert_gated_run,
    pipeline_is_stock,
    quiet,
    record_denoiser_calls,
    reference_cross_attention_gate,
)

STEPS = 4  # the paper's LCM setting: 4 steps, gate 1
PROMPT = "self-portrait oil painting, a beautiful cyborg"

FAMILIES = {  # base -> stock pipeline class, TGATE pipeline class, tiny components
    "sdxl": (StableDiffusionXLPipeline, TgateStableDiffusionXLPipeline, tiny_lcm_sdxl_components),
    "pixart": (PixArtAlphaPipeline, TgatePixArtAlphaPipeline, tiny_lcm_pixart_components),
}


def pipelines(base):
    stock_class, tgate_class, components = FAMILIES[base]
    parts = components(seed=0)
    return quiet(stock_class(**parts)), quiet(tgate_class(**parts)), parts


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("num_inference_steps", STEPS)
    if isinstance(pipe, PixArtAlphaPipeline):
        kwargs.setdefault("guidance_scale", get_model("lcm_pixart").guidance_scale)
        kwargs.setdefault("clean_caption", False)  # needs bs4 and ftfy; diffusers lowercases without them
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).images


def lcm_loop(denoiser, scheduler, gate, latents, generator, denoise):
    """The sampling loop both references share: one branch per step, TGATE's cache from the gate on."""
    scheduler.set_timesteps(STEPS)
    latents = latents * scheduler.init_noise_sigma
    with reference_cross_attention_gate(denoiser, gate, guided=False) as step:
        for index, t in enumerate(scheduler.timesteps):
            step.index = index
            noise = denoise(scheduler.scale_model_input(latents, t), t)
            latents = scheduler.step(noise, t, latents, generator=generator).prev_sample  # draws fresh noise
    return latents


@torch.no_grad()  # as the pipeline: the same attention kernels
def explicit_lcm_sdxl_latents(components, gate, prompt=PROMPT, guidance_scale=5.0, seed=0):
    """TGATE on LCM-SDXL written out step by step, independent of common/."""
    encoder = StableDiffusionXLPipeline(**components)
    text, _, pooled, _ = encoder.encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    unet, batch = components["unet"], text.shape[0]
    # the guidance scale enters as an embedding of w = scale - 1, not as a second branch
    guidance = encoder.get_guidance_scale_embedding(
        torch.tensor(guidance_scale - 1).repeat(batch), embedding_dim=unet.config.time_cond_proj_dim
    )
    conditioning = {"text_embeds": pooled, "time_ids": torch.tensor([[32.0, 32.0, 0, 0, 32.0, 32.0]]).repeat(batch, 1)}
    generator = torch.Generator().manual_seed(seed)
    latents = randn_tensor((batch, 4, 16, 16), generator=generator)

    def denoise(latent_input, t):
        return unet(latent_input, t, encoder_hidden_states=text, timestep_cond=guidance,
                    added_cond_kwargs=conditioning).sample

    return lcm_loop(unet, components["scheduler"], gate, latents, generator, denoise)


@torch.no_grad()
def explicit_lcm_pixart_latents(components, gate, prompt=PROMPT, seed=0):
    """TGATE on PixArt-LCM written out step by step, independent of common/."""
    encoder = PixArtAlphaPipeline(**components)
    text, mask, _, _ = encoder.encode_prompt(prompt, do_classifier_free_guidance=False, device=torch.device("cpu"))
    transformer, batch = components["transformer"], text.shape[0]
    conditions = {"resolution": torch.tensor([[1024.0, 1024.0]]).repeat(batch, 1),
                  "aspect_ratio": torch.tensor([[1.0]]).repeat(batch, 1)}
    generator = torch.Generator().manual_seed(seed)
    latents = randn_tensor((batch, 4, 128, 128), generator=generator)

    def denoise(latent_input, t):
        noise = transformer(latent_input, encoder_hidden_states=text, encoder_attention_mask=mask,
                            timestep=t.expand(batch), added_cond_kwargs=conditions).sample
        return noise.chunk(2, dim=1)[0]  # learned sigma: the first 4 channels are the noise

    return lcm_loop(transformer, components["scheduler"], gate, latents, generator, denoise)


def test_tiny_components_are_lcm():
    _, sdxl, _ = pipelines("sdxl")
    _, pixart, _ = pipelines("pixart")
    assert isinstance(sdxl.scheduler, LCMScheduler) and isinstance(pixart.scheduler, LCMScheduler)
    assert sdxl.unet.config.time_cond_proj_dim is not None
    assert not sdxl.uses_guidance(get_model("lcm_sdxl").guidance_scale)  # an embedding, no second branch
    assert not pixart.uses_guidance(get_model("lcm_pixart").guidance_scale)


@pytest.mark.parametrize("base", FAMILIES)
@pytest.mark.parametrize("gate_step", [None, STEPS, STEPS + 2])
def test_gate_at_or_after_last_step_is_stock_bit_for_bit(base, gate_step):
    stock, tgate, _ = pipelines(base)
    assert torch.equal(run(stock), run(tgate, gate_step=gate_step))


@pytest.mark.parametrize("gate_step", [1, 2, STEPS - 1])
def test_lcm_sdxl_gating_equals_explicit_loop_with_the_guidance_embedding(gate_step):
    _, tgate, components = pipelines("sdxl")
    at_5 = run(tgate, gate_step=gate_step, guidance_scale=5.0)
    at_2 = run(tgate, gate_step=gate_step, guidance_scale=2.0)
    assert torch.equal(at_5, explicit_lcm_sdxl_latents(components, gate_step, guidance_scale=5.0))
    assert torch.equal(at_2, explicit_lcm_sdxl_latents(components, gate_step, guidance_scale=2.0))
    assert not torch.allclose(at_5, at_2, atol=1e-4)  # the embedding keeps steering the samples


@pytest.mark.parametrize("gate_step", [1, 2, STEPS - 1])
def test_lcm_pixart_gating_equals_explicit_loop(gate_step):
    _, tgate, components = pipelines("pixart")
    prompts = ["a cyborg", "a self-portrait oil painting, golden hair"]  # two text masks of different lengths
    assert torch.equal(run(tgate, gate_step=gate_step, prompt=prompts),
                       explicit_lcm_pixart_latents(components, gate_step, prompt=prompts))


@pytest.mark.parametrize("base", FAMILIES)
def test_cache_is_the_cross_attention_output_itself_and_the_batch_is_never_doubled(base):
    _, tgate, _ = pipelines(base)
    denoiser = tgate.denoiser
    entry = denoiser.conv_in if base == "sdxl" else denoiser.pos_embed
    calls = record_denoiser_calls(denoiser, entry, lambda: run(tgate, gate_step=1, prompt=["a", "b"]))
    assert len(calls) == STEPS
    assert_gated_run(calls, denoiser, gate=1, images=2, guided=False)  # never two samples per image


@pytest.mark.parametrize("base", FAMILIES)
def test_plain_call_after_a_tgate_call_equals_a_fresh_stock_pipeline(base):
    fresh_stock, _, _ = pipelines(base)
    _, tgate, _ = pipelines(base)
    run(tgate, gate_step=1)
    assert pipeline_is_stock(tgate)
    assert torch.equal(run(tgate), run(fresh_stock))


def test_registry_builds_both_lcm_pipelines_with_the_paper_settings():
    for base, key in LCM_MODELS.items():
        spec = get_model(key)
        assert (spec.steps, spec.gate_step) == (STEPS, 1)
        assert isinstance(spec.tiny_pipeline(), FAMILIES[base][1])


def test_unknown_lcm_base_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of: sdxl, pixart"):
        load_lcm("sd15")
