"""TGATE on Stable Diffusion (tiny random components): stock equivalence and an explicit reference loop."""

import pytest
import torch
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg
from diffusers.utils.torch_utils import randn_tensor

from tests.hooked_reference import cross_attention as cross_attention_modules
from common.tiny import tiny_sd_components
from SD_1_5.pipeline import TgateStableDiffusionPipeline
from SD_2_1.pipeline import TgateStableDiffusionPipeline as TgateSD21Pipeline
from tests.tgate_checks import pipeline_is_stock, quiet

STEPS = 6
PROMPT = "a coral reef"


@pytest.fixture
def components():
    return tiny_sd_components(seed=0)


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", **kwargs).images


def explicit_tgate_latents(
    components,
    gate,
    prompt=PROMPT,
    negative_prompt=None,
    guidance_scale=7.5,
    guidance_rescale=0.0,
    num_images_per_prompt=1,
    prompt_embeds=None,
    seed=0,
):
    """TGATE written out step by step, independent of common/: the reference the pipeline must equal."""
    encoder = StableDiffusionPipeline(**components)
    guided = guidance_scale > 1
    positive, negative = encoder.encode_prompt(
        prompt, "cpu", num_images_per_prompt, guided, negative_prompt, prompt_embeds=prompt_embeds
    )
    unet, scheduler = components["unet"], components["scheduler"]
    batch = positive.shape[0]
    latents = randn_tensor((batch, 4, 16, 16), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(STEPS)
    latents = latents * scheduler.init_noise_sigma

    cache, step = {}, {"index": 0}

    def gate_cross_attention(module, args, output):
        if step["index"] == gate - 1:  # last guided step: cache (mean of uncond and cond halves)
            cache[module] = (output[:batch] + output[batch:]) / 2 if guided else output
        if step["index"] >= gate:
            return cache[module]
        return output

    handles = [m.register_forward_hook(gate_cross_attention) for m in cross_attention_modules(unet)]
    try:
        for index, t in enumerate(scheduler.timesteps):
            step["index"] = index
            if guided and index < gate:
                model_input = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                uncond, cond = unet(model_input, t, encoder_hidden_states=torch.cat([negative, positive])).sample.chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
                if guidance_rescale > 0:
                    noise = rescale_noise_cfg(noise, cond, guidance_rescale=guidance_rescale)
            else:  # one branch: the negative one after the gate, the prompt's own without guidance
                context = negative if guided else positive
                noise = unet(scheduler.scale_model_input(latents, t), t, encoder_hidden_states=context).sample
            latents = scheduler.step(noise, t, latents).prev_sample
    finally:
        for handle in handles:
            handle.remove()
    return latents


@pytest.mark.parametrize("gate_step", [None, STEPS, STEPS + 5])
def test_gate_at_or_after_last_step_is_stock_bit_for_bit(components, gate_step):
    stock = run(quiet(StableDiffusionPipeline(**components)))
    tgate = run(quiet(TgateStableDiffusionPipeline(**components)), gate_step=gate_step)
    assert torch.equal(stock, tgate)


def test_stock_equivalence_holds_for_decoded_images(components):
    generator_args = dict(prompt=PROMPT, num_inference_steps=STEPS, output_type="np")
    stock = quiet(StableDiffusionPipeline(**components))(generator=torch.Generator().manual_seed(3), **generator_args)
    tgate = quiet(TgateStableDiffusionPipeline(**components))(
        generator=torch.Generator().manual_seed(3), gate_step=STEPS, **generator_args
    )
    assert (stock.images == tgate.images).all()


@pytest.mark.parametrize("gate_step", [1, 2, 4, STEPS - 1])
def test_gating_equals_explicit_loop(components, gate_step):
    tgate = run(quiet(TgateStableDiffusionPipeline(**components)), gate_step=gate_step)
    assert torch.equal(tgate, explicit_tgate_latents(components, gate_step))


def test_gating_changes_the_result(components):
    stock = run(quiet(StableDiffusionPipeline(**components)))
    tgate = run(quiet(TgateStableDiffusionPipeline(**components)), gate_step=2)
    assert not torch.allclose(stock, tgate, atol=1e-3)


@pytest.mark.parametrize(
    "case",
    [
        dict(prompt=["a coral reef", "a red fox"]),
        dict(num_images_per_prompt=2),
        dict(prompt=["a coral reef", "a red fox"], num_images_per_prompt=2, negative_prompt=["blurry", "dark"]),
        dict(negative_prompt="low quality"),
        dict(guidance_scale=1.0),
        dict(guidance_scale=0.0, num_images_per_prompt=2),
    ],
    ids=["two-prompts", "two-images", "prompts-images-negatives", "negative", "guidance-1", "guidance-0"],
)
def test_gating_equals_explicit_loop_for_call_variants(components, case):
    tgate = run(quiet(TgateStableDiffusionPipeline(**components)), gate_step=3, **case)
    assert torch.equal(tgate, explicit_tgate_latents(components, 3, **case))


def test_gating_with_prompt_embeds_given_directly(components):
    embeds = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(7))
    tgate = run(quiet(TgateStableDiffusionPipeline(**components)), gate_step=3, prompt=None, prompt_embeds=embeds)
    reference = explicit_tgate_latents(components, 3, prompt=None, prompt_embeds=embeds)
    assert torch.equal(tgate, reference)


