"""TGATE on video pipelines: AnimateDiff (text to video) and Stable Video Diffusion (image to video), tiny components.

AnimateDiff is checked against an explicit step-by-step loop written out here; SVD (image encoder, noise
augmentation, per-frame guidance) against the stock pipeline run with plain torch hooks doing TGATE
(``tests/hooked_reference.py``). Neither reference uses ``common/``.
"""

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline, StableVideoDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from AnimateDiff.pipeline import TgateAnimateDiffPipeline, TgateAnimateDiffVideoToVideoPipeline
from common.tiny_pipelines import tiny_animatediff_components, tiny_svd_components
from SVD.pipeline import TgateStableVideoDiffusionPipeline
from tests.hooked_reference import cross_attention, hooked_tgate
from tests.tgate_checks import assert_gated_run, quiet, record_denoiser_calls

STEPS = 4
FRAMES = 3
GUIDANCE = 6.0
PROMPTS = ["a coral reef", "a red bus"]
_rng = np.random.default_rng(1)
IMAGES = [Image.fromarray(_rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2)]
CASES = [(1, 1, True), (2, 2, True), (2, 1, False), (1, 2, False)]  # (gate, videos, guided)


def hooks_left(pipe) -> bool:
    return any("forward" in m.__dict__ or hasattr(m, "_diffusers_hook") for m in (pipe.unet, *cross_attention(pipe.unet)))


# --- AnimateDiff -------------------------------------------------------------------------------------------------


def animate(pipe, videos=1, guidance=GUIDANCE, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPTS[:videos], num_frames=FRAMES, num_inference_steps=STEPS, guidance_scale=guidance,
                generator=generator, output_type="latent", **kwargs).frames


