"""Checks shared by the SDXL, PixArt and LCM test modules: what the denoiser and its cross-attention do per step."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import torch

from tests.hooked_reference import cross_attention as cross_attention_modules


def quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class DenoiserCall:
    batch: int = 0  # samples entering the denoiser's first layer (after any guidance cut)
    projections: int = 0  # q, k, v and output projections run by cross-attention modules
    cross_attention: list = field(default_factory=list)  # output of each cross-attention module, in order


def record_denoiser_calls(denoiser: torch.nn.Module, entry: torch.nn.Module, run) -> list[DenoiserCall]:
    """Run ``run()`` and record, for each denoiser call (one per sampling step), what the denoiser did.

    ``entry`` is the first layer the latents go through (``conv_in``, ``pos_embed``). Hooks sit on the
    layers, inside the denoiser, so they see what runs after TGATE's hooks decided.
    """
    calls: list[DenoiserCall] = []
    cross = cross_attention_modules(denoiser)

    def count_projection(module, args):
        calls[-1].projections += 1

    handles = [
        denoiser.register_forward_pre_hook(lambda module, args: calls.append(DenoiserCall())),
        entry.register_forward_pre_hook(lambda module, args: setattr(calls[-1], "batch", args[0].shape[0])),
    ]
    for attention in cross:
        handles.append(attention.register_forward_hook(lambda module, args, out: calls[-1].cross_attention.append(out)))
        for projection in (attention.to_q, attention.to_k, attention.to_v, attention.to_out[0]):
            handles.append(projection.register_forward_pre_hook(count_projection))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return calls


def assert_gated_run(calls: list[DenoiserCall], denoiser: torch.nn.Module, gate: int, images: int, guided: bool):
    """What a TGATE run must have done, step by step.

    Before the gate: the guidance batch (two samples per image when ``guided``) and every cross-attention
    projection. From the gate on: one sample per image, no projection, and every cross-attention module
    returns its cache: the mean of its two halves at step ``gate - 1`` (guided), else its output there.
    """
    gated_steps = len(calls) - gate
    assert [call.batch for call in calls] == [images * (2 if guided else 1)] * gate + [images] * gated_steps
    every_projection = 4 * len(cross_attention_modules(denoiser))
    assert [call.projections for call in calls] == [every_projection] * gate + [0] * gated_steps
    at_gate = calls[gate - 1].cross_attention
    expected = [(output[:images] + output[images:]) / 2 for output in at_gate] if guided else at_gate
    for call in calls[gate:]:
        assert len(call.cross_attention) == len(expected)
        assert all(torch.equal(cached, cache) for cached, cache in zip(call.cross_attention, expected))


def pipeline_is_stock(pipe) -> bool:
    """No TGATE hook left on the denoiser or its cross-attention modules, no wrapped ``scheduler.step``."""
    modules = [pipe.denoiser, *cross_attention_modules(pipe.denoiser)]
    return not any("forward" in m.__dict__ or hasattr(m, "_diffusers_hook") for m in modules) and (
        "step" not in pipe.scheduler.__dict__
    )


@dataclass
class ReferenceStep:
    index: int = 0  # the step a reference loop is in; the loop sets it


@contextlib.contextmanager
def reference_cross_attention_gate(denoiser: torch.nn.Module, gate: int, guided: bool):
    """TGATE's cross-attention side for a reference loop written out in a test, with plain torch hooks.

    At step ``gate - 1`` each cross-attention output is cached (the mean of the uncond and cond halves
    when ``guided``); from step ``gate`` on the cache replaces the output. The loop sets ``.index``.
    """
    step, cache = ReferenceStep(), {}

    def gate_cross_attention(module, args, output):
        if step.index == gate - 1:
            uncond, cond = output.chunk(2) if guided else (output, output)
            cache[module] = (uncond + cond) / 2 if guided else output
        return cache[module] if step.index >= gate else output

    handles = [module.register_forward_hook(gate_cross_attention) for module in cross_attention_modules(denoiser)]
    try:
        yield step
    finally:
        for handle in handles:
            handle.remove()


def assert_concurrent_runs_equal_sequential(jobs, rounds: int = 2) -> None:
    """Run each job once in turn, then ``rounds`` times all at once, a thread each (released together):
    every concurrent result must equal its sequential one bit for bit. A job builds what it runs."""
    sequential = [job() for job in jobs]
    for _ in range(rounds):  # interleavings differ from round to round
        results, errors = [None] * len(jobs), []
        barrier = threading.Barrier(len(jobs))

        def request(index, job):
            try:
                barrier.wait()
                results[index] = job()
            except Exception as error:  # noqa: BLE001 - reported below
                errors.append(error)

        threads = [threading.Thread(target=request, args=(i, job)) for i, job in enumerate(jobs)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        for index, (expected, got) in enumerate(zip(sequential, results)):
            assert torch.equal(expected, got), f"request {index} differs from its sequential run"


# --- Pieces of the explicit reference loops (diffusers only, nothing from common/) ------------------------------

TINY_IMAGE_SIDE = 32  # the tiny UNets' image side: 16x16 latents, VAE factor 2
CALLBACK_TENSORS = {"sd": ["prompt_embeds"], "sdxl": ["prompt_embeds", "add_text_embeds", "add_time_ids"]}


def end_guidance_after(step):
    """diffusers' dynamic-guidance recipe for any batch: after ``step`` keep the positive half, guidance 0."""

    def callback(pipe, index, timestep, tensors):
        if index == step:
            tensors = {name: value.chunk(2)[-1] for name, value in tensors.items()}
            pipe._guidance_scale = 0.0
        return tensors

    return callback


def branch_denoiser(encoder, unet, prompts, sdxl: bool):
    """``denoise(latent_input, t, *branches)``: the UNet on the named branches ("negative", "positive") of
    ``prompts``, encoded by the stock pipeline ``encoder``, concatenated in that order (SDXL's pooled text
    and time ids too)."""
    count = len(prompts)
    if sdxl:
        positive, negative, pooled, negative_pooled = encoder.encode_prompt(list(prompts), device="cpu")
        side = TINY_IMAGE_SIDE
        ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=torch.float32).repeat(count, 1)
        branches = {"negative": (negative, negative_pooled, ids), "positive": (positive, pooled, ids)}
    else:
        positive, negative = encoder.encode_prompt(list(prompts), "cpu", 1, True)
        branches = {"negative": (negative, None, None), "positive": (positive, None, None)}

    def denoise(latent_input, t, *names):
        context, pooled_embeds, time_ids = (torch.cat(parts) if parts[0] is not None else None
                                            for parts in zip(*(branches[name] for name in names)))
        added = {"text_embeds": pooled_embeds, "time_ids": time_ids} if sdxl else None
        return unet(latent_input, t, encoder_hidden_states=context, added_cond_kwargs=added).sample

    return denoise
