"""TGATE where people use diffusers beyond text-to-image: img2img and inpainting (the gate counts the steps run),
IP-Adapter, LoRA scales, and ``tgate_class``/``tgate_pipeline`` for pipeline classes this repository did not write.

References are written out here (an explicit SD loop with IP-Adapter embeddings and LoRA scales) or the stock
pipeline with plain torch hooks doing TGATE (``tests/hooked_reference.py``); neither uses ``common/``.
"""

import diffusers
import numpy as np
import pytest
import torch
from diffusers import (
    DDPMPipeline,
    StableDiffusionAdapterPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPAGPipeline,
    StableDiffusionPipeline,
    StableDiffusionSAGPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    T2IAdapter,
    UNet2DConditionModel,
    WanPipeline,
)
from diffusers.utils.torch_utils import randn_tensor
from peft import LoraConfig
from PIL import Image

from common.any_pipeline import tgate_class, tgate_pipeline
from common.pipeline import TgateMixin
from common.tiny import TINY_UNET, tiny_sd_components, tiny_sdxl_components
from common.tiny_pipelines import TINY_IP_EMBED_DIM, load_tiny_ip_adapter
from SD_1_5.pipeline import (
    TgateStableDiffusionImg2ImgPipeline,
    TgateStableDiffusionInpaintPipeline,
    TgateStableDiffusionPipeline,
)
from SDXL.pipeline import (
    TgateStableDiffusionXLControlNetImg2ImgPipeline,
    TgateStableDiffusionXLImg2ImgPipeline,
    TgateStableDiffusionXLInpaintPipeline,
)
from tests.hooked_reference import cross_attention, hooked_tgate
from tests.tgate_checks import assert_gated_run, pipeline_is_stock, quiet, record_denoiser_calls

