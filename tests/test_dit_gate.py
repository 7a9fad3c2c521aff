"""TGATE on LTX-Video, Sana and HunyuanDiT (batched guidance) against a reference written here, on tiny components.

The reference runs the stock pipeline with plain torch hooks, independent of common/gate.py: it counts steps with
``callback_on_step_end``, names each architecture's cross-attention modules and each pipeline's per-sample
transformer inputs itself, and does what TGATE does. At step ``gate - 1`` every cross-attention output is cached
(the mean of the negative and positive halves under guidance); from step ``gate`` on the transformer runs the
negative half of every per-sample input only, each cross-attention module returns its cache, and the prediction is
handed back for both halves (so the pipeline's ``uncond + s * (cond - uncond)`` returns it unchanged).
``gate >= steps`` is the stock pipeline bit for bit.

Known to fail before the lead's gate work lands (common/gate.py): LTX-Video (its ``LTXAttention`` has no
``is_cross_attention``, so the gate finds no cross-attention module) and HunyuanDiT (its ``image_rotary_emb`` table,
one row per image token, is cut as if it were per sample).
"""

from __future__ import annotations

import re

import pytest
import torch

from common.models import get_model
from HunyuanDiT.pipeline import TgateHunyuanDiTPipeline
from LTX_Video.pipeline import TgateLTXPipeline
from Sana.pipeline import TgateSanaPipeline

STEPS, GATE = 4, 2

# Per architecture: the cross-attention modules, the per-sample inputs of the transformer call (keyword names; the
# positional ones by index), and the call's size arguments for the tiny components.
MODELS = {
    "ltx": dict(cls=TgateLTXPipeline, cross=r"transformer_blocks\.\d+\.attn2",
                per_sample=("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask"),
                positional=(), call=dict(height=32, width=32, num_frames=5)),
    "sana": dict(cls=TgateSanaPipeline, cross=r"transformer_blocks\.\d+\.attn2",
                 per_sample=("encoder_hidden_states", "encoder_attention_mask", "timestep"), positional=(0,),
                 call=dict(height=32, width=32, use_resolution_binning=False)),
    "hunyuandit": dict(cls=TgateHunyuanDiTPipeline, cross=r"blocks\.\d+\.attn2",
                       per_sample=("encoder_hidden_states", "text_embedding_mask", "encoder_hidden_states_t5",
                                   "text_embedding_mask_t5", "image_meta_size", "style"),
                       positional=(0, 1), call=dict(height=32, width=32, use_resolution_binning=False)),
}


def output_of(result) -> torch.Tensor:
    return result.frames if hasattr(result, "frames") else result.images


def run(pipe, prompts, guidance, seed=0, **kwargs):
    return output_of(pipe(prompts, num_inference_steps=STEPS, guidance_scale=guidance, output_type="latent",
                          generator=torch.Generator().manual_seed(seed), **MODELS[kwargs.pop("key")]["call"], **kwargs))


def reference(pipe, key: str, prompts, guidance: float, gate: int) -> torch.Tensor:
    """The stock pipeline with TGATE done by hooks written here (module docstring)."""
    model = MODELS[key]
    transformer = pipe.transformer
    guided = guidance > 1
    state = {"step": 0}
    cache = {}

    def half(tensor):
        return tensor.chunk(2)[0]

    def gate_cross_attention(module, args, output):
        if state["step"] == gate - 1:
            cache[module] = sum(output.chunk(2)) / 2 if guided else output
        return cache[module] if state["step"] >= gate else output

    cross = [module for name, module in transformer.named_modules() if re.fullmatch(model["cross"], name)]
    assert cross, f"no {model['cross']} in {type(transformer).__name__}"
    handles = [module.register_forward_hook(gate_cross_attention) for module in cross]
    stock_forward = transformer.forward

    def forward(*args, **kwargs):
        if not (guided and state["step"] >= gate):
            return stock_forward(*args, **kwargs)
        args = tuple(half(value) if index in model["positional"] else value for index, value in enumerate(args))
        kwargs = {name: half(value) if name in model["per_sample"] else value for name, value in kwargs.items()}
        output = stock_forward(*args, **kwargs)
        return (torch.cat([output[0], output[0]]),)  # the single branch for both halves

    def next_step(pipe, index, timestep, callback_kwargs):
        state["step"] = index + 1
        return callback_kwargs

    transformer.forward = forward
    try:
        return run(pipe, prompts, guidance, key=key, callback_on_step_end=next_step)
    finally:
        del transformer.forward
        for handle in handles:
            handle.remove()


@pytest.fixture(scope="module", params=list(MODELS))
def tiny(request):
    pipe = get_model(request.param).tiny_pipeline()
    assert isinstance(pipe, MODELS[request.param]["cls"])
    pipe.set_progress_bar_config(disable=True)
    return request.param, pipe


@pytest.mark.parametrize("prompts", [["a cat"], ["a cat", "a red dog"]], ids=["1 prompt", "2 prompts"])
@pytest.mark.parametrize("guidance", [4.0, 1.0], ids=["guided", "unguided"])
def test_tgate_equals_the_reference(tiny, prompts, guidance):
    key, pipe = tiny
    expected = reference(pipe, key, prompts, guidance, GATE)
    gated = run(pipe, prompts, guidance, key=key, gate_step=GATE)
    stock = run(pipe, prompts, guidance, key=key)
    assert not torch.equal(expected, stock)  # the reference gates something
    torch.testing.assert_close(gated, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gate", [STEPS, STEPS + 3])
def test_gate_at_or_after_the_last_step_is_stock(tiny, gate):
    key, pipe = tiny
    assert torch.equal(run(pipe, ["a cat", "a dog"], 4.0, key=key, gate_step=gate),
                       run(pipe, ["a cat", "a dog"], 4.0, key=key))


def test_one_transformer_call_per_step_after_the_gate(tiny):
    key, pipe = tiny
    batches = []  # the batch the transformer's first self-attention sees (after any cut of the guidance batch)
    first_cross = next(name for name, _ in pipe.transformer.named_modules() if re.fullmatch(MODELS[key]["cross"], name))
    attn1 = pipe.transformer.get_submodule(first_cross.removesuffix("attn2") + "attn1")
    handle = attn1.register_forward_pre_hook(
        lambda module, args, kwargs: batches.append((args[0] if args else kwargs["hidden_states"]).shape[0]),
        with_kwargs=True)
    try:
        run(pipe, ["a cat"], 4.0, key=key, gate_step=GATE)
    finally:
        handle.remove()
    assert batches == [2] * GATE + [1] * (STEPS - GATE)
