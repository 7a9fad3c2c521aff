"""TGATE on Wan 2.1 / 2.2, which guides with two transformer calls per step (conditional, then unconditional).

The reference is Wan's sampling loop written out here, step by step, with plain torch hooks on the modules its
architecture names (``blocks.*.attn2``): at step ``gate - 1`` each cross-attention output of the conditional
and of the unconditional call is cached as their mean; from step ``gate`` on one call per step, every attn2
returning its cache. Wan 2.2's experts each keep their own caches; an expert that first runs after the gate
runs that step guided, to fill them. Nothing here comes from ``common/``'s rules.
"""

import re

import pytest
import torch
from diffusers import WanPipeline
from diffusers.utils.torch_utils import randn_tensor

from common.any_pipeline import tgate_class
from common.tiny_dit import tiny_wan22_components, tiny_wan_components
from tests.tgate_checks import assert_concurrent_runs_equal_sequential, quiet

STEPS = 4
PROMPTS = ["a coral reef", "a red bus"]
SIZE = dict(height=16, width=16, num_frames=5)
ATTN2 = re.compile(r"^blocks\.\d+\.attn2$")


def cross_attention(transformer):
    return [module for name, module in transformer.named_modules() if ATTN2.search(name)]


def run(pipe, videos=1, guidance=5.0, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    return pipe(PROMPTS[:videos], num_inference_steps=STEPS, guidance_scale=guidance, generator=generator,
                output_type="latent", **SIZE, **kwargs).frames


@torch.no_grad()
def explicit_wan(components, gate, videos, guidance, seed=0, guidance_2=None):
    stock = WanPipeline(**components)
    guided = guidance > 1
    positive, negative = stock.encode_prompt(PROMPTS[:videos], do_classifier_free_guidance=guided, device="cpu",
                                             max_sequence_length=512)  # the __call__ default
    scheduler = components["scheduler"]
    experts = [components["transformer"], components.get("transformer_2")]
    latents = randn_tensor((videos, 16, 2, 2, 2), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(STEPS)
    scheduler.set_begin_index(0)
    ratio = stock.config.boundary_ratio
    boundary = None if ratio is None else ratio * scheduler.config.num_train_timesteps
    state = {"caching": False, "reusing": False, "outputs": {}}
    caches = {}  # per module: its output cached for the gated steps

    def gate_cross_attention(module, args, output):
        if state["reusing"]:
            return caches[module]
        if state["caching"]:
            state["outputs"].setdefault(module, []).append(output)
        return output

    handles = [m.register_forward_hook(gate_cross_attention) for e in experts if e is not None
               for m in cross_attention(e)]
    cached = set()  # the experts holding caches
    try:
        for i, t in enumerate(scheduler.timesteps):
            expert_index = 0 if boundary is None or t >= boundary else 1
            model = experts[expert_index]
            scale = guidance if expert_index == 0 or guidance_2 is None else guidance_2
            gated = i >= gate and model in cached
            state["caching"] = (i == gate - 1 or (i >= gate and not gated))
            state["reusing"], state["outputs"] = gated, {}
            call = dict(hidden_states=latents, timestep=t.expand(videos), return_dict=False)
            prediction = model(encoder_hidden_states=positive, **call)[0]
            if guided and not gated:
                uncond = model(encoder_hidden_states=negative, **call)[0]
                prediction = uncond + scale * (prediction - uncond)
            if state["caching"]:
                for module, outputs in state["outputs"].items():
                    caches[module] = sum(outputs) / len(outputs)  # cond and uncond calls: their mean
                cached.add(model)
            latents = scheduler.step(prediction, t, latents, return_dict=False)[0]
    finally:
        for handle in handles:
            handle.remove()
    return latents


CASES = [(2, 1, 5.0), (1, 2, 5.0), (2, 2, 1.0), (3, 1, 5.0)]  # (gate, videos, guidance)


@pytest.mark.parametrize("gate, videos, guidance", CASES)
def test_wan21_equals_the_explicit_two_call_loop(gate, videos, guidance):
    components = tiny_wan_components()
    pipe = quiet(tgate_class(WanPipeline)(**components))
    got = run(pipe, videos, guidance, gate_step=gate)
    expected = explicit_wan(components, gate, videos, guidance)
    assert got.shape == (videos, 16, 2, 2, 2)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


def test_wan22_experts_switch_step():
    """The tiny Wan 2.2 switches from its high-noise expert to the low-noise one at the boundary ratio."""
    components = tiny_wan22_components()
    pipe = WanPipeline(**components)
    pipe.scheduler.set_timesteps(STEPS)
    boundary = pipe.config.boundary_ratio * pipe.scheduler.config.num_train_timesteps
    first = [bool(t >= boundary) for t in pipe.scheduler.timesteps]
    assert first == [True, True, False, False], first  # the cases below place the gate around step 2


@pytest.mark.parametrize("gate", [1, 2, 3])  # before, at and after the switch to transformer_2 (step 2)
@pytest.mark.parametrize("videos", [1, 2])
def test_wan22_each_expert_keeps_its_caches(gate, videos):
    components = tiny_wan22_components()
    pipe = quiet(tgate_class(WanPipeline)(**components))
    got = run(pipe, videos, 5.0, gate_step=gate, guidance_scale_2=3.0)
    expected = explicit_wan(components, gate, videos, 5.0, guidance_2=3.0)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("make", [tiny_wan_components, tiny_wan22_components])
def test_one_transformer_call_per_step_after_the_gate_and_stock_at_gate_steps(make):
    components = make()
    stock = quiet(WanPipeline(**components))
    pipe = quiet(tgate_class(WanPipeline)(**components))
    assert torch.equal(run(pipe, gate_step=STEPS), run(stock))
    calls = []
    experts = [m for m in (components["transformer"], components.get("transformer_2")) if m is not None]
    handles = [e.register_forward_pre_hook(lambda m, a, k: calls.append(m), with_kwargs=True) for e in experts]
    try:
        run(pipe, gate_step=2)
    finally:
        for handle in handles:
            handle.remove()
    if len(experts) == 1:
        assert len(calls) == 2 * 2 + 2  # two guided steps, then one call per step
    else:  # the low-noise expert first runs at step 2, after the gate: that step is guided, to fill its caches
        assert [experts.index(m) for m in calls] == [0, 0, 0, 0, 1, 1, 1]
    assert torch.equal(run(pipe), run(stock))  # a plain call after: stock, no hook left
    # Wan's cache_context gives the transformer a hook registry of its own: no TGATE hook may be left in any
    registries = [m._diffusers_hook for e in experts for m in e.modules() if hasattr(m, "_diffusers_hook")]
    assert not any(name.startswith("tgate") for registry in registries for name in registry.hooks)
    assert not any("forward" in e.__dict__ for e in experts)


def test_threads_sharing_a_transformer_equal_their_sequential_runs():
    components = tiny_wan_components()
    stock = quiet(WanPipeline(**components))
    # Encoded before the threads start: the slow tokenizers are not thread-safe (stock diffusers fails the same way).
    positive, negative = stock.encode_prompt(PROMPTS[:1], device="cpu", max_sequence_length=512)

    def job(settings):
        def request():
            scheduler = type(stock.scheduler).from_config(stock.scheduler.config)  # a scheduler holds a run's state
            pipe = quiet(tgate_class(WanPipeline).from_pipe(stock, scheduler=scheduler))
            generator = torch.Generator().manual_seed(0)
            return pipe(prompt_embeds=positive, negative_prompt_embeds=negative, num_inference_steps=STEPS,
                        generator=generator, output_type="latent", **SIZE, **settings).frames
        return request

    assert_concurrent_runs_equal_sequential(
        [job({}), job({"gate_step": 2}), job({"gate_step": 1, "sp_interval": 2}), job({"gate_step": 3})]
    )


def test_a_compiled_transformer_keeps_a_few_graphs_and_equals_eager():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    components = tiny_wan_components()
    eager = quiet(tgate_class(WanPipeline)(**components))
    calls = [dict(gate_step=2), dict(gate_step=3), dict(), dict(gate_step=2)]
    expected = [run(eager, **call) for call in calls]
    compiled = quiet(tgate_class(WanPipeline)(**components))
    compiled.transformer = torch.compile(components["transformer"], backend="eager", fullgraph=True)
    counters.clear()
    graphs = []
    for call, reference in zip(calls, expected):
        assert torch.allclose(run(compiled, **call), reference, atol=1e-6)
        graphs.append(counters["stats"]["unique_graphs"])
    # guided, caching (cond and uncond call), gated, stock: none per step or gate, none for a repeated setting
    assert graphs[-1] == graphs[-2] <= 5, graphs
    torch._dynamo.reset()
