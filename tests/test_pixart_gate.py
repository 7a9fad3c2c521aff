"""TGATE on PixArt-Alpha (tiny random components): stock equivalence and an explicit step-by-step reference loop.

diffusers' PixArtAlphaPipeline has no ``callback_on_step_end`` and decides guidance once, in a local
variable: the guidance cut has to work at the transformer, with the text attention mask, the resolution and
aspect-ratio conditions and the learned-sigma output (8 channels for 4 latent channels).
"""

import pytest
import torch
from diffusers import PixArtAlphaPipeline
from diffusers.utils.torch_utils import randn_tensor

from common.tiny import tiny_pixart_components
from PixArt_alpha.pipeline import TgatePixArtAlphaPipeline
from tests.tgate_checks import (
    assert_gated_run,
    pipeline_is_stock,
    quiet,
    record_denoiser_calls,
    reference_cross_attention_gate,
)

STEPS = 5
PROMPT = "an alpaca made of colorful building blocks"
LATENT = 128  # the tiny transformer is of the 1024-px family: sizes bin to 1024 px, latents 128x128


@pytest.fixture(scope="module")
def components():
    return tiny_pixart_components(seed=0)


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("num_inference_steps", STEPS)
    # clean_caption needs bs4 and ftfy; without them diffusers falls back to lowercasing, as here
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", clean_caption=False,
                **kwargs).images


@torch.no_grad()  # as the pipeline: the same attention kernels
def explicit_tgate_latents(
    components, gate, prompt=PROMPT, negative_prompt="", guidance_scale=4.5, num_images_per_prompt=1,
    use_text_mask=True, seed=0,
):
    """TGATE on PixArt written out step by step, independent of common/: the reference the pipeline must equal.

    ``use_text_mask=False`` attends to the padding tokens too, to show the comparison would catch a lost mask.
    """
    encoder = PixArtAlphaPipeline(**components)
    guided = guidance_scale > 1
    positive, positive_mask, negative, negative_mask = encoder.encode_prompt(
        prompt, guided, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
        device=torch.device("cpu"),
    )
    transformer, scheduler = components["transformer"], components["scheduler"]
    batch = positive.shape[0]
    latents = randn_tensor((batch, 4, LATENT, LATENT), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(STEPS)
    latents = latents * scheduler.init_noise_sigma

    def denoise(latent_input, t, context, mask):
        samples = latent_input.shape[0]
        conditions = {  # 1024 px, square
            "resolution": torch.tensor([[1024.0, 1024.0]]).repeat(samples, 1),
            "aspect_ratio": torch.tensor([[1.0]]).repeat(samples, 1),
        }
        mask = mask if use_text_mask else torch.ones_like(mask)
        noise = transformer(latent_input, encoder_hidden_states=context, encoder_attention_mask=mask,
                            timestep=t.expand(samples), added_cond_kwargs=conditions).sample
        return noise.chunk(2, dim=1)[0]  # learned sigma: the first 4 channels are the noise

    with reference_cross_attention_gate(transformer, gate, guided) as step:
        for index, t in enumerate(scheduler.timesteps):
            step.index = index
            model_input = scheduler.scale_model_input(latents, t)
            if guided and index < gate:
                uncond, cond = denoise(torch.cat([model_input, model_input]), t, torch.cat([negative, positive]),
                                       torch.cat([negative_mask, positive_mask])).chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            elif guided:  # after the gate: the negative branch alone
                noise = denoise(model_input, t, negative, negative_mask)
            else:
                noise = denoise(model_input, t, positive, positive_mask)
            latents = scheduler.step(noise, t, latents).prev_sample
    return latents


@pytest.mark.parametrize("gate_step", [None, STEPS, STEPS + 3])
def test_gate_at_or_after_last_step_is_stock_bit_for_bit(components, gate_step):
    stock = run(quiet(PixArtAlphaPipeline(**components)))
    tgate = run(quiet(TgatePixArtAlphaPipeline(**components)), gate_step=gate_step)
    assert torch.equal(stock, tgate)


@pytest.mark.parametrize("gate_step", [1, 3, STEPS - 1])
def test_gating_equals_explicit_loop_with_the_text_attention_mask(components, gate_step):
    case = dict(prompt=["an alpaca", "a red fox in the snow, cyberpunk"], negative_prompt="low quality")
    tgate = run(quiet(TgatePixArtAlphaPipeline(**components)), gate_step=gate_step, **case)
    assert torch.equal(tgate, explicit_tgate_latents(components, gate_step, **case))
    # The prompts pad to 120 tokens: attending to the padding would give another result.
    unmasked = explicit_tgate_latents(components, gate_step, use_text_mask=False, **case)
    assert not torch.allclose(tgate, unmasked, atol=1e-4)


@pytest.mark.parametrize(
    "case",
    [dict(num_images_per_prompt=2), dict(negative_prompt=""), dict(guidance_scale=1.0)],
    ids=["two-images", "empty-negative", "no-guidance"],
)
def test_gating_equals_explicit_loop_for_call_variants(components, case):
    tgate = run(quiet(TgatePixArtAlphaPipeline(**components)), gate_step=2, **case)
    assert torch.equal(tgate, explicit_tgate_latents(components, 2, **case))


def test_cache_is_the_mean_of_the_guidance_halves_and_after_the_gate_nothing_else_runs(components):
    pipe = quiet(TgatePixArtAlphaPipeline(**components))

    def four_images():
        run(pipe, gate_step=2, prompt=["a", "b"], num_images_per_prompt=2)

    calls = record_denoiser_calls(pipe.transformer, pipe.transformer.pos_embed, four_images)
    assert len(calls) == STEPS
    assert_gated_run(calls, pipe.transformer, gate=2, images=4, guided=True)


def test_plain_call_after_a_tgate_call_equals_a_fresh_stock_pipeline(components):
    fresh = run(quiet(PixArtAlphaPipeline(**tiny_pixart_components(seed=0))))
    pipe = quiet(TgatePixArtAlphaPipeline(**components))
    run(pipe, gate_step=2)
    assert pipeline_is_stock(pipe)
    assert torch.equal(run(pipe), fresh)


def test_from_pipe_gates_an_existing_stock_pipeline(components):
    stock = quiet(PixArtAlphaPipeline(**components))
    tgate = quiet(TgatePixArtAlphaPipeline.from_pipe(stock))
    assert tgate.transformer is stock.transformer
    assert torch.equal(run(tgate, gate_step=3), explicit_tgate_latents(components, 3))