def test_gating_with_guidance_rescale(components):
    # Before the gate the pipeline rescales as usual (bit for bit). After it, diffusers applies the rescale to
    # two identical halves, r * x + (1 - r) * x: the prediction as is, up to float rounding.
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    tgate = run(pipe, gate_step=3, guidance_rescale=0.7)
    reference = explicit_tgate_latents(components, 3, guidance_rescale=0.7)
    assert torch.allclose(tgate, reference, rtol=1e-5, atol=1e-6)
    without_rescale = explicit_tgate_latents(components, 3)
    assert not torch.allclose(reference, without_rescale, atol=1e-4)  # the rescale did matter
    # At gate >= steps no step is gated: the rescaled stock output, bit for bit.
    stock = run(quiet(StableDiffusionPipeline(**components)), guidance_rescale=0.7)
    assert torch.equal(stock, run(pipe, gate_step=STEPS, guidance_rescale=0.7))


def test_after_the_gate_no_cross_attention_runs_and_the_denoiser_sees_one_sample_per_image(components):
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    unet = pipe.unet
    step = {"index": 0}
    batch_per_step, projections_per_step = {}, {}

    def record_batch(module, args):
        batch_per_step.setdefault(step["index"], []).append(args[0].shape[0])

    def record_projection(module, args):
        projections_per_step[step["index"]] = projections_per_step.get(step["index"], 0) + 1

    def next_step(pipeline, index, timestep, callback_kwargs):
        step["index"] = index + 1
        return callback_kwargs

    handles = [unet.conv_in.register_forward_pre_hook(record_batch)]
    for attention in cross_attention_modules(unet):
        for projection in (attention.to_q, attention.to_k, attention.to_v, attention.to_out[0]):
            handles.append(projection.register_forward_pre_hook(record_projection))
    try:
        run(pipe, gate_step=2, prompt=["a", "b"], num_images_per_prompt=2, callback_on_step_end=next_step)
    finally:
        for handle in handles:
            handle.remove()

    projections_per_module_and_step = 4 * len(cross_attention_modules(unet))
    assert batch_per_step == {0: [8], 1: [8], 2: [4], 3: [4], 4: [4], 5: [4]}
    assert projections_per_step == {0: projections_per_module_and_step, 1: projections_per_module_and_step}


