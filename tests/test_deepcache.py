"""DeepCache as an option of the TGATE pipelines (``deepcache_interval``, ``deepcache_branch``), alone or with a gate.

References: DeepCache 0.1.1's own ``DeepCacheSDHelper`` (a test-time reference only, for DeepCache alone), and a
sampling loop written out here, independent of ``common/``: plain forward replacements on the tiny UNet's
blocks numbered as DeepCache numbers them, full forwards every ``interval`` steps restarted at steps ``gate - 1``
and ``gate`` (the official TGATE + DeepCache code resets DeepCache there), TGATE's cross-attention gate as plain
forward replacements and the guidance batch cut after the gate. Both the latents and the layers that run at
each evaluation must match: a partial forward that computed a skipped layer for nothing would be caught.
"""

import functools

import pytest
import torch
import diffusers
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.utils.torch_utils import randn_tensor
from torch._dynamo.utils import counters

from common.schedule import CACHE, COMPUTE, REUSE, TgateSchedule
from common.tiny import tiny_lcm_sdxl_components, tiny_pixart_components, tiny_sd_components, tiny_sdxl_components
from PixArt_alpha.pipeline import TgatePixArtAlphaPipeline
from SD_1_5.pipeline import TgateStableDiffusionPipeline
from SDXL.pipeline import TgateStableDiffusionXLPipeline
from tests.tgate_checks import (
    assert_concurrent_runs_equal_sequential,
    branch_denoiser,
    end_guidance_after,
    pipeline_is_stock,
    quiet,
)

PROMPTS = ["a coral reef", "a red bus"]
GUIDANCE = 6.0
STEPS = 7
FAMILIES = {
    "sd": (StableDiffusionPipeline, TgateStableDiffusionPipeline, tiny_sd_components),
    "sdxl": (StableDiffusionXLPipeline, TgateStableDiffusionXLPipeline, tiny_sdxl_components),
}


