"""TGATE on a *stock* diffusers pipeline with plain torch hooks, independent of ``common/``: a reference for
pipelines whose loop is long to write out (ControlNet inpainting, SDXL img2img, AnimateDiff, SVD, HunyuanDiT).

The reference keeps its own rules, written per architecture and per pipeline, never the gate's:

- which modules are cross-attention: named per denoiser class (:data:`CROSS_ATTENTION_NAMES`), e.g. the
  ``attn2`` of the transformer blocks inside a UNet's ``attentions``, not the motion modules' ``attn2``;
- which inputs are per sample: named per denoiser class (:data:`PER_SAMPLE_INPUTS`); every other input passes
  whole (rotary tables, sizes);
- which half of each is kept after the gate: the negative one, except the inputs a test names ``positive``
  (conditioning only the positive branch carries: SVD's image, GLIGEN's boxes).

The stock pipeline runs its own loop; the hooks do what TGATE does, on the denoisers directly:

- the step is the number of ``scheduler.step`` calls so far (first-order schedulers: one per step);
- every cross-attention module caches its output at step ``gate - 1`` (one cache per call in an evaluation) (the mean of the uncond and cond halves
  when ``guided``) and returns that cache from step ``gate`` on;
- from step ``gate`` on, under guidance, each denoiser runs one half of each per-sample input (inputs repeated
  per frame, a multiple of the batch, have the same order), and its outputs are doubled back, so the stock
  guidance formula returns that prediction as is.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
from typing import Any, Callable

import torch

_UNET_ATTN2 = r"attentions\.\d+\.transformer_blocks\.\d+\.attn2$"
CROSS_ATTENTION_NAMES = {
    "UNet2DConditionModel": _UNET_ATTN2,
    "ControlNetModel": _UNET_ATTN2,
    "MultiControlNetModel": _UNET_ATTN2,  # nets.<i>.<a ControlNetModel's names>
    "UNetMotionModel": _UNET_ATTN2,  # motion_modules.*.attn2 is temporal self-attention
    "UNetSpatioTemporalConditionModel": r"attentions\.\d+\.(transformer_blocks|temporal_transformer_blocks)\.\d+\.attn2$",
    "PixArtTransformer2DModel": r"^transformer_blocks\.\d+\.attn2$",
    "HunyuanDiT2DModel": r"^blocks\.\d+\.attn2$",
}
PER_SAMPLE_INPUTS = {
    "UNet2DConditionModel": ("sample", "encoder_hidden_states", "timestep_cond", "added_cond_kwargs",
                             "down_block_additional_residuals", "mid_block_additional_residual",
                             "down_intrablock_additional_residuals", "cross_attention_kwargs.gligen"),
    "ControlNetModel": ("sample", "encoder_hidden_states", "controlnet_cond", "added_cond_kwargs"),
    "MultiControlNetModel": ("sample", "encoder_hidden_states", "controlnet_cond", "added_cond_kwargs"),
    "UNetMotionModel": ("sample", "encoder_hidden_states"),
    "UNetSpatioTemporalConditionModel": ("sample", "encoder_hidden_states", "added_time_ids"),
    "PixArtTransformer2DModel": ("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask",
                                 "added_cond_kwargs"),
    "HunyuanDiT2DModel": ("hidden_states", "timestep", "encoder_hidden_states", "text_embedding_mask",
                          "encoder_hidden_states_t5", "text_embedding_mask_t5", "image_meta_size", "style"),
}


def cross_attention(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The cross-attention modules of ``denoiser``, by the names of its architecture."""
    pattern = re.compile(CROSS_ATTENTION_NAMES[type(denoiser).__name__])
    modules = [module for name, module in denoiser.named_modules() if pattern.search(name)]
    assert modules, f"no module of {type(denoiser).__name__} matches {pattern.pattern}"
    return modules


def map_tensors(tree: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor in a nest of tuples, lists and dicts."""
    if torch.is_tensor(tree):
        return fn(tree)
    if isinstance(tree, dict):
        return type(tree)(**{key: map_tensors(value, fn) for key, value in tree.items()})
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_tensors(value, fn) for value in tree)
    return tree


def one_branch(denoiser: torch.nn.Module, args: tuple, kwargs: dict, positive=()) -> dict:
    """The denoiser's arguments by name, each per-sample input cut to its negative half (``positive``: its
    positive half; a name ``a.b`` is key ``b`` of the dict ``a``)."""
    arguments = inspect.signature(denoiser.forward).bind(*args, **kwargs).arguments

    def half(keep_positive):
        def cut(t):
            if t.ndim == 0:
                return t
            return t[t.shape[0] // 2:] if keep_positive else t[: t.shape[0] // 2]
        return cut

    for name in PER_SAMPLE_INPUTS[type(denoiser).__name__]:
        top, _, key = name.partition(".")
        value = arguments.get(top)
        if key and isinstance(value, dict) and value.get(key) is not None:
            arguments[top] = {**value, key: map_tensors(value[key], half(name in positive))}
        elif not key and isinstance(value, dict):
            arguments[top] = {k: map_tensors(v, half(name in positive or f"{name}.{k}" in positive))
                              for k, v in value.items()}
        elif not key and value is not None:
            arguments[top] = map_tensors(value, half(name in positive))
    return arguments


@contextlib.contextmanager
def hooked_tgate(scheduler, denoisers, gate: int, guided: bool, positive=()):
    """Within the block, a stock pipeline using ``scheduler`` and ``denoisers`` samples with TGATE."""
    assert scheduler.order == 1, "the step count below assumes one denoiser evaluation per step"
    now = {"step": 0}
    stock_step = scheduler.step

    @functools.wraps(stock_step)  # pipelines read its signature to pass generator and eta
    def counting_step(*args, **kwargs):
        output = stock_step(*args, **kwargs)
        now["step"] += 1
        return output

    def gated():
        return guided and now["step"] >= gate

    visits = {}

    def cut(module, args, kwargs):
        visits.clear()  # a new evaluation: a module called twice in it keeps two caches, in order
        if gated():
            return (), one_branch(module, args, kwargs, positive)
        return None

    def double(module, args, kwargs, output):
        if gated():
            return map_tensors(output, lambda t: torch.cat([t, t]) if t.ndim else t)
        return None

    cache = {}

    def gate_cross_attention(module, args, output):
        site = (module, visits.get(module, 0))
        visits[module] = site[1] + 1
        if now["step"] == gate - 1:
            uncond, cond = output.chunk(2) if guided else (output, output)
            cache[site] = (uncond + cond) / 2 if guided else output
        return cache[site] if now["step"] >= gate else output

    handles = []
    scheduler.step = counting_step
    try:
        for denoiser in denoisers:
            handles.append(denoiser.register_forward_pre_hook(cut, with_kwargs=True))
            handles.append(denoiser.register_forward_hook(double, with_kwargs=True))
            handles += [m.register_forward_hook(gate_cross_attention) for m in cross_attention(denoiser)]
        yield now
    finally:
        del scheduler.step
        for handle in handles:
            handle.remove()