@torch.no_grad()
def explicit_animatediff(components, gate, videos, guided, seed=0):
    """TGATE on AnimateDiff, one step at a time. The latents are ``[videos, 4, frames, 16, 16]``; the UNet takes
    the text once per frame (``[negative x videos, positive x videos]``, each repeated ``frames`` times); every
    frame's cross-attention is cached at step ``gate - 1`` (mean of the halves if guided) and reused after."""
    stock = AnimateDiffPipeline(**components)
    positive, negative = stock.encode_prompt(PROMPTS[:videos], "cpu", 1, guided)
    unet, scheduler = components["unet"], components["scheduler"]
    latents = randn_tensor((videos, 4, FRAMES, 16, 16), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(STEPS)
    latents = latents * scheduler.init_noise_sigma
    step, cache = {"index": 0}, {}

    def gate_cross_attention(module, args, output):
        if step["index"] == gate - 1:
            half = videos * FRAMES
            cache[module] = (output[:half] + output[half:]) / 2 if guided else output
        return cache[module] if step["index"] >= gate else output

    handles = [m.register_forward_hook(gate_cross_attention) for m in cross_attention(unet)]
    try:
        for index, t in enumerate(scheduler.timesteps):
            step["index"] = index
            both = guided and index < gate
            context = torch.cat([negative, positive]) if both else negative if guided else positive
            model_input = scheduler.scale_model_input(torch.cat([latents] * (2 if both else 1)), t)
            noise = unet(model_input, t, encoder_hidden_states=context.repeat_interleave(FRAMES, dim=0)).sample
            if both:
                uncond, text = noise.chunk(2)
                noise = uncond + GUIDANCE * (text - uncond)
            latents = scheduler.step(noise, t, latents).prev_sample
    finally:
        for handle in handles:
            handle.remove()
    return latents


def test_animatediff_gate_at_steps_is_stock_bit_for_bit_and_a_plain_call_after_is_stock():
    components = tiny_animatediff_components(seed=0)
    stock = animate(quiet(AnimateDiffPipeline(**components)))
    pipe = quiet(TgateAnimateDiffPipeline(**components))
    assert torch.equal(animate(pipe, gate_step=STEPS), stock)
    assert not torch.equal(animate(pipe, gate_step=STEPS - 1), stock)
    assert torch.equal(animate(pipe), stock)
    assert not hooks_left(pipe)


@pytest.mark.parametrize("gate, videos, guided", CASES)
def test_animatediff_equals_an_explicit_loop(gate, videos, guided):
    components = tiny_animatediff_components(seed=0)
    latents = animate(quiet(TgateAnimateDiffPipeline(**components)), videos, GUIDANCE if guided else 1.0,
                      gate_step=gate)
    expected = explicit_animatediff(components, gate, videos, guided)
    assert latents.shape == (videos, 4, FRAMES, 16, 16)
    assert torch.allclose(latents, expected, atol=1e-5), (latents - expected).abs().max()


def test_animatediff_after_the_gate_every_frame_skips_cross_attention_on_one_branch():
    components = tiny_animatediff_components(seed=0)
    pipe = quiet(TgateAnimateDiffPipeline(**components))
    unet = components["unet"]
    calls = record_denoiser_calls(unet, unet.conv_in, lambda: animate(pipe, videos=2, gate_step=2))
    # the UNet's samples are frames: 2 videos x 3 frames per branch
    assert_gated_run(calls, unet, gate=2, images=2 * FRAMES, guided=True)


def test_animatediff_motion_modules_keep_running_after_the_gate():
    components = tiny_animatediff_components(seed=0)
    pipe = quiet(TgateAnimateDiffPipeline(**components))
    motion = [m for name, m in components["unet"].named_modules() if name.endswith("motion_modules.0")]
    runs = []
    handles = [m.register_forward_hook(lambda module, args, out: runs.append(out.shape[0])) for m in motion]
    try:
        animate(pipe, gate_step=1)
    finally:
        for handle in handles:
            handle.remove()
    assert runs == [2 * FRAMES] * len(motion) + [FRAMES] * len(motion) * (STEPS - 1)


def test_animatediff_video_to_video_counts_the_steps_run_and_equals_the_stock_pipeline_with_tgate_hooks():
    components = tiny_animatediff_components(seed=0)
    clip = [IMAGES[0], IMAGES[1], IMAGES[0]]

    def restyle(pipe, **kwargs):
        return pipe(video=clip, prompt=PROMPTS[:1], strength=0.75, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    generator=torch.Generator().manual_seed(0), output_type="latent", **kwargs).frames

    stock_pipe = quiet(AnimateDiffVideoToVideoPipeline(**components))
    stock = restyle(stock_pipe)
    pipe = quiet(TgateAnimateDiffVideoToVideoPipeline(**components))
    assert torch.equal(restyle(pipe, gate_step=3), stock)  # 3 steps run of 4 at strength 0.75
    unet = components["unet"]
    calls = record_denoiser_calls(unet, unet.conv_in, lambda: restyle(pipe, gate_step=2))
    assert [call.batch for call in calls] == [2 * FRAMES, 2 * FRAMES, FRAMES]
    with hooked_tgate(stock_pipe.scheduler, [stock_pipe.unet], 2, True):
        expected = restyle(stock_pipe)
    assert torch.allclose(restyle(pipe, gate_step=2), expected, atol=1e-5)


# --- Stable Video Diffusion --------------------------------------------------------------------------------------


def video(pipe, videos=1, guided=True, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return pipe(IMAGES[:videos], height=32, width=32, num_frames=FRAMES, num_inference_steps=STEPS,
                min_guidance_scale=1.0, max_guidance_scale=3.0 if guided else 1.0, decode_chunk_size=FRAMES,
                generator=generator, output_type="latent", **kwargs).frames


def test_svd_gate_at_steps_is_stock_bit_for_bit_and_a_plain_call_after_is_stock():
    components = tiny_svd_components(seed=0)
    stock = video(quiet(StableVideoDiffusionPipeline(**components)))
    pipe = quiet(TgateStableVideoDiffusionPipeline(**components))
    assert torch.equal(video(pipe, gate_step=STEPS), stock)
    assert not torch.equal(video(pipe, gate_step=STEPS - 1), stock)
    assert torch.equal(video(pipe), stock)
    assert not hooks_left(pipe)


@pytest.mark.parametrize("gate, videos, guided", CASES)
def test_svd_equals_the_stock_pipeline_with_tgate_hooks(gate, videos, guided):
    components = tiny_svd_components(seed=0)
    latents = video(quiet(TgateStableVideoDiffusionPipeline(**components)), videos, guided, gate_step=gate)
    stock = quiet(StableVideoDiffusionPipeline(**components))
    # The official TgateSVDLoader after the gate: the real image latents (in the sample's channels) and image
    # embedding, SVD's positive branch (its negative one holds zeros).
    with hooked_tgate(stock.scheduler, [stock.unet], gate, guided, positive=("sample", "encoder_hidden_states")):
        expected = video(stock, videos, guided)
    assert latents.shape == (videos, FRAMES, 4, 16, 16)
    assert torch.allclose(latents, expected, atol=1e-5), (latents - expected).abs().max()


def test_svd_after_the_gate_cross_attention_on_the_image_embedding_is_cached_on_one_branch():
    components = tiny_svd_components(seed=0)
    pipe = quiet(TgateStableVideoDiffusionPipeline(**components))
    unet = components["unet"]
    calls = record_denoiser_calls(unet, unet.conv_in, lambda: video(pipe, videos=2, gate_step=2))
    # spatial cross-attention runs per frame, temporal cross-attention per pixel; both see the image embedding
    modules = cross_attention(unet)
    assert len(modules) == 8
    assert [call.batch for call in calls] == [2 * 2 * FRAMES] * 2 + [2 * FRAMES] * (STEPS - 2)
    assert [call.projections for call in calls] == [4 * len(modules)] * 2 + [0] * (STEPS - 2)
    cache = [sum(output.chunk(2)) / 2 for output in calls[1].cross_attention]  # mean of the halves at gate - 1
    for call in calls[2:]:
        assert len(call.cross_attention) == len(cache)
        assert all(torch.equal(got, cached) for got, cached in zip(call.cross_attention, cache))


def test_svd_per_frame_guidance_returns_the_single_branch_prediction_unchanged():
    """SVD's guidance scale is a tensor rising per frame and ``do_classifier_free_guidance`` is read each step.
    After the gate guidance stays on in the pipeline, and its formula hands the scheduler exactly the UNet's
    single-branch prediction for every frame."""
    components = tiny_svd_components(seed=0)
    pipe = quiet(TgateStableVideoDiffusionPipeline(**components))
    unet, scheduler = components["unet"], components["scheduler"]
    predictions, given, guidance = [], [], []
    handle = unet.conv_out.register_forward_hook(lambda module, args, out: predictions.append(out))
    stock_step = scheduler.step

    def recording_step(model_output, *args, **kwargs):
        given.append(model_output)
        return stock_step(model_output, *args, **kwargs)

    def record_guidance(pipeline, index, t, tensors):
        guidance.append((pipeline.do_classifier_free_guidance, pipeline.guidance_scale.flatten().tolist()))
        return tensors

    scheduler.step = recording_step
    try:
        video(pipe, videos=2, gate_step=2, callback_on_step_end=record_guidance)
    finally:
        del scheduler.step
        handle.remove()
    scales = [1.0, 2.0, 3.0] * 2  # min 1 to max 3 over the 3 frames, per video
    assert all(bool(cfg) and scale == pytest.approx(scales) for cfg, scale in guidance)
    assert len(given) == STEPS
    for step in range(2, STEPS):  # gated steps: one branch, [videos x frames, 4, 16, 16]
        single = predictions[step].reshape(2, FRAMES, *predictions[step].shape[1:])
        assert torch.equal(given[step], single)
    uncond, cond = predictions[1].reshape(4, FRAMES, 4, 16, 16).chunk(2)  # a guided step: the formula mixes
    assert not torch.equal(given[1], uncond) and not torch.equal(given[1], cond)
