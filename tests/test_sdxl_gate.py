"""TGATE on SDXL (tiny random components): stock equivalence and an explicit step-by-step reference loop."""

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor

from common.tiny import tiny_sdxl_components
from SDXL.pipeline import TgateStableDiffusionXLPipeline
from tests.tgate_checks import (
    assert_gated_run,
    pipeline_is_stock,
    quiet,
    record_denoiser_calls,
    reference_cross_attention_gate,
)

STEPS = 5
PROMPT = "an astronaut in a jungle"
SIZE = (32, 32)  # the tiny UNet's default image size: 16x16 latents, VAE scale factor 2
NEGATIVE_SIZE = (16, 24)  # a negative original/target size: negative time_ids differ from the positive ones


@pytest.fixture(scope="module")
def components():
    return tiny_sdxl_components(seed=0)


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).images


def time_ids(original_size, target_size):
    return torch.tensor([[*original_size, 0, 0, *target_size]], dtype=torch.float32)


@torch.no_grad()  # as the pipeline: the same attention kernels
def explicit_tgate_latents(
    components,
    gate,
    prompt=PROMPT,
    negative_prompt=None,
    guidance_scale=5.0,
    num_images_per_prompt=1,
    negative_size=None,
    conditioning_after_gate="negative",
    seed=0,
):
    """TGATE on SDXL written out step by step, independent of common/: the reference the pipeline must equal.

    After the gate one branch runs, conditioned like the unconditional branch everywhere it enters the UNet
    (prompt embeddings, pooled ``text_embeds``, ``time_ids``); ``conditioning_after_gate="positive"`` builds
    the wrong variant, to show the comparison would catch it.
    """
    encoder = StableDiffusionXLPipeline(**components)
    guided = guidance_scale > 1
    positive, negative, pooled, negative_pooled = encoder.encode_prompt(
        prompt, device="cpu", num_images_per_prompt=num_images_per_prompt, do_classifier_free_guidance=guided,
        negative_prompt=negative_prompt,
    )
    batch = positive.shape[0]
    # [negative x B, positive x B] like every other input. diffusers itself repeats the pair [negative,
    # positive] per image, which is the same where B = 1 or both sizes agree, as in every test here.
    positive_ids = time_ids(SIZE, SIZE).repeat(batch, 1)
    negative_ids = time_ids(negative_size, negative_size).repeat(batch, 1) if negative_size else positive_ids
    unet, scheduler = components["unet"], components["scheduler"]
    latents = randn_tensor((batch, 4, 16, 16), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(STEPS)
    latents = latents * scheduler.init_noise_sigma

    def denoise(latent_input, t, context, text_embeds, ids):
        conditioning = {"text_embeds": text_embeds, "time_ids": ids}
        return unet(latent_input, t, encoder_hidden_states=context, added_cond_kwargs=conditioning).sample

    single_branch = {
        "negative": (negative, negative_pooled, negative_ids),
        "positive": (positive, pooled, positive_ids),
    }[conditioning_after_gate if guided else "positive"]
    with reference_cross_attention_gate(unet, gate, guided) as step:
        for index, t in enumerate(scheduler.timesteps):
            step.index = index
            model_input = scheduler.scale_model_input(latents, t)
            if guided and index < gate:
                uncond, cond = denoise(
                    torch.cat([model_input, model_input]), t, torch.cat([negative, positive]),
                    torch.cat([negative_pooled, pooled]), torch.cat([negative_ids, positive_ids]),
                ).chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            else:
                noise = denoise(model_input, t, *single_branch)
            latents = scheduler.step(noise, t, latents).prev_sample
    return latents


@pytest.mark.parametrize("gate_step", [None, STEPS, STEPS + 3])
def test_gate_at_or_after_last_step_is_stock_bit_for_bit(components, gate_step):
    stock = run(quiet(StableDiffusionXLPipeline(**components)))
    tgate = run(quiet(TgateStableDiffusionXLPipeline(**components)), gate_step=gate_step)
    assert torch.equal(stock, tgate)


NEGATIVE_CONDITIONING = dict(negative_prompt="blurry", negative_original_size=NEGATIVE_SIZE,
                             negative_target_size=NEGATIVE_SIZE)


@pytest.mark.parametrize("gate_step", [1, 3, STEPS - 1])
def test_gating_equals_explicit_loop_with_negative_added_conditioning(components, gate_step):
    tgate = run(quiet(TgateStableDiffusionXLPipeline(**components)), gate_step=gate_step, **NEGATIVE_CONDITIONING)
    reference = dict(negative_prompt="blurry", negative_size=NEGATIVE_SIZE)
    assert torch.equal(tgate, explicit_tgate_latents(components, gate_step, **reference))
    # The positive pooled text_embeds and time_ids after the gate would give another result.
    positive_after_gate = explicit_tgate_latents(components, gate_step, conditioning_after_gate="positive", **reference)
    assert not torch.allclose(tgate, positive_after_gate, atol=1e-4)


@pytest.mark.parametrize(
    "case",
    [
        dict(prompt=["an astronaut", "a red fox"], negative_prompt=["blurry", "dark"]),
        dict(num_images_per_prompt=2),
        dict(negative_prompt=None),  # SDXL zeroes the negative embeddings (force_zeros_for_empty_prompt)
        dict(guidance_scale=1.0),
    ],
    ids=["two-prompts-negatives", "two-images", "zero-negative", "no-guidance"],
)
def test_gating_equals_explicit_loop_for_call_variants(components, case):
    tgate = run(quiet(TgateStableDiffusionXLPipeline(**components)), gate_step=2, **case)
    assert torch.equal(tgate, explicit_tgate_latents(components, 2, **case))


def test_cache_is_the_mean_of_the_guidance_halves_and_after_the_gate_nothing_else_runs(components):
    pipe = quiet(TgateStableDiffusionXLPipeline(**components))

    def four_images():
        run(pipe, gate_step=2, prompt=["a", "b"], num_images_per_prompt=2)

    calls = record_denoiser_calls(pipe.unet, pipe.unet.conv_in, four_images)
    assert len(calls) == STEPS
    assert_gated_run(calls, pipe.unet, gate=2, images=4, guided=True)


def test_plain_call_after_a_tgate_call_equals_a_fresh_stock_pipeline(components):
    fresh = run(quiet(StableDiffusionXLPipeline(**tiny_sdxl_components(seed=0))), **NEGATIVE_CONDITIONING)
    pipe = quiet(TgateStableDiffusionXLPipeline(**components))
    run(pipe, gate_step=2, **NEGATIVE_CONDITIONING)
    assert pipeline_is_stock(pipe)
    assert torch.equal(run(pipe, **NEGATIVE_CONDITIONING), fresh)


def test_from_pipe_gates_an_existing_stock_pipeline(components):
    stock = quiet(StableDiffusionXLPipeline(**components))
    tgate = quiet(TgateStableDiffusionXLPipeline.from_pipe(stock))
    assert tgate.unet is stock.unet
    assert torch.equal(run(tgate, gate_step=3), explicit_tgate_latents(components, 3))
