"""The gate knows its batch: per-sample inputs are named, the kept branch follows one rule, and what TGATE cannot
gate exactly is refused. References are the stock pipelines with plain torch hooks (``tests/hooked_reference.py``,
its modules and inputs named per architecture) or written out here; none uses ``common/``'s rules.
"""

import logging

import numpy as np
import pytest
import torch
from diffusers import (
    HunyuanDiTPipeline,
    StableDiffusionGLIGENPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.attention_processor import Attention
from PIL import Image

from common.any_pipeline import tgate_class, tgate_pipeline
from common.branches import UnknownDenoiserError
from common.gate import gated_sampling
from common.pipeline import TgateMixin
from common.tiny import TINY_CROSS_ATTENTION_DIM, TINY_UNET, tiny_sd_components
from SD_1_5.pipeline import TgateStableDiffusionImg2ImgPipeline, TgateStableDiffusionPipeline
from tests.hooked_reference import cross_attention, hooked_tgate
from tests.tgate_checks import quiet
from common.tiny_dit import tiny_hunyuandit_components

STEPS = 3
GUIDANCE = 5.0
PROMPTS = ["a coral reef", "a red bus", "a tall tree"]


def latents(pipe, images, guidance=GUIDANCE, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPTS[:images], num_inference_steps=STEPS, guidance_scale=guidance, generator=generator,
                output_type="latent", **kwargs).images


# --- HunyuanDiT: its rotary table is never cut --------------------------------------------------------------------

HUNYUAN = dict(height=32, width=32, use_resolution_binning=False)


@pytest.mark.parametrize("images", [1, 2, 3])
def test_hunyuandit_through_tgate_class_equals_the_hooked_reference_at_every_batch(images):
    """At 32 px the rotary table has 4 rows, a multiple of the guidance batch of 1 and 2 images: a size rule cut it."""
    components = tiny_hunyuandit_components()
    stock = quiet(HunyuanDiTPipeline(**components))
    pipe = quiet(tgate_pipeline(stock))
    assert type(pipe) is tgate_class(HunyuanDiTPipeline)
    got = latents(pipe, images, gate_step=2, **HUNYUAN)
    with hooked_tgate(stock.scheduler, [stock.transformer], 2, True):
        expected = latents(stock, images, **HUNYUAN)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    assert torch.equal(latents(pipe, images, gate_step=STEPS, **HUNYUAN), latents(stock, images, **HUNYUAN))


# --- Added-KV attention: refused -----------------------------------------------------------------------------------

def added_kv_unet():
    """DeepFloyd IF's / Kandinsky's block types: text keys join the image's own keys in one softmax."""
    return UNet2DConditionModel(
        **{**TINY_UNET, "layers_per_block": 1},
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=8,
    ).eval()


def test_added_kv_attention_is_refused_with_the_reason():
    components = {**tiny_sd_components(), "unet": added_kv_unet()}
    assert any(isinstance(m, Attention) and m.added_kv_proj_dim for m in components["unet"].modules())
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    with pytest.raises(ValueError, match="added-KV attention"):
        latents(pipe, 1, gate_step=2)
    with pytest.raises(ValueError, match="added-KV attention"):
        tgate_pipeline(StableDiffusionPipeline(**components))
    stock = latents(quiet(StableDiffusionPipeline(**components)), 1)
    assert torch.equal(latents(pipe, 1), stock)  # without a gate: the stock pipeline, and no hook left behind
    assert not any(hasattr(m, "_diffusers_hook") for m in components["unet"].modules())


# --- GLIGEN: the grounding boxes only the positive branch carries are kept ------------------------------------------

def gligen_components():
    components = tiny_sd_components()
    del components["image_encoder"]  # GLIGEN's pipeline has none
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **TINY_UNET,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_type="gated",
    ).eval()
    for name, parameter in unet.named_parameters():  # the fusers' gates start closed (tanh(0)): open them
        if name.endswith(("alpha_attn", "alpha_dense")):
            parameter.data.fill_(1.0)
    return {**components, "unet": unet}


GLIGEN = dict(gligen_phrases=["a bus"], gligen_boxes=[[0.1, 0.2, 0.6, 0.9]], gligen_scheduled_sampling_beta=1.0)


