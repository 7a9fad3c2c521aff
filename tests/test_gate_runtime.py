"""The gate where diffusers users take it: threads sharing a denoiser, torch.compile, signature-reading tools."""

import inspect
import functools

import pytest
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
    PixArtAlphaPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from torch._dynamo.utils import counters

from common.tiny import tiny_pixart_components, tiny_sd_components, tiny_sdxl_components
from PixArt_alpha.pipeline import TgatePixArtAlphaPipeline
from SD_1_5.pipeline import (
    TgateStableDiffusionImg2ImgPipeline,
    TgateStableDiffusionInpaintPipeline,
    TgateStableDiffusionPipeline,
)
from SDXL.pipeline import TgateStableDiffusionXLImg2ImgPipeline, TgateStableDiffusionXLPipeline
from tests.tgate_checks import assert_concurrent_runs_equal_sequential, pipeline_is_stock, quiet

TGATE_PARAMETERS = ["gate_step", "sp_interval", "fi_interval", "warm_up", "deepcache_interval", "deepcache_branch"]


def run(pipe, seed=0, steps=4, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    if "prompt_embeds" not in kwargs:
        kwargs["prompt"] = "a coral reef"
    return pipe(num_inference_steps=steps, generator=generator, output_type="latent", **kwargs).images


# --- One denoiser, several requests ----------------------------------------------------------------------------

REQUESTS = [  # (TGATE pipeline?, call arguments): stock and TGATE calls of several gates and seeds
    (False, dict(seed=1)),
    (True, dict(seed=1, gate_step=2)),
    (True, dict(seed=2, gate_step=1)),
    (False, dict(seed=3)),
    (True, dict(seed=3, gate_step=3, steps=5)),
    (True, dict(seed=4, gate_step=2, sp_interval=2, fi_interval=2)),
]


def test_concurrent_stock_and_tgate_calls_on_one_denoiser_equal_sequential_runs():
    """diffusers' server pattern: pipelines share one UNet (``from_pipe``), one request per thread."""
    base = quiet(StableDiffusionPipeline(**tiny_sd_components(seed=0)))

    def pipeline_for(tgate):  # each request its own pipeline object and scheduler, as diffusers' example does
        scheduler = base.scheduler.from_config(base.scheduler.config)
        return quiet((TgateStableDiffusionPipeline if tgate else StableDiffusionPipeline).from_pipe(base, scheduler=scheduler))

    # Text encoded beforehand: the tiny (slow) CLIP tokenizer is not thread-safe, stock diffusers included.
    positive, negative = base.encode_prompt("a coral reef", "cpu", 1, True)
    embeds = dict(prompt_embeds=positive, negative_prompt_embeds=negative)
    requests = [(tgate, {**call, **embeds}) for tgate, call in REQUESTS]
    jobs = [functools.partial(lambda tgate, call: run(pipeline_for(tgate), **call), *r) for r in requests]
    assert_concurrent_runs_equal_sequential(jobs, rounds=3)
    assert pipeline_is_stock(pipeline_for(True))


# --- torch.compile ----------------------------------------------------------------------------------------------


def test_compiled_denoiser_needs_a_few_graphs_whatever_the_steps_and_gate():
    torch._dynamo.reset()
    components = tiny_sd_components(seed=0)
    eager = quiet(TgateStableDiffusionPipeline(**components))
    calls = [dict(steps=4, gate_step=2), dict(steps=6, gate_step=3), dict(steps=5, gate_step=1), dict(steps=3)]
    expected = [run(eager, **call) for call in calls]

    compiled = quiet(TgateStableDiffusionPipeline(**components))
    compiled.unet = torch.compile(components["unet"], backend="eager", fullgraph=True)
    counters.clear()
    for call, reference in zip(calls, expected):
        assert torch.equal(run(compiled, **call), reference)
    # one graph per kind of step (guided, caching, gated) and one for the stock call: none per step or gate
    assert counters["stats"]["unique_graphs"] == 4
    torch._dynamo.reset()


@pytest.mark.parametrize("how", ["in_place", "repeated_blocks"])
def test_in_place_and_regional_compilation_keep_a_bounded_number_of_graphs(how, monkeypatch):
    """``pipe.unet.compile()`` and diffusers' recommended ``compile_repeated_blocks`` compile the modules in place:
    the gate's hooks then run inside the compiled region; across calls of other step counts and gates the graphs
    stay bounded and the output equals eager."""
    torch._dynamo.reset()
    components = tiny_sd_components(seed=0)
    eager = quiet(TgateStableDiffusionPipeline(**components))
    calls = [dict(steps=4, gate_step=2), dict(steps=6, gate_step=3), dict(steps=5, gate_step=1), dict(steps=3),
             dict(steps=4, gate_step=2)]
    expected = [run(eager, **call) for call in calls]
    unet = components["unet"]
    if how == "in_place":
        unet.compile(backend="eager")
    else:
        # One compiled code for every block: dynamo specializes it per block shape, per kind of step and per
        # block's cache slot, more than its default limit of 8 recompiles (raised here, as a user would).
        monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 64)
        unet.compile_repeated_blocks(backend="eager", fullgraph=True)
    counters.clear()
    graphs = []
    for call, reference in zip(calls, expected):
        assert torch.equal(run(eager, **call), reference)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[-2]  # a repeated setting compiles nothing new
    # in place, the gate's denoiser-level bookkeeping is traced too: a few graphs per kind of step, not per step
    assert graphs[-1] <= (10 if how == "in_place" else 32), graphs
    torch._dynamo.reset()