STEPS = 4
GUIDANCE = 6.0
PROMPTS = ["a coral reef", "a red bus"]
_rng = np.random.default_rng(2)
INIT = Image.fromarray(_rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
MASK = Image.fromarray(np.where(np.arange(32)[:, None, None] < 12, 255, 0).repeat(32, 1).repeat(3, 2).astype(np.uint8))


def run(pipe, images=1, guidance=GUIDANCE, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPTS[:images], num_inference_steps=STEPS, guidance_scale=guidance, generator=generator,
                output_type="latent", **kwargs).images


# --- img2img and inpainting: the gate counts the steps run after strength ------------------------------------------

IMAGE_CLASSES = {  # key -> (stock, TGATE, components, image arguments)
    "sd-img2img": (StableDiffusionImg2ImgPipeline, TgateStableDiffusionImg2ImgPipeline, tiny_sd_components,
                   dict(image=INIT)),
    "sd-inpaint": (StableDiffusionInpaintPipeline, TgateStableDiffusionInpaintPipeline, tiny_sd_components,
                   dict(image=INIT, mask_image=MASK)),
    "sdxl-img2img": (StableDiffusionXLImg2ImgPipeline, TgateStableDiffusionXLImg2ImgPipeline, tiny_sdxl_components,
                     dict(image=INIT)),
    "sdxl-inpaint": (StableDiffusionXLInpaintPipeline, TgateStableDiffusionXLInpaintPipeline, tiny_sdxl_components,
                     dict(image=INIT, mask_image=MASK)),
}


@pytest.mark.parametrize("key", list(IMAGE_CLASSES))
@pytest.mark.parametrize("strength, steps_run", [(0.5, 2), (0.75, 3)])
def test_gate_at_the_steps_run_is_stock_and_the_batch_pattern_follows_the_steps_run(key, strength, steps_run):
    stock_class, tgate_class_, make, image = IMAGE_CLASSES[key]
    components = make(seed=0)
    call = dict(image, strength=strength)
    stock = run(quiet(stock_class(**components)), **call)
    pipe = quiet(tgate_class_(**components))
    assert torch.equal(run(pipe, gate_step=steps_run, **call), stock)  # of 4 steps, int(4 * strength) run
    unet = components["unet"]
    calls = record_denoiser_calls(unet, unet.conv_in, lambda: run(pipe, images=2, gate_step=1, **call))
    assert len(calls) == steps_run
    assert_gated_run(calls, unet, gate=1, images=2, guided=True)
    assert pipeline_is_stock(pipe)


@pytest.mark.parametrize("key", list(IMAGE_CLASSES))
@pytest.mark.parametrize("gate, images, guided", [(2, 2, True), (1, 1, False)])
def test_image_pipelines_equal_the_stock_pipeline_with_tgate_hooks(key, gate, images, guided):
    stock_class, tgate_class_, make, image = IMAGE_CLASSES[key]
    components = make(seed=0)
    guidance = GUIDANCE if guided else 1.0
    latents = run(quiet(tgate_class_(**components)), images, guidance, gate_step=gate, strength=0.75, **image)
    stock = quiet(stock_class(**components))
    with hooked_tgate(stock.scheduler, [stock.unet], gate, guided):
        expected = run(stock, images, guidance, strength=0.75, **image)
    assert torch.allclose(latents, expected, atol=1e-5), (latents - expected).abs().max()


# --- an explicit SD loop with IP-Adapter embeddings and LoRA scales ----------------------------------------------


@torch.no_grad()
def explicit_sd(components, gate, images, guided, ip_embeds=None, lora_scale=None, seed=0):
    """TGATE on SD one step at a time; ``ip_embeds`` is ``[negative, positive]`` (guided) or positive image
    embeddings, which enter every cross-attention module through the IP-Adapter; ``lora_scale`` goes to the UNet
    at every evaluation (``cross_attention_kwargs={"scale": ...}``). Cross-attention outputs, IP part included,
    are cached at step ``gate - 1`` (mean of the halves if guided) and reused after."""
    encoder = StableDiffusionPipeline(**components)
    positive, negative = encoder.encode_prompt(PROMPTS[:images], "cpu", 1, guided)
    if ip_embeds is not None:  # one IP image for the whole batch: the pipeline repeats it per image
        branches = ip_embeds.chunk(2) if guided else (None, ip_embeds)
        ip = {name: torch.cat([embeds] * images) for name, embeds in zip(("negative", "positive"), branches)
              if embeds is not None}
    text = {"negative": negative, "positive": positive}
    unet, scheduler = components["unet"], components["scheduler"]
    latents = randn_tensor((images, 4, 16, 16), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(STEPS)
    latents = latents * scheduler.init_noise_sigma
    step, cache = {"index": 0}, {}

    def gate_cross_attention(module, args, output):
        if step["index"] == gate - 1:
            cache[module] = (output[:images] + output[images:]) / 2 if guided else output
        return cache[module] if step["index"] >= gate else output

    handles = [m.register_forward_hook(gate_cross_attention) for m in cross_attention(unet)]
    try:
        for index, t in enumerate(scheduler.timesteps):
            step["index"] = index
            both = guided and index < gate
            names = ("negative", "positive") if both else ("negative",) if guided else ("positive",)
            kwargs = {"encoder_hidden_states": torch.cat([text[name] for name in names])}
            if ip_embeds is not None:
                kwargs["added_cond_kwargs"] = {"image_embeds": [torch.cat([ip[name] for name in names])]}
            if lora_scale is not None:
                kwargs["cross_attention_kwargs"] = {"scale": lora_scale}
            model_input = scheduler.scale_model_input(torch.cat([latents] * len(names)), t)
            noise = unet(model_input, t, **kwargs).sample
            if both:
                uncond, cond = noise.chunk(2)
                noise = uncond + GUIDANCE * (cond - uncond)
            latents = scheduler.step(noise, t, latents).prev_sample
    finally:
        for handle in handles:
            handle.remove()
    return latents


# --- IP-Adapter --------------------------------------------------------------------------------------------------


def ip_components(seed=0):
    components = tiny_sd_components(seed=seed)
    load_tiny_ip_adapter(StableDiffusionPipeline(**components), seed=seed)  # in place, on the shared UNet
    return components


def ip_embeds(guided, seed=0):
    """Pre-computed embeddings of one IP image (no image encoder): ``[negative, positive]`` under guidance.
    The pipeline repeats them for every image of the batch."""
    positive = torch.randn(1, 1, TINY_IP_EMBED_DIM, generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.zeros_like(positive), positive]) if guided else positive


def ip_projections(unet):
    """The IP-Adapter's key and value projections of every cross-attention module."""
    return [linear for m in cross_attention(unet) for linear in (*m.processor.to_k_ip, *m.processor.to_v_ip)]


def test_ip_adapter_gate_at_steps_is_stock_bit_for_bit():
    components = ip_components()
    embeds = [ip_embeds(True)]
    stock = run(quiet(StableDiffusionPipeline(**components)), ip_adapter_image_embeds=embeds)
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    assert torch.equal(run(pipe, gate_step=STEPS, ip_adapter_image_embeds=embeds), stock)
    assert torch.equal(run(pipe, ip_adapter_image_embeds=embeds), stock)
    assert not torch.equal(run(pipe, ip_adapter_image_embeds=[ip_embeds(True, seed=1)]), stock)  # it matters


@pytest.mark.parametrize("gate, images, guided", [(2, 2, True), (1, 1, True), (2, 1, False)])
def test_ip_adapter_equals_an_explicit_loop(gate, images, guided):
    components = ip_components()
    embeds = ip_embeds(guided)
    latents = run(quiet(TgateStableDiffusionPipeline(**components)), images, GUIDANCE if guided else 1.0,
                  gate_step=gate, ip_adapter_image_embeds=[embeds])
    expected = explicit_sd(components, gate, images, guided, ip_embeds=embeds)
    assert torch.allclose(latents, expected, atol=1e-5), (latents - expected).abs().max()


def test_ip_adapter_after_the_gate_no_cross_attention_and_no_ip_projection_runs():
    components = ip_components()
    unet = components["unet"]
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    ip_runs = []
    handles = [p.register_forward_pre_hook(lambda module, args: ip_runs.append(args[0].shape[0]))
               for p in ip_projections(unet)]
    step_of_ip_run = []
    try:
        def run_counting():
            run(pipe, images=2, gate_step=2, ip_adapter_image_embeds=[ip_embeds(True)],
                callback_on_step_end=lambda p, i, t, tensors: step_of_ip_run.append(len(ip_runs)) or tensors)

        calls = record_denoiser_calls(unet, unet.conv_in, run_counting)
    finally:
        for handle in handles:
            handle.remove()
    assert_gated_run(calls, unet, gate=2, images=2, guided=True)
    per_step = len(ip_projections(unet))
    assert step_of_ip_run == [per_step, 2 * per_step, 2 * per_step, 2 * per_step]  # none after step 1
    assert ip_runs == [4] * (2 * per_step)  # the guidance batch: 2 images x 2 branches


def test_ip_adapter_contribution_is_in_the_cache():
    """Two IP embeddings, same prompt and noise, gate 2: the cached cross-attention outputs that the gated steps
    return differ, and so do the results; the IP-Adapter runs only in steps 0 and 1."""
    components = ip_components()
    unet = components["unet"]
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    runs = {}
    for seed in (0, 1):
        runs[seed] = record_denoiser_calls(
            unet, unet.conv_in,
            lambda: runs.setdefault(f"latents{seed}",
                                    run(pipe, gate_step=2, ip_adapter_image_embeds=[ip_embeds(True, seed)])))
    cached = [runs[seed][STEPS - 1].cross_attention for seed in (0, 1)]
    assert all(not torch.allclose(a, b) for a, b in zip(*cached))
    assert not torch.allclose(runs["latents0"], runs["latents1"])


# --- LoRA --------------------------------------------------------------------------------------------------------


def lora_components(seed=0):
    components = tiny_sd_components(seed=seed)
    torch.manual_seed(seed)
    components["unet"].add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                              target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    return components


def test_lora_scale_reaches_guided_and_gated_steps():
    components = lora_components()
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    for scale in (0.3, 1.0):
        latents = run(pipe, images=2, gate_step=2, cross_attention_kwargs={"scale": scale})
        expected = explicit_sd(components, 2, 2, True, lora_scale=scale)
        assert torch.allclose(latents, expected, atol=1e-5), (scale, (latents - expected).abs().max())
    assert not torch.allclose(run(pipe, gate_step=2, cross_attention_kwargs={"scale": 0.3}),
                              run(pipe, gate_step=2, cross_attention_kwargs={"scale": 1.0}))
    stock = run(quiet(StableDiffusionPipeline(**components)), cross_attention_kwargs={"scale": 0.3})
    assert torch.equal(run(pipe, gate_step=STEPS, cross_attention_kwargs={"scale": 0.3}), stock)


# --- any pipeline: tgate_class / tgate_pipeline ------------------------------------------------------------------


def adapter_components(seed=0):
    components = tiny_sd_components(seed=seed)
    components.pop("image_encoder")
    torch.manual_seed(seed)
    components["adapter"] = T2IAdapter(in_channels=3, channels=[16, 32], num_res_blocks=1, downscale_factor=2,
                                       adapter_type="full_adapter").eval()
    return components


def test_tgate_class_prefers_the_repository_classes_and_caches_the_ones_it_builds():
    assert tgate_class(StableDiffusionXLControlNetImg2ImgPipeline) is TgateStableDiffusionXLControlNetImg2ImgPipeline
    assert tgate_class(StableDiffusionPipeline) is TgateStableDiffusionPipeline
    assert tgate_class(TgateStableDiffusionPipeline) is TgateStableDiffusionPipeline
    built = tgate_class(StableDiffusionAdapterPipeline)
    assert built is tgate_class(StableDiffusionAdapterPipeline)
    assert issubclass(built, TgateMixin) and issubclass(built, StableDiffusionAdapterPipeline)
    assert built.__name__ == "TgateStableDiffusionAdapterPipeline" and diffusers.TgateStableDiffusionAdapterPipeline is built
    assert "gate_step" in str(__import__("inspect").signature(built.__call__))


def test_tgate_pipeline_gates_a_class_we_did_not_write():
    """T2I-Adapter: its residuals enter the UNet as a list sized like the guidance batch, and are cut with it."""
    components = adapter_components()
    stock = quiet(StableDiffusionAdapterPipeline(**components))
    pipe = quiet(tgate_pipeline(stock))
    assert type(pipe).__name__ == "TgateStableDiffusionAdapterPipeline" and pipe.unet is stock.unet
    expected_stock = run(stock, image=INIT)
    assert torch.equal(run(pipe, gate_step=STEPS, image=INIT), expected_stock)
    latents = run(pipe, images=2, gate_step=2, image=[INIT, INIT])  # one adapter image per prompt
    with hooked_tgate(stock.scheduler, [stock.unet], 2, True):
        expected = run(stock, images=2, image=[INIT, INIT])
    assert torch.allclose(latents, expected, atol=1e-5)
    assert torch.equal(run(pipe, image=INIT), expected_stock)
    assert pipeline_is_stock(pipe)


@pytest.mark.parametrize("pipeline_class, message", [
    (StableDiffusionPAGPipeline, "perturbed-attention guidance"),
    (StableDiffusionSAGPipeline, r"calls its denoiser in \d+ places"),
    (DDPMPipeline, "neither a do_classifier_free_guidance property nor a guidance_scale parameter"),
    (diffusers.KandinskyV22CombinedPipeline, "no sampling loop on self.progress_bar"),
    (diffusers.KandinskyV22PriorPipeline, "no denoiser component"),
])
def test_tgate_class_refuses_what_it_cannot_gate(pipeline_class, message):
    with pytest.raises(ValueError, match=message):
        tgate_class(pipeline_class)


def test_two_call_guidance_is_accepted_and_its_class_is_the_repositorys():
    """Wan guides with one call per branch: gated since the gate reads its layout on the tensors (test_wan_gate)."""
    from Wan.pipeline import TgateWanPipeline

    assert tgate_class(WanPipeline) is TgateWanPipeline


def test_tgate_class_takes_a_pipeline_class():
    with pytest.raises(TypeError, match="diffusers pipeline class"):
        tgate_class(UNet2DConditionModel)


def test_tgate_pipeline_refuses_a_denoiser_without_cross_attention():
    components = tiny_sd_components(seed=0)
    components["unet"] = UNet2DConditionModel(
        **TINY_UNET, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        mid_block_type=None, cross_attention_dim=32,
    )
    stock = StableDiffusionPipeline(**components)
    with pytest.raises(ValueError, match="no cross-attention module"):
        tgate_pipeline(stock)
    with pytest.raises(ValueError, match="no cross-attention module"):  # a TGATE class refuses it at the call
        run(quiet(TgateStableDiffusionPipeline(**components)), gate_step=2)