@pytest.mark.parametrize("images", [1, 2])
def test_gligen_keeps_its_boxes_after_the_gate(images):
    components = gligen_components()
    stock = quiet(StableDiffusionGLIGENPipeline(**components))
    pipe = quiet(tgate_pipeline(stock))
    got = latents(pipe, images, gate_step=1, **GLIGEN)
    with hooked_tgate(stock.scheduler, [stock.unet], 1, True, positive=("cross_attention_kwargs.gligen",)):
        expected = latents(stock, images, **GLIGEN)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    with hooked_tgate(stock.scheduler, [stock.unet], 1, True):  # the negative half's boxes: masked out
        dropped = latents(stock, images, **GLIGEN)
    assert not torch.allclose(got, dropped, atol=1e-4)


# --- No silent stock ----------------------------------------------------------------------------------------------

def test_a_gate_the_run_never_reaches_is_a_warning_naming_it(caplog):
    pipe = quiet(TgateStableDiffusionImg2ImgPipeline(**tiny_sd_components()))
    image = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    with caplog.at_level(logging.WARNING, logger="tgate"):
        pipe(PROMPTS[0], image=image, strength=0.3, num_inference_steps=10, gate_step=5, output_type="latent")
    assert "gate_step=5 is never reached" in caplog.text and "runs 3 steps" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tgate"):
        pipe(PROMPTS[0], image=image, strength=0.3, num_inference_steps=10, gate_step=2, output_type="latent")
    assert "never reached" not in caplog.text


# --- A module called twice per evaluation keeps a cache per call ----------------------------------------------------

def tiled_components():
    """A transformer block run on the two halves of the token grid, one call each (a tiled denoiser)."""
    components = tiny_sd_components()
    block = components["unet"].down_blocks[0].attentions[0].transformer_blocks[0]
    whole = block.forward

    def two_tiles(hidden_states, *args, **kwargs):
        first, second = hidden_states.chunk(2, dim=1)
        return torch.cat([whole(first, *args, **kwargs), whole(second, *args, **kwargs)], dim=1)

    block.forward = two_tiles
    return components


def test_a_module_called_twice_per_evaluation_keeps_one_cache_per_call():
    components = tiled_components()
    stock = quiet(StableDiffusionPipeline(**components))
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    got = latents(pipe, 2, gate_step=2)
    with hooked_tgate(stock.scheduler, [stock.unet], 2, True):  # its cache is keyed by call site
        expected = latents(stock, 2)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    tiled = components["unet"].down_blocks[0].attentions[0].transformer_blocks[0].attn2
    last_call = {}  # what a cache per module would reuse: the second tile's output, for both tiles

    def per_module_cache(module, args, output):
        step = stock.scheduler._step_index or 0
        if step == 1:
            last_call["output"] = sum(output.chunk(2)) / 2
        return last_call["output"] if step >= 2 else output

    with hooked_tgate(stock.scheduler, [stock.unet], 2, True):
        handle = tiled.register_forward_hook(per_module_cache)  # after the reference's hook: it has the last word
        try:
            wrong = latents(stock, 2)
        finally:
            handle.remove()
    assert not torch.allclose(got, wrong, atol=1e-4)


def test_a_module_skipped_at_the_step_before_the_gate_is_named_in_the_error():
    components = tiny_sd_components()
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    block = components["unet"].down_blocks[0].attentions[0]
    original = block.forward

    def skipped_at_step_1(hidden_states, *args, **kwargs):  # a block cache skipping this block at step 1
        return (hidden_states,) if pipe.scheduler._step_index == 1 else original(hidden_states, *args, **kwargs)

    block.forward = skipped_at_step_1
    with pytest.raises(RuntimeError, match=r"down_blocks\.0\.attentions\.0\..*did not run at step 1.*FirstBlockCache"):
        latents(pipe, 1, gate_step=2)


# --- Branch order, checked on the tensors -------------------------------------------------------------------------

class OrderedGuidancePipeline(StableDiffusionPipeline):
    """A minimal text-to-image loop whose guidance batch is ``[positive, negative]`` when ``positive_first``."""

    positive_first = True

    @torch.no_grad()
    def __call__(self, prompt, num_inference_steps=2, guidance_scale=5.0, generator=None):
        self._guidance_scale = guidance_scale  # what the do_classifier_free_guidance property reads
        positive, negative = self.encode_prompt(prompt, "cpu", 1, True)
        text = torch.cat([positive, negative] if self.positive_first else [negative, positive])
        sample = torch.randn((len(prompt), 4, 16, 16), generator=generator)
        self.scheduler.set_timesteps(num_inference_steps)
        for t in self.progress_bar(self.scheduler.timesteps):
            prediction = self.unet(torch.cat([sample] * 2), t, encoder_hidden_states=text).sample
            first, second = prediction.chunk(2)
            cond, uncond = (first, second) if self.positive_first else (second, first)
            sample = self.scheduler.step(uncond + guidance_scale * (cond - uncond), t, sample).prev_sample
        return sample