def run(pipe, prompts=PROMPTS[:1], steps=STEPS, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    kwargs.setdefault("guidance_scale", GUIDANCE)
    if "prompt_embeds" not in kwargs:
        kwargs["prompt"] = list(prompts)
    return pipe(num_inference_steps=steps, generator=generator, output_type="latent", **kwargs).images


def unet_is_stock(unet) -> bool:
    return not any("forward" in m.__dict__ or hasattr(m, "_diffusers_hook") for m in unet.modules())


def leaf_modules_run(unet, sample):
    """Call ``sample()``; return, per UNet evaluation, the names of the leaf modules (convolutions, linear
    layers, norms) that ran: what a partial forward really computes, whatever it returns."""
    evaluations = []
    leaves = [(name, m) for name, m in unet.named_modules() if not list(m.children())]
    handles = [unet.register_forward_pre_hook(lambda m, args: evaluations.append([]))]
    handles += [
        m.register_forward_pre_hook(lambda m, args, name=name: evaluations[-1].append(name)) for name, m in leaves
    ]
    try:
        result = sample()
    finally:
        for handle in handles:
            handle.remove()
    return result, evaluations


# --- The reference loop, written out --------------------------------------------------------------------------


def deepcache_layers(unet):
    """(module, kind, level, layer) of every module DeepCache's helper wraps, numbered as it numbers them.

    Down block ``i``: the block (layer 0), ``attentions[j]`` and ``resnets[j]`` (layer ``j``), the downsampler
    (layer ``len(resnets)``). The mid block. Up block ``i`` is level ``len(up_blocks) - 1 - i``: the block and
    its upsampler (layer 0), ``attentions[j]`` and ``resnets[j]`` (layer ``len(resnets) - 1 - j``).
    """
    layers = []
    for level, block in enumerate(unet.down_blocks):
        resnets = list(block.resnets)
        layers.append((block, "down", level, 0))
        layers += [(m, "down", level, j) for j, m in enumerate(getattr(block, "attentions", []))]
        layers += [(m, "down", level, j) for j, m in enumerate(resnets)]
        layers += [(m, "down", level, len(resnets)) for m in (block.downsamplers or [])]
    layers.append((unet.mid_block, "mid", 0, 0))
    for i, block in enumerate(unet.up_blocks):
        level, count = len(unet.up_blocks) - 1 - i, len(block.resnets)
        layers.append((block, "up", level, 0))
        layers += [(m, "up", level, count - 1 - j) for j, m in enumerate(getattr(block, "attentions", []))]
        layers += [(m, "up", level, count - 1 - j) for j, m in enumerate(block.resnets)]
        layers += [(m, "up", level, 0) for m in (block.upsamplers or [])]
    return layers


def skipped_in_partial_forward(kind, level, layer, branch):
    """DeepCache's rule: a partial forward of branch ``3 * B + L`` skips the mid block, every level deeper than
    ``B`` and, at level ``B``, the down layers from ``L`` on and the up layers after ``L``."""
    branch_level, branch_layer = divmod(branch, 3)
    if kind == "mid" or level > branch_level:
        return True
    if level < branch_level:
        return False
    return layer >= branch_layer if kind == "down" else layer > branch_layer


def steps_of_evaluations(scheduler, steps):
    """The pipeline's step of each denoiser evaluation (diffusers' loop advances its progress bar by this rule)."""
    timesteps, step, owners = scheduler.timesteps, 0, []
    warmup = len(timesteps) - steps * scheduler.order
    for i in range(len(timesteps)):
        owners.append(step)
        if i == len(timesteps) - 1 or ((i + 1) > warmup and (i + 1) % scheduler.order == 0):
            step += 1
    return owners


@torch.no_grad()
def explicit_loop(family, components, gate, interval, branch, prompts, steps=STEPS, guided_until=None, seed=0,
                  record=None):
    """TGATE (gate ``gate``, None: no gate) with DeepCache (``interval``, ``branch``), one evaluation at a time.

    Guidance is on at steps ``<= guided_until`` (None: every step). A guided step before the gate runs
    ``[negative, positive]``; after the gate the negative branch alone; a step whose guidance has ended the
    positive one. DeepCache runs a full forward at steps ``(step - start) % interval == 0``, ``start`` being 0
    and then the last of the steps ``gate - 1`` and ``gate`` reached; a partial forward returns every skipped
    module's output of the last full forward. A partial step whose batch differs from that forward's (guidance
    ended in between) runs in full. ``record`` gets ``(step, batch, full)`` per evaluation.
    """
    stock_class = FAMILIES[family][0]
    encoder = stock_class(**components)
    scheduler, unet = components["scheduler"], components["unet"]
    count = len(prompts)
    denoise = branch_denoiser(encoder, unet, prompts, sdxl=family == "sdxl")

    now, cross_cache, deep_cache = {}, {}, {}

    def gate_cross_attention(module):
        original = module.forward

        def forward(*args, **kwargs):
            if gate is not None and now["step"] >= gate:
                return cross_cache[module]  # nothing computed
            output = original(*args, **kwargs)
            if gate is not None and now["step"] == gate - 1:
                cross_cache[module] = (output[:count] + output[count:]) / 2 if now["guided"] else output
            return output

        module.forward = forward

    def replace_forward(module, kind, level, layer):
        original = module.forward

        def forward(*args, **kwargs):
            if not now["full"] and skipped_in_partial_forward(kind, level, layer, branch):
                return deep_cache[module]
            deep_cache[module] = output = original(*args, **kwargs)
            return output

        module.forward = forward

    cross = [m for m in unet.modules() if getattr(m, "is_cross_attention", False)]
    for module in cross:
        gate_cross_attention(module)
    layers = deepcache_layers(unet)
    for module, kind, level, layer in layers:
        replace_forward(module, kind, level, layer)
    latents = randn_tensor((count, 4, 16, 16), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(steps)
    latents = latents * scheduler.init_noise_sigma
    owners = steps_of_evaluations(scheduler, steps)
    start, full_batch = 0, None
    try:
        for index, t in enumerate(scheduler.timesteps):
            step = owners[index]
            guided = guided_until is None or step <= guided_until
            before_gate = gate is None or step < gate
            if gate is not None and step in (gate - 1, gate):
                start = step  # the official combination: DeepCache disabled and enabled again here
            batch = count * (2 if guided and before_gate else 1)
            full = interval is None or (step - start) % interval == 0 or batch != full_batch
            full_batch = batch if full else full_batch
            now.update(step=step, guided=guided and before_gate, full=full)
            if record is not None:
                record.append((step, batch, full))
            model_input = scheduler.scale_model_input(latents, t)
            if guided and before_gate:
                uncond, cond = denoise(torch.cat([model_input] * 2), t, "negative", "positive").chunk(2)
                noise = uncond + GUIDANCE * (cond - uncond)
            else:
                noise = denoise(model_input, t, "negative" if guided else "positive")
            latents = scheduler.step(noise, t, latents).prev_sample
    finally:
        for module in [*cross, *(layer[0] for layer in layers)]:
            del module.forward
    return latents


# --- The schedule as a table -----------------------------------------------------------------------------------


def test_schedule_table():
    plans = [TgateSchedule(3, deepcache_interval=2, deepcache_branch=1).plan(i) for i in range(8)]
    # full at 0, at gate - 1 = 2 and gate = 3 (the resets), then every 2 steps from the gate: 5, 7
    assert [p.deepcache for p in plans] == [CACHE, REUSE, COMPUTE, CACHE, REUSE, CACHE, REUSE, CACHE]
    assert {p.deepcache_branch for p in plans} == {1}
    assert [p.single_branch for p in plans] == [False] * 3 + [True] * 5
    alone = [TgateSchedule(None, deepcache_interval=3).plan(i) for i in range(7)]
    assert [p.deepcache for p in alone] == [CACHE, REUSE, REUSE, CACHE, REUSE, REUSE, CACHE]
    assert {(p.cross_attention, p.single_branch) for p in alone} == {(COMPUTE, False)}
    for interval in (None, 1):  # no DeepCache: the TGATE plans, unchanged
        assert [TgateSchedule(3, deepcache_interval=interval).plan(i) for i in range(6)] == [
            TgateSchedule(3).plan(i) for i in range(6)
        ]
    assert TgateSchedule(None).is_stock and TgateSchedule(None, deepcache_interval=1).is_stock
    assert not TgateSchedule(None, deepcache_interval=2).is_stock


# --- Off, alone, combined -------------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [None, 1])
@pytest.mark.parametrize("gate", [None, 2])
def test_deepcache_interval_none_or_1_is_tgate_alone_bit_for_bit(interval, gate):
    components = tiny_sd_components(seed=0)
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    reference = run(pipe, gate_step=gate) if gate else run(quiet(StableDiffusionPipeline(**components)))
    assert torch.equal(run(pipe, gate_step=gate, deepcache_interval=interval), reference)
    if interval == 1:  # DeepCache's interval 1 is a full forward every step, whatever the branch
        assert torch.equal(run(pipe, gate_step=gate, deepcache_interval=1, deepcache_branch=4), reference)
    assert pipeline_is_stock(pipe) and unet_is_stock(pipe.unet)


CASES = [  # (family, interval, branch, images): DeepCache alone against DeepCacheSDHelper
    *(("sd", interval, branch, 1) for interval in (2, 3) for branch in range(6)),
    ("sd", 3, 0, 2),
    ("sd", 2, 4, 2),
    *(("sdxl", 3, branch, 1) for branch in range(6)),
    ("sdxl", 2, 1, 2),
    ("lcm_sdxl", 2, 0, 1),
    ("lcm_sdxl", 3, 3, 2),
]


@pytest.mark.parametrize("family, interval, branch, images", CASES)
def test_deepcache_alone_equals_deepcache_0_1_1_on_the_same_pipeline(family, interval, branch, images):
    deepcache = pytest.importorskip(
        "DeepCache", reason="DeepCache==0.1.1 (the reference DeepCacheSDHelper) is not installed"
    )
    tgate_class = TgateStableDiffusionPipeline if family == "sd" else TgateStableDiffusionXLPipeline
    make = {"sd": tiny_sd_components, "sdxl": tiny_sdxl_components, "lcm_sdxl": tiny_lcm_sdxl_components}[family]
    pipe = quiet(tgate_class(**make(seed=0)))
    prompts = PROMPTS[:images]
    ours, ours_ran = leaf_modules_run(pipe.unet, lambda: run(pipe, prompts, deepcache_interval=interval,
                                                             deepcache_branch=branch))
    assert pipeline_is_stock(pipe) and unet_is_stock(pipe.unet)
    assert not torch.equal(ours, run(pipe, prompts))  # partial forwards changed the result
    helper = deepcache.DeepCacheSDHelper(pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:  # a plain call of the same pipeline, wrapped by the helper
        reference, reference_ran = leaf_modules_run(pipe.unet, lambda: run(pipe, prompts))
    finally:
        helper.disable()
    assert torch.equal(ours, reference)
    assert ours_ran == reference_ran  # the same layers run at every step, not only the same result
    assert len(ours_ran[1]) < len(ours_ran[0])  # step 1 is a partial forward


@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("branch", [0, 1])
@pytest.mark.parametrize("interval", [2, 3])
@pytest.mark.parametrize("gate", [2, 3])
def test_tgate_with_deepcache_equals_an_explicit_loop(gate, interval, branch, images):
    components = tiny_sd_components(seed=0)
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    prompts = PROMPTS[:images]
    latents, ran = leaf_modules_run(pipe.unet, lambda: run(pipe, prompts, gate_step=gate,
                                                           deepcache_interval=interval, deepcache_branch=branch))
    expected, expected_ran = leaf_modules_run(
        pipe.unet, lambda: explicit_loop("sd", components, gate, interval, branch, prompts)
    )
    assert torch.equal(latents, expected) and ran == expected_ran
    assert not torch.equal(latents, run(pipe, prompts, gate_step=gate))
    assert pipeline_is_stock(pipe) and unet_is_stock(pipe.unet)


@pytest.mark.parametrize("gate, interval, branch, images", [(3, 2, 0, 2), (2, 3, 1, 1), (None, 2, 3, 1)])
def test_sdxl_tgate_with_deepcache_equals_an_explicit_loop(gate, interval, branch, images):
    components = tiny_sdxl_components(seed=0)
    pipe = quiet(TgateStableDiffusionXLPipeline(**components))
    prompts = PROMPTS[:images]
    latents, ran = leaf_modules_run(pipe.unet, lambda: run(pipe, prompts, gate_step=gate,
                                                           deepcache_interval=interval, deepcache_branch=branch))
    expected, expected_ran = leaf_modules_run(
        pipe.unet, lambda: explicit_loop("sdxl", components, gate, interval, branch, prompts)
    )
    assert torch.equal(latents, expected) and ran == expected_ran
    assert pipeline_is_stock(pipe) and unet_is_stock(pipe.unet)


def test_partial_forwards_run_only_the_shallow_branch_at_the_planned_steps():
    """Per evaluation: the batch, and whether the deep modules ran (the mid block's first resnet)."""
    components = tiny_sd_components(seed=0)
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    unet, seen = components["unet"], []
    handles = [
        unet.conv_in.register_forward_pre_hook(lambda m, args: seen.append([args[0].shape[0], False])),
        unet.mid_block.resnets[0].register_forward_pre_hook(lambda m, args: seen[-1].__setitem__(1, True)),
    ]
    try:
        run(pipe, PROMPTS, gate_step=3, deepcache_interval=2)
    finally:
        for handle in handles:
            handle.remove()
    expected = []
    explicit_loop("sd", components, 3, 2, 0, PROMPTS, record=expected)
    assert seen == [[batch, full] for _, batch, full in expected]
    assert [full for _, _, full in expected] == [True, False, True, True, False, True, False]


@pytest.mark.parametrize("name, gate, interval", [("HeunDiscreteScheduler", 2, 2), ("PNDMScheduler", 3, 2)])
def test_every_evaluation_of_a_step_runs_the_same_kind_of_forward(name, gate, interval):
    components = tiny_sd_components(seed=0)
    config = {"skip_prk_steps": True} if name == "PNDMScheduler" else {}
    components["scheduler"] = getattr(diffusers, name).from_config(components["scheduler"].config, **config)
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    latents = run(pipe, PROMPTS, steps=5, gate_step=gate, deepcache_interval=interval, deepcache_branch=1)
    expected = explicit_loop("sd", components, gate, interval, 1, PROMPTS, steps=5)
    assert torch.equal(latents, expected)


@pytest.mark.parametrize("gate", [None, 5])
def test_guidance_ended_by_a_callback_makes_the_next_partial_step_a_full_one(gate):
    """Deep features of the guidance batch do not fit the one-branch batch: that step runs in full."""
    components = tiny_sd_components(seed=0)
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    latents = run(pipe, PROMPTS, gate_step=gate, deepcache_interval=3, callback_on_step_end=end_guidance_after(0),
                  callback_on_step_end_tensor_inputs=["prompt_embeds"])
    record = []
    expected = explicit_loop("sd", components, gate, 3, 0, PROMPTS, guided_until=0, record=record)
    assert torch.equal(latents, expected)
    assert [full for _, _, full in record][:4] == [True, True, False, True]  # step 1 was planned partial


# --- Stock afterwards, threads, torch.compile -------------------------------------------------------------------


def test_plain_call_after_a_deepcache_call_equals_a_fresh_stock_pipeline():
    components = tiny_sd_components(seed=0)
    pipe = quiet(TgateStableDiffusionPipeline(**components))
    run(pipe, gate_step=2, deepcache_interval=3, deepcache_branch=2)
    assert pipeline_is_stock(pipe) and unet_is_stock(pipe.unet)
    assert torch.equal(run(pipe), run(quiet(StableDiffusionPipeline(**tiny_sd_components(seed=0)))))


REQUESTS = [  # (TGATE pipeline?, call arguments): stock, TGATE, DeepCache alone and both, several branches
    (False, dict(seed=1)),
    (True, dict(seed=1, gate_step=2)),
    (True, dict(seed=2, deepcache_interval=2)),
    (True, dict(seed=2, gate_step=3, deepcache_interval=2, deepcache_branch=1)),
    (True, dict(seed=3, gate_step=2, deepcache_interval=3, deepcache_branch=3, steps=6)),
    (True, dict(seed=4, deepcache_interval=3, deepcache_branch=5)),
]


def test_concurrent_calls_with_and_without_deepcache_on_one_unet_equal_sequential_runs():
    base = quiet(StableDiffusionPipeline(**tiny_sd_components(seed=0)))

    def pipeline_for(tgate):  # one pipeline object and scheduler per request, sharing the UNet
        scheduler = base.scheduler.from_config(base.scheduler.config)
        pipeline_class = TgateStableDiffusionPipeline if tgate else StableDiffusionPipeline
        return quiet(pipeline_class.from_pipe(base, scheduler=scheduler))

    # the text encoded beforehand: the tiny (slow) CLIP tokenizer is not thread-safe, stock diffusers included
    positive, negative = base.encode_prompt(PROMPTS[0], "cpu", 1, True)
    embeds = dict(prompt_embeds=positive, negative_prompt_embeds=negative)
    requests = [(tgate, {**call, **embeds}) for tgate, call in REQUESTS]
    jobs = [functools.partial(lambda tgate, call: run(pipeline_for(tgate), **call), *r) for r in requests]
    assert_concurrent_runs_equal_sequential(jobs)
    assert unet_is_stock(base.unet)


@pytest.mark.slow  # exhaustive variant: `python -m pytest -m slow`
def test_compiled_unet_needs_a_few_graphs_whatever_the_steps_gate_and_interval():
    torch._dynamo.reset()
    components = tiny_sd_components(seed=0)
    eager = quiet(TgateStableDiffusionPipeline(**components))
    calls = [
        dict(steps=6, gate_step=3, deepcache_interval=2),
        dict(steps=8, gate_step=2, deepcache_interval=3),
        dict(steps=5, deepcache_interval=2),
    ]
    expected = [run(eager, **call) for call in calls]
    compiled = quiet(TgateStableDiffusionPipeline(**components))
    compiled.unet = torch.compile(components["unet"], backend="eager", fullgraph=True)
    counters.clear()
    for call, reference in zip(calls, expected):
        assert torch.equal(run(compiled, **call), reference)
    # one graph per kind of forward: guided full (caching deep features or not), guided partial, the full one
    # at gate - 1 (caching cross-attention), gated full caching deep features, gated partial; none per step,
    # gate or interval (DeepCache alone runs the guided kinds)
    assert counters["stats"]["unique_graphs"] == 6
    torch._dynamo.reset()


# --- Bad values -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    (dict(deepcache_interval=0), "deepcache_interval must be an int >= 1"),
    (dict(gate_step=2, deepcache_interval=-1), "deepcache_interval must be an int >= 1"),
    (dict(deepcache_interval=2.0), "deepcache_interval must be an int >= 1"),
    (dict(deepcache_interval=True), "deepcache_interval must be an int >= 1"),
    (dict(deepcache_interval=3, deepcache_branch=-1), "deepcache_branch must be an int >= 0"),
    (dict(deepcache_interval=3, deepcache_branch=1.0), "deepcache_branch must be an int >= 0"),
    (dict(deepcache_interval=3, deepcache_branch=6), r"deepcache_branch must be < 6 for this UNet \(2 down blocks"),
    (dict(gate_step=2, deepcache_interval=1, deepcache_branch=6), "deepcache_branch must be < 6"),
    (dict(gate_step=2, deepcache_branch=1), "deepcache_branch is a DeepCache setting: it needs a deepcache_interval"),
    (dict(deepcache_interval=3, sp_interval=2), "need a gate_step"),
])
def test_bad_deepcache_values_are_clear_errors(bad, message):
    pipe = quiet(TgateStableDiffusionPipeline(**tiny_sd_components(seed=0)))
    with pytest.raises(ValueError, match=message):
        run(pipe, **bad)
    assert pipeline_is_stock(pipe) and unet_is_stock(pipe.unet)


@pytest.mark.parametrize("settings", [
    dict(deepcache_interval=3),
    dict(gate_step=2, deepcache_interval=2, deepcache_branch=1),
    dict(gate_step=2, deepcache_interval=1),
])
def test_a_pipeline_without_a_unet_refuses_deepcache(settings):
    pipe = quiet(TgatePixArtAlphaPipeline(**tiny_pixart_components(seed=0)))
    with pytest.raises(ValueError, match="PixArtTransformer2DModel is not a UNet2DConditionModel"):
        run(pipe, steps=2, **settings)
    assert pipeline_is_stock(pipe)
