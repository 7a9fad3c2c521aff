"""TGATE on a *stock* diffusers pipeline with plain torch hooks, independent of ``common/``: a reference for
pipelines whose loop is long to write out (ControlNet inpainting, SDXL img2img, AnimateDiff, SVD).

The stock pipeline runs its own loop; the hooks do what TGATE does, on the denoisers directly:

- the step is the number of ``scheduler.step`` calls so far (first-order schedulers: one per step);
- every cross-attention module (``is_cross_attention``) of every denoiser caches its output at step
  ``gate - 1`` (the mean of the uncond and cond halves when ``guided``) and returns that cache from step
  ``gate`` on;
- from step ``gate`` on, under guidance, each denoiser runs on the first (negative) half of every batch-sized
  input (and of inputs repeated per frame, a multiple of the batch), and its outputs are doubled back, so the
  stock guidance formula returns that prediction as is.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch


def map_batch(tree: Any, batch: int, fn: Callable[[torch.Tensor], torch.Tensor], multiples: bool = False) -> Any:
    """Apply ``fn`` to every tensor of first dimension ``batch`` (or a multiple of it, with ``multiples``) in a
    nest of tuples, lists and dicts."""
    if torch.is_tensor(tree):
        size = tree.shape[0] if tree.ndim else 0
        return fn(tree) if size and (size == batch or (multiples and size % batch == 0)) else tree
    if isinstance(tree, dict):
        return type(tree)(**{key: map_batch(value, batch, fn, multiples) for key, value in tree.items()})
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_batch(value, batch, fn, multiples) for value in tree)
    return tree


def first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    return next(value for value in (*args, *kwargs.values()) if torch.is_tensor(value))


def cross_attention(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    return [module for module in denoiser.modules() if getattr(module, "is_cross_attention", False)]


@contextlib.contextmanager
def hooked_tgate(scheduler, denoisers, gate: int, guided: bool):
    """Within the block, a stock pipeline using ``scheduler`` and ``denoisers`` samples with TGATE."""
    assert scheduler.order == 1, "the step count below assumes one denoiser evaluation per step"
    now = {"step": 0}
    stock_step = scheduler.step

    def counting_step(*args, **kwargs):
        output = stock_step(*args, **kwargs)
        now["step"] += 1
        return output

    def gated():
        return guided and now["step"] >= gate

    def cut(module, args, kwargs):
        if gated():  # text repeated per frame (AnimateDiff: 2B x frames) is halved too
            batch = first_tensor(args, kwargs).shape[0]
            half = lambda t: t[: t.shape[0] // 2]  # noqa: E731
            return map_batch(args, batch, half, True), map_batch(kwargs, batch, half, True)
        return None

    def double(module, args, kwargs, output):
        if gated():
            return map_batch(output, first_tensor(args, kwargs).shape[0], lambda t: torch.cat([t, t]))
        return None

    cache = {}

    def gate_cross_attention(module, args, output):
        if now["step"] == gate - 1:
            uncond, cond = output.chunk(2) if guided else (output, output)
            cache[module] = (uncond + cond) / 2 if guided else output
        return cache[module] if now["step"] >= gate else output

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