# --- The pipeline looks like a diffusers pipeline -----------------------------------------------------------


@pytest.mark.parametrize("tgate_class, stock_class", [
    (TgateStableDiffusionPipeline, StableDiffusionPipeline),
    (TgateStableDiffusionXLPipeline, StableDiffusionXLPipeline),
    (TgatePixArtAlphaPipeline, PixArtAlphaPipeline),
])
def test_call_has_the_stock_signature_plus_keyword_only_tgate_parameters(tgate_class, stock_class):
    stock = inspect.signature(stock_class.__call__).parameters
    ours = inspect.signature(tgate_class.__call__).parameters
    assert [name for name in ours if name not in TGATE_PARAMETERS] == list(stock)
    for name in stock:
        assert ours[name].default == stock[name].default and ours[name].kind == stock[name].kind
    assert all(ours[name].kind is inspect.Parameter.KEYWORD_ONLY for name in TGATE_PARAMETERS)
    assert ours["gate_step"].default is None
    assert "gate_step" in tgate_class.__call__.__doc__ and "num_inference_steps" in tgate_class.__call__.__doc__


def test_pixart_gate_on_its_own_signature():
    pipe = quiet(TgatePixArtAlphaPipeline(**tiny_pixart_components(seed=0)))
    stock = run(quiet(PixArtAlphaPipeline(**tiny_pixart_components(seed=0))))
    assert torch.equal(run(pipe, gate_step=4), stock)
    assert not torch.equal(run(pipe, gate_step=2), stock)


@pytest.mark.parametrize("bad, message", [
    (dict(sp_interval=2), "need a gate_step"),
    (dict(gate_step=2, sp_interval=0), "sp_interval"),
    (dict(gate_step=2, fi_interval=1.5), "fi_interval"),
    (dict(gate_step=2, warm_up=-1), "warm_up"),
    (dict(gate_step=0), "gate_step"),
])
def test_bad_tgate_values_are_clear_errors(bad, message):
    pipe = quiet(TgateStableDiffusionPipeline(**tiny_sd_components(seed=0)))
    with pytest.raises(ValueError, match=message):
        run(pipe, **bad)
    assert pipeline_is_stock(pipe)


def test_saved_tgate_pipeline_loads_with_diffusion_pipeline(tmp_path):
    pipe = quiet(TgateStableDiffusionPipeline(**tiny_sd_components(seed=0)))
    pipe.save_pretrained(tmp_path)
    loaded = quiet(DiffusionPipeline.from_pretrained(tmp_path))
    assert type(loaded) is TgateStableDiffusionPipeline
    assert torch.equal(run(loaded, gate_step=2), run(pipe, gate_step=2))
    assert type(AutoPipelineForText2Image.from_pretrained(tmp_path)) is TgateStableDiffusionPipeline


def test_auto_pipelines_keep_tgate_across_tasks():
    pipe = quiet(TgateStableDiffusionPipeline(**tiny_sd_components(seed=0)))
    image_to_image = AutoPipelineForImage2Image.from_pipe(pipe)
    assert type(image_to_image) is TgateStableDiffusionImg2ImgPipeline
    assert type(AutoPipelineForInpainting.from_pipe(pipe)) is TgateStableDiffusionInpaintPipeline
    assert type(AutoPipelineForText2Image.from_pipe(image_to_image)) is TgateStableDiffusionPipeline
    assert image_to_image.unet is pipe.unet
    sdxl = TgateStableDiffusionXLPipeline(**tiny_sdxl_components(seed=0))
    assert type(AutoPipelineForImage2Image.from_pipe(sdxl)) is TgateStableDiffusionXLImg2ImgPipeline
