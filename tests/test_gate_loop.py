"""The gate follows the sampling loop, whatever drives it: every scheduler, callbacks that end guidance.

The references here are written out step by step, independent of ``common/``: which evaluation of the
denoiser belongs to which of the pipeline's steps follows diffusers' own loop rule (a step ends where the
progress bar advances), and guidance is on at a step until a callback ends it.
"""

import pytest
import torch
import diffusers
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.callbacks import SDCFGCutoffCallback, SDXLCFGCutoffCallback
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils.torch_utils import randn_tensor

from common.tiny import tiny_sd_components, tiny_sdxl_components
from SD_1_5.pipeline import TgateStableDiffusionPipeline
from SDXL.pipeline import TgateStableDiffusionXLPipeline
from tests.hooked_reference import cross_attention
from tests.tgate_checks import (
    CALLBACK_TENSORS,
    branch_denoiser,
    end_guidance_after,
    pipeline_is_stock,
    quiet,
    record_denoiser_calls,
)

PROMPTS = ["a coral reef", "a red bus"]
GUIDANCE = 6.0

EVERY_SCHEDULER = sorted(
    {name.name for name in KarrasDiffusionSchedulers}
    | {"PNDMScheduler", "DDIMScheduler", "LCMScheduler", "TCDScheduler"}
)
FAMILIES = {
    "sd": (StableDiffusionPipeline, TgateStableDiffusionPipeline, tiny_sd_components),
    "sdxl": (StableDiffusionXLPipeline, TgateStableDiffusionXLPipeline, tiny_sdxl_components),
}


cross_attention_modules = cross_attention  # named per architecture, not by the gate's rule


def with_scheduler(components, name, **config):
    if name == "DPMSolverSDEScheduler":  # its Brownian noise is seeded here, not by the call's generator
        config.setdefault("noise_sampler_seed", 0)
    scheduler = getattr(diffusers, name).from_config(components["scheduler"].config, **config)
    return {**components, "scheduler": scheduler}