class NegativeFirstPipeline(OrderedGuidancePipeline):
    positive_first = False


def test_a_positive_first_guidance_batch_is_refused_on_its_tensors():
    components = tiny_sd_components()
    positive_first = quiet(tgate_class(OrderedGuidancePipeline)(**components))
    with pytest.raises(ValueError, match=r"\[positive, negative\] \(positive first\)"):
        positive_first(["a red bus"], gate_step=1)
    negative_first = quiet(tgate_class(NegativeFirstPipeline)(**components))
    stock = quiet(NegativeFirstPipeline(**components))
    assert torch.equal(negative_first(["a red bus"], generator=torch.Generator().manual_seed(0), gate_step=2),
                       stock(["a red bus"], generator=torch.Generator().manual_seed(0)))


# --- What the gate knows, and installs ------------------------------------------------------------------------------

class UnknownDenoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn2 = Attention(8, cross_attention_dim=8)

    def forward(self, sample, context):
        return self.attn2(sample, context)


def test_a_denoiser_whose_per_sample_inputs_are_unknown_is_refused_before_any_hook():
    denoiser = UnknownDenoiser()
    with pytest.raises(UnknownDenoiserError, match="UnknownDenoiser.*PER_SAMPLE_INPUTS"):
        with gated_sampling(denoiser, 2, True):
            pass
    assert not hasattr(denoiser.attn2, "_diffusers_hook") and "forward" not in denoiser.__dict__


def test_a_call_installs_only_the_hooks_its_schedule_uses():
    components = tiny_sd_components()
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    unet = components["unet"]
    seen = []

    def record(pipeline, index, t, tensors):
        hooked = {name for name, module in unet.named_modules() if hasattr(module, "_diffusers_hook")}
        seen.append((any(n.endswith("attn2") for n in hooked), any(n.endswith("attn1") for n in hooked),
                     "mid_block" in hooked))
        return tensors

    for settings, expected in [
        (dict(gate_step=2), (True, False, False)),
        (dict(gate_step=2, sp_interval=2), (True, True, False)),
        (dict(gate_step=2, deepcache_interval=2), (True, False, True)),
        (dict(deepcache_interval=2), (False, False, True)),
    ]:
        seen.clear()
        latents(pipe, 1, callback_on_step_end=record, **settings)
        assert set(seen) == {expected}, settings
    assert not any(hasattr(m, "_diffusers_hook") for m in unet.modules())


def test_the_reference_names_the_same_cross_attention_modules_as_the_architecture():
    """The references' per-architecture names find the attn2 of every transformer block, and only those."""
    unet = tiny_sd_components()["unet"]
    blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert cross_attention(unet) == [block.attn2 for block in blocks]


# --- The steps a gate counts: after denoising_end, and per FreeInit iteration ----------------------------------------

def unet_batches(unet, run):
    batches = []
    handle = unet.conv_in.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    try:
        run()
    finally:
        handle.remove()
    return batches


def test_the_gate_counts_the_steps_denoising_end_leaves(caplog):
    from common.tiny import tiny_sdxl_components
    from SDXL.pipeline import TgateStableDiffusionXLPipeline

    components = tiny_sdxl_components()
    pipe = quiet(TgateStableDiffusionXLPipeline(**components))
    call = dict(num_inference_steps=6, denoising_end=0.5, output_type="latent")  # 3 of the 6 steps run
    assert unet_batches(components["unet"], lambda: pipe(PROMPTS[0], gate_step=2, **call)) == [2, 2, 1]
    with caplog.at_level(logging.WARNING, logger="tgate"):
        pipe(PROMPTS[0], gate_step=3, **call)
    assert "gate_step=3 is never reached: this call runs 3 steps" in caplog.text


def test_each_free_init_iteration_is_a_run_with_its_own_gate():
    from AnimateDiff.pipeline import TgateAnimateDiffPipeline
    from common.tiny_pipelines import tiny_animatediff_components

    components = tiny_animatediff_components()
    pipe = quiet(TgateAnimateDiffPipeline(**components))
    pipe.enable_free_init(num_iters=2, use_fast_sampling=False)
    run = lambda: pipe(PROMPTS[0], num_frames=2, num_inference_steps=3, gate_step=1, output_type="latent")  # noqa: E731
    frames = 2  # the motion UNet's first layer sees every frame of every sample
    assert unet_batches(components["unet"], run) == [2 * frames, frames, frames] * 2
