"""TGATE on the ControlNet pipelines of SD and SDXL (text-to-image, image-to-image, inpainting), tiny components.

References: an explicit step-by-step loop written out here for SD text-to-image and image-to-image and SDXL
text-to-image (ControlNet residuals into the UNet, guidance, the gate), and for every class the stock
pipeline with plain torch hooks doing TGATE (``tests/hooked_reference.py``); neither uses ``common/``.
"""

import numpy as np
import pytest
import torch
from diffusers import (
    MultiControlNetModel,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
)
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from common.tiny import tiny_sd_components, tiny_sdxl_components
from common.tiny_pipelines import tiny_controlnet
from SD_1_5.pipeline import (
    TgateStableDiffusionControlNetImg2ImgPipeline,
    TgateStableDiffusionControlNetInpaintPipeline,
    TgateStableDiffusionControlNetPipeline,
)
from SDXL.pipeline import (
    TgateStableDiffusionXLControlNetImg2ImgPipeline,
    TgateStableDiffusionXLControlNetInpaintPipeline,
    TgateStableDiffusionXLControlNetPipeline,
)
from tests.hooked_reference import cross_attention, hooked_tgate
from tests.tgate_checks import assert_gated_run, quiet, record_denoiser_calls

STEPS = 4
GUIDANCE = 6.0
PROMPTS = ["a coral reef", "a red bus"]
_rng = np.random.default_rng(0)
CONTROL = Image.fromarray(_rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
INIT = Image.fromarray(_rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
MASK = Image.fromarray(np.where(np.arange(32)[None, :, None] < 16, 255, 0).repeat(32, 0).repeat(3, 2).astype(np.uint8))
CONTROL_SCALE = 0.7  # controlnet_conditioning_scale (the classes' defaults differ: 1.0, 0.8, 0.5)
STRENGTH = 0.75  # of 4 steps, image-to-image and inpainting run the last int(4 * 0.75) = 3

# class key -> (stock class, TGATE class, tiny components, image arguments of the call, steps run)
CLASSES = {
    "sd": (StableDiffusionControlNetPipeline, TgateStableDiffusionControlNetPipeline, tiny_sd_components,
           dict(image=CONTROL), STEPS),
    "sd-img2img": (StableDiffusionControlNetImg2ImgPipeline, TgateStableDiffusionControlNetImg2ImgPipeline,
                   tiny_sd_components, dict(image=INIT, control_image=CONTROL, strength=STRENGTH), 3),
    "sd-inpaint": (StableDiffusionControlNetInpaintPipeline, TgateStableDiffusionControlNetInpaintPipeline,
                   tiny_sd_components, dict(image=INIT, mask_image=MASK, control_image=CONTROL, strength=STRENGTH), 3),
    "sdxl": (StableDiffusionXLControlNetPipeline, TgateStableDiffusionXLControlNetPipeline, tiny_sdxl_components,
             dict(image=CONTROL), STEPS),
    "sdxl-img2img": (StableDiffusionXLControlNetImg2ImgPipeline, TgateStableDiffusionXLControlNetImg2ImgPipeline,
                     tiny_sdxl_components, dict(image=INIT, control_image=CONTROL, strength=STRENGTH), 3),
    "sdxl-inpaint": (StableDiffusionXLControlNetInpaintPipeline, TgateStableDiffusionXLControlNetInpaintPipeline,
                     tiny_sdxl_components, dict(image=INIT, mask_image=MASK, control_image=CONTROL, strength=STRENGTH), 3),
}


def components_for(key, seed=0):
    components = CLASSES[key][2](seed=seed)
    components["controlnet"] = tiny_controlnet(components["unet"], seed=seed)
    return components


def run(pipe, key, images=1, guidance=GUIDANCE, seed=0, **kwargs):
    call = {**CLASSES[key][3], "controlnet_conditioning_scale": CONTROL_SCALE, **kwargs}
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPTS[:images], num_inference_steps=STEPS, guidance_scale=guidance, generator=generator,
                output_type="latent", **call).images


def hooks_left(pipe) -> bool:
    modules = [m for d in (pipe.unet, pipe.controlnet) for m in (d, *cross_attention(d))]
    return any("forward" in m.__dict__ or hasattr(m, "_diffusers_hook") for m in modules)


# --- explicit loops ----------------------------------------------------------------------------------------------


@torch.no_grad()
def explicit_controlnet(key, components, gate, images, guided, seed=0):
    """TGATE with a ControlNet, one step at a time (SD text-to-image and image-to-image, SDXL text-to-image).

    The stock pipeline only encodes the prompt, prepares the control image and (image-to-image) the noised
    initial latents, in the stock call's order, so the generator draws the same numbers. Before the gate a
    guided step runs ControlNet and UNet on ``[negative, positive]`` with the control image twice; from the
    gate on both run the negative branch alone (SDXL: negative pooled embeddings too) and the prediction is
    used as is. Both models' cross-attention is cached at step ``gate - 1`` (mean of the halves if guided).
    """
    stock = CLASSES[key][0](**components)
    unet, controlnet, scheduler = components["unet"], components["controlnet"], components["scheduler"]
    prompts = PROMPTS[:images]
    generator = torch.Generator().manual_seed(seed)
    if key == "sdxl":
        positive, negative, pooled, negative_pooled = stock.encode_prompt(prompts, device="cpu",
                                                                          do_classifier_free_guidance=guided)
        ids = torch.tensor([[32, 32, 0, 0, 32, 32]], dtype=torch.float32).repeat(images, 1)
        branches = {"negative": (negative, negative_pooled, ids), "positive": (positive, pooled, ids)}
    else:
        positive, negative = stock.encode_prompt(prompts, "cpu", 1, guided)
        branches = {"negative": (negative, None, None), "positive": (positive, None, None)}
    prepare = stock.prepare_image if key in ("sd", "sdxl") else stock.prepare_control_image
    control = prepare(image=CONTROL, width=32, height=32, batch_size=images, num_images_per_prompt=1, device="cpu",
                      dtype=torch.float32, do_classifier_free_guidance=False)  # one copy; doubled below
    if key == "sd-img2img":
        init = stock.image_processor.preprocess(INIT).to(torch.float32)
        scheduler.set_timesteps(STEPS)
        timesteps, _ = stock.get_timesteps(STEPS, STRENGTH, "cpu")
        latents = stock.prepare_latents(init, timesteps[:1].repeat(images), images, 1, torch.float32, "cpu", generator)
    else:
        scheduler.set_timesteps(STEPS)
        timesteps = scheduler.timesteps
        latents = randn_tensor((images, 4, 16, 16), generator=generator) * scheduler.init_noise_sigma

    def inputs(*names):
        context, pooled_embeds, time_ids = (torch.cat(parts) if parts[0] is not None else None
                                            for parts in zip(*(branches[name] for name in names)))
        added = {"text_embeds": pooled_embeds, "time_ids": time_ids} if key == "sdxl" else None
        return context, added

    step, cache = {"index": 0}, {}

    def gate_cross_attention(module, args, output):
        if step["index"] == gate - 1:
            cache[module] = (output[:images] + output[images:]) / 2 if guided else output
        return cache[module] if step["index"] >= gate else output

    handles = [m.register_forward_hook(gate_cross_attention) for d in (unet, controlnet) for m in cross_attention(d)]
    try:
        for index, t in enumerate(timesteps):
            step["index"] = index
            both = guided and index < gate
            names = ("negative", "positive") if both else ("negative",) if guided else ("positive",)
            context, added = inputs(*names)
            model_input = scheduler.scale_model_input(torch.cat([latents] * len(names)), t)
            cond = torch.cat([control] * len(names))
            down, mid = controlnet(model_input, t, encoder_hidden_states=context, controlnet_cond=cond,
                                   conditioning_scale=CONTROL_SCALE, guess_mode=False, added_cond_kwargs=added,
                                   return_dict=False)
            noise = unet(model_input, t, encoder_hidden_states=context, added_cond_kwargs=added,
                         down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            if both:
                uncond, text = noise.chunk(2)
                noise = uncond + GUIDANCE * (text - uncond)
            latents = scheduler.step(noise, t, latents).prev_sample
    finally:
        for handle in handles:
            handle.remove()
    return latents


def hooked_reference(key, components, gate, images, guided, **kwargs):
    stock = quiet(CLASSES[key][0](**components))
    with hooked_tgate(stock.scheduler, [stock.unet, stock.controlnet], gate, guided):
        return run(stock, key, images, GUIDANCE if guided else 1.0, **kwargs)


# --- tests -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", list(CLASSES))
def test_gate_at_the_steps_run_is_stock_bit_for_bit(key):
    stock_class, tgate_class, _, _, steps_run = CLASSES[key]
    components = components_for(key)
    stock = run(quiet(stock_class(**components)), key)
    pipe = quiet(tgate_class(**components))
    assert torch.equal(run(pipe, key, gate_step=steps_run), stock)  # img2img/inpainting: 3 steps run of 4
    assert not torch.equal(run(pipe, key, gate_step=steps_run - 1), stock)
    assert torch.equal(run(pipe, key), stock)  # a plain call after TGATE calls
    assert not hooks_left(pipe)


CASES = [(1, 1, True), (2, 2, True), (2, 1, False), (1, 2, False)]  # (gate, images, guided)


@pytest.mark.parametrize("key", ["sd", "sd-img2img", "sdxl"])
@pytest.mark.parametrize("gate, images, guided", CASES)
def test_pipeline_equals_an_explicit_loop(key, gate, images, guided):
    components = components_for(key)
    pipe = quiet(CLASSES[key][1](**components))
    latents = run(pipe, key, images, GUIDANCE if guided else 1.0, gate_step=gate)
    expected = explicit_controlnet(key, components, gate, images, guided)
    assert torch.allclose(latents, expected, atol=1e-5), (latents - expected).abs().max()


def test_hooked_reference_equals_the_explicit_loop():
    """The plain-hooks reference used below agrees with a written-out loop where both exist."""
    components = components_for("sd")
    assert torch.allclose(hooked_reference("sd", components, 2, 2, True),
                          explicit_controlnet("sd", components, 2, 2, True), atol=1e-5)


@pytest.mark.parametrize("key", ["sd-inpaint", "sdxl-img2img", "sdxl-inpaint"])
@pytest.mark.parametrize("gate, images, guided", CASES)
def test_pipeline_equals_the_stock_pipeline_with_tgate_hooks(key, gate, images, guided):
    components = components_for(key)
    pipe = quiet(CLASSES[key][1](**components))
    latents = run(pipe, key, images, GUIDANCE if guided else 1.0, gate_step=gate)
    expected = hooked_reference(key, components, gate, images, guided)
    assert torch.allclose(latents, expected, atol=1e-5), (latents - expected).abs().max()


@pytest.mark.parametrize("key", list(CLASSES))
def test_after_the_gate_unet_and_controlnet_run_one_sample_per_image_without_cross_attention(key):
    components = components_for(key)
    pipe = quiet(CLASSES[key][1](**components))
    unet, controlnet = components["unet"], components["controlnet"]
    recorded = {}

    def run_recording_controlnet():
        recorded["controlnet"] = record_denoiser_calls(
            controlnet, controlnet.conv_in, lambda: run(pipe, key, images=2, gate_step=2))

    unet_calls = record_denoiser_calls(unet, unet.conv_in, run_recording_controlnet)
    steps_run = CLASSES[key][4]
    assert len(unet_calls) == len(recorded["controlnet"]) == steps_run
    assert_gated_run(unet_calls, unet, gate=2, images=2, guided=True)
    assert_gated_run(recorded["controlnet"], controlnet, gate=2, images=2, guided=True)
    assert not hooks_left(pipe)


def test_multi_controlnet_equals_the_stock_pipeline_with_tgate_hooks():
    components = components_for("sd")
    components["controlnet"] = MultiControlNetModel([components["controlnet"], tiny_controlnet(components["unet"], 1)])
    pipe = quiet(TgateStableDiffusionControlNetPipeline(**components))
    latents = run(pipe, "sd", images=2, gate_step=2, image=[CONTROL, INIT])
    expected = hooked_reference("sd", components, 2, 2, True, image=[CONTROL, INIT])
    assert torch.allclose(latents, expected, atol=1e-5)


# --- guess mode --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sd", "sdxl-img2img"])
def test_guess_mode_under_guidance_is_refused(key):
    pipe = quiet(CLASSES[key][1](**components_for(key)))
    with pytest.raises(ValueError, match="guess mode under classifier-free guidance"):
        run(pipe, key, gate_step=2, guess_mode=True)
    assert not hooks_left(pipe)
    run(pipe, key, guess_mode=True)  # stock guess mode still runs


def test_controlnet_with_global_pool_conditions_is_guess_mode_and_refused():
    components = components_for("sd")
    components["controlnet"].register_to_config(global_pool_conditions=True)
    pipe = quiet(TgateStableDiffusionControlNetPipeline(**components))
    with pytest.raises(ValueError, match="global_pool_conditions"):
        run(pipe, "sd", gate_step=2)


def test_guess_mode_without_guidance_is_gated():
    """One batch, no cut: guess mode without guidance equals the stock pipeline with TGATE hooks."""
    components = components_for("sd")
    pipe = quiet(TgateStableDiffusionControlNetPipeline(**components))
    latents = run(pipe, "sd", guidance=1.0, gate_step=2, guess_mode=True)
    assert torch.allclose(latents, hooked_reference("sd", components, 2, 1, False, guess_mode=True), atol=1e-5)