def run(pipe, prompts=PROMPTS[:1], steps=4, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return pipe(list(prompts), num_inference_steps=steps, generator=generator, output_type="latent", **kwargs).images


def steps_of_evaluations(scheduler, steps):
    """The pipeline's step of each denoiser evaluation: diffusers' loop advances its bar by this rule."""
    timesteps = scheduler.timesteps
    warmup = len(timesteps) - steps * scheduler.order
    step, owners = 0, []
    for i in range(len(timesteps)):
        owners.append(step)
        if i == len(timesteps) - 1 or ((i + 1) > warmup and (i + 1) % scheduler.order == 0):
            step += 1
    return owners


@pytest.mark.parametrize("name", EVERY_SCHEDULER)
def test_gate_at_last_step_is_stock_for_every_scheduler(name):
    components = with_scheduler(tiny_sd_components(seed=0), name)
    stock = run(quiet(StableDiffusionPipeline(**components)))
    gated = run(quiet(TgateStableDiffusionPipeline(**components)), gate_step=4)
    assert torch.equal(stock, gated)


@pytest.mark.parametrize("name, config", [
    ("PNDMScheduler", {"skip_prk_steps": True}),  # SD-1.5's own scheduler: its first step evaluates twice
    ("PNDMScheduler", {"skip_prk_steps": False}),  # PRK warm-up: four evaluations per step at first
    ("HeunDiscreteScheduler", {}),  # order 2: two evaluations per step but the last
    ("KDPM2DiscreteScheduler", {}),
    ("DPMSolverSDEScheduler", {}),
])
@pytest.mark.parametrize("gate", [1, 2, 3])
def test_every_evaluation_of_a_step_falls_on_the_same_side_of_the_gate(name, config, gate):
    components = with_scheduler(tiny_sd_components(seed=0), name, **config)
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    unet = components["unet"]
    calls = record_denoiser_calls(unet, unet.conv_in, lambda: run(pipe, steps=4, gate_step=gate))
    owners = steps_of_evaluations(components["scheduler"], 4)
    assert len(calls) == len(owners) > 4
    assert [call.batch for call in calls] == [2 if step < gate else 1 for step in owners]
    projections = 4 * len(cross_attention_modules(unet))
    assert [call.projections for call in calls] == [projections if step < gate else 0 for step in owners]


@torch.no_grad()
def explicit_tgate(family, components, gate, steps, prompts, guided_until=None, seed=0):
    """TGATE on SD or SDXL, one evaluation at a time, with guidance on at steps ``<= guided_until``.

    Before the gate a guided step runs ``[negative, positive]``; after it, the negative branch alone. A step
    whose guidance has ended runs the positive branch (the CFG cut-off callbacks keep it). Cross-attention is
    cached at the last evaluation of step ``gate - 1`` (the mean of the halves if that step is guided).
    """
    stock_class = FAMILIES[family][0]
    encoder = stock_class(**components)
    scheduler, unet = components["scheduler"], components["unet"]
    count = len(prompts)
    denoise = branch_denoiser(encoder, unet, prompts, sdxl=family == "sdxl")

    latents = randn_tensor((count, 4, 16, 16), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    owners = steps_of_evaluations(scheduler, steps)
    cache, now = {}, {}

    def gate_cross_attention(module, args, output):
        if now["step"] == gate - 1:
            uncond, cond = output.chunk(2) if now["guided"] else (output, output)
            cache[module] = (uncond + cond) / 2 if now["guided"] else output
        return cache[module] if now["step"] >= gate else output

    handles = [m.register_forward_hook(gate_cross_attention) for m in cross_attention_modules(unet)]
    try:
        for index, t in enumerate(scheduler.timesteps):
            step = owners[index]
            guided = guided_until is None or step <= guided_until
            now.update(step=step, guided=guided and step < gate)
            model_input = scheduler.scale_model_input(latents, t)
            if guided and step < gate:
                uncond, cond = denoise(torch.cat([model_input] * 2), t, "negative", "positive").chunk(2)
                noise = uncond + GUIDANCE * (cond - uncond)
            else:
                noise = denoise(model_input, t, "negative" if guided else "positive")
            latents = scheduler.step(noise, t, latents).prev_sample
    finally:
        for handle in handles:
            handle.remove()
    return latents


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("name, config", [("HeunDiscreteScheduler", {}), ("PNDMScheduler", {"skip_prk_steps": True})])
def test_multi_evaluation_schedulers_equal_an_explicit_loop(family, name, config):
    stock_class, tgate_class, make = FAMILIES[family]
    components = with_scheduler(make(seed=0), name, **config)
    pipe = quiet(tgate_class(**components))
    expected = explicit_tgate(family, components, gate=2, steps=4, prompts=PROMPTS)
    assert torch.allclose(run(pipe, PROMPTS, gate_step=2, guidance_scale=GUIDANCE), expected, atol=1e-5)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("guided_until, gate", [(1, 3), (3, 2), (2, 3)])  # ends before, after, at the gate
def test_guidance_ended_by_a_callback_equals_an_explicit_loop(family, images, guided_until, gate):
    _, tgate_class, make = FAMILIES[family]
    components = make(seed=0)
    pipe = quiet(tgate_class(**components))
    prompts = PROMPTS[:images]
    latents = run(pipe, prompts, steps=5, gate_step=gate, guidance_scale=GUIDANCE,
                  callback_on_step_end=end_guidance_after(guided_until),
                  callback_on_step_end_tensor_inputs=CALLBACK_TENSORS[family])
    expected = explicit_tgate(family, components, gate, 5, prompts, guided_until=guided_until)
    assert torch.allclose(latents, expected, atol=1e-5)
    assert pipeline_is_stock(pipe)


@pytest.mark.parametrize("family", ["sd", "sdxl"])
@pytest.mark.parametrize("guided_until, gate", [(1, 3), (3, 2)])
def test_diffusers_cfg_cutoff_callbacks(family, guided_until, gate):
    _, tgate_class, make = FAMILIES[family]
    components = make(seed=0)
    callback = {"sd": SDCFGCutoffCallback, "sdxl": SDXLCFGCutoffCallback}[family](cutoff_step_ratio=None, cutoff_step_index=guided_until)
    latents = run(quiet(tgate_class(**components)), steps=5, gate_step=gate, guidance_scale=GUIDANCE,
                  callback_on_step_end=callback)
    expected = explicit_tgate(family, components, gate, 5, PROMPTS[:1], guided_until=guided_until)
    assert torch.allclose(latents, expected, atol=1e-5)