def test_custom_attention_processor_still_runs_before_the_gate(components):
    from diffusers.models.attention_processor import AttnProcessor

    class CountingProcessor(AttnProcessor):
        calls = 0

        def __call__(self, *args, **kwargs):
            CountingProcessor.calls += 1
            return super().__call__(*args, **kwargs)

    pipe = quiet(TgateStableDiffusionPipeline(**components))
    cross = cross_attention_modules(pipe.unet)
    for module in cross:
        module.set_processor(CountingProcessor())
    run(pipe, gate_step=2)
    assert CountingProcessor.calls == 2 * len(cross)
    assert all(isinstance(module.processor, CountingProcessor) for module in cross)


def test_plain_call_after_a_tgate_call_equals_a_fresh_stock_pipeline(components):
    fresh = run(quiet(StableDiffusionPipeline(**tiny_sd_components(seed=0))))
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    run(pipe, gate_step=2)
    assert pipeline_is_stock(pipe)
    assert torch.equal(run(pipe), fresh)
    assert torch.equal(run(quiet(StableDiffusionPipeline(**components))), fresh)


def test_plain_call_after_a_call_that_raised_mid_run_equals_a_fresh_stock_pipeline(components):
    fresh = run(quiet(StableDiffusionPipeline(**tiny_sd_components(seed=0))))
    pipe = quiet(TgateStableDiffusionPipeline(**components))

    def fail_after_the_gate(pipeline, index, timestep, callback_kwargs):
        if index == 3:
            raise KeyboardInterrupt("stopped by the user")
        return callback_kwargs

    with pytest.raises(KeyboardInterrupt):
        run(pipe, gate_step=2, callback_on_step_end=fail_after_the_gate)
    assert pipeline_is_stock(pipe)
    assert torch.equal(run(pipe), fresh)


def test_cache_does_not_leak_between_calls(components):
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    first = run(pipe, gate_step=2, prompt="a red fox")
    run(pipe, gate_step=2, prompt="a blue whale", seed=1)
    assert torch.equal(run(pipe, gate_step=2, prompt="a red fox"), first)


def test_changing_steps_between_calls_keeps_the_gate_in_sync(components):
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    run(pipe, gate_step=2, num_inference_steps=9)
    assert torch.equal(run(pipe, gate_step=3), explicit_tgate_latents(components, 3))


def test_other_scheduler(components):
    components["scheduler"] = DDIMScheduler.from_config(components["scheduler"].config)
    tgate = run(quiet(TgateStableDiffusionPipeline(**components)), gate_step=3)
    assert torch.equal(tgate, explicit_tgate_latents(components, 3))


@pytest.mark.parametrize(
    "scheduler_class, call", [(EulerAncestralDiscreteScheduler, {}), (DDIMScheduler, {"eta": 1.0})],
    ids=["euler-ancestral", "ddim-eta-1"],
)
def test_stochastic_schedulers_still_draw_their_noise_from_the_users_generator(components, scheduler_class, call):
    # Pipelines pass `generator` and `eta` to scheduler.step only if its signature names them.
    components["scheduler"] = scheduler_class.from_config(components["scheduler"].config)
    stock = run(quiet(StableDiffusionPipeline(**components)), **call)
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    torch.manual_seed(123)  # the global generator must not be what the run draws from
    assert torch.equal(stock, run(pipe, gate_step=STEPS, **call))


def test_from_pipe_gates_an_existing_stock_pipeline(components):
    stock = quiet(StableDiffusionPipeline(**components))
    tgate = quiet(TgateStableDiffusionPipeline.from_pipe(stock))
    assert tgate.unet is stock.unet
    assert torch.equal(run(tgate, gate_step=3), explicit_tgate_latents(components, 3))
    assert torch.equal(run(tgate, gate_step=STEPS), run(stock))


def test_sd21_folder_exposes_the_same_pipeline():
    assert TgateSD21Pipeline is TgateStableDiffusionPipeline


@pytest.mark.parametrize("bad", [0, -3, 2.0, 2.5, "10", True, False])
def test_bad_gate_step_is_a_clear_value_error(components, bad):
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    with pytest.raises(ValueError, match="gate_step must be"):
        run(pipe, gate_step=bad)
    assert pipeline_is_stock(pipe)
