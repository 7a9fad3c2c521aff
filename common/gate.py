"""The TGATE gate: cache cross-attention at the gate step, then reuse it and drop classifier-free guidance.

For a sampling run with gate step ``g``:

- steps ``i < g`` run as stock (guided on ``[uncond, cond]`` when guidance is on);
- at step ``g - 1`` every cross-attention module caches its output: the mean of the uncond and cond halves
  under guidance, the output itself without guidance;
- steps ``i >= g``: every cross-attention module returns its cache, and under guidance the denoiser runs
  the unconditional (negative) half only; its prediction is handed back for both halves, so the pipeline's
  guidance formula ``uncond + s * (cond - uncond)`` returns it unchanged.

Everything is installed on the denoiser for one sampling run by :func:`gated_sampling` and removed in its
``finally``: afterwards the modules are stock again. The hooks use diffusers' own ``HookRegistry``, so they
wrap whatever ``forward`` and attention processor are installed (IP-Adapter, LoRA scales, offloading).
"""

from __future__ import annotations

import contextlib
import functools
import numbers
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention

_CROSS_ATTENTION_HOOK = "tgate_cross_attention"
_GUIDANCE_CUT_HOOK = "tgate_guidance_cut"


def check_gate_step(gate_step: Any) -> int:
    """Return ``gate_step`` if it is a valid gate step (an int >= 1), else raise a ``ValueError``."""
    if isinstance(gate_step, bool) or not isinstance(gate_step, numbers.Integral):
        raise ValueError(
            f"gate_step must be an int >= 1 (or None for the stock pipeline), got {gate_step!r} "
            f"of type {type(gate_step).__name__}."
        )
    if gate_step < 1:
        raise ValueError(
            f"gate_step must be >= 1: it is the number of guided steps run before the gate, got {gate_step}. "
            "Use gate_step=None (or a value >= num_inference_steps) for the stock pipeline."
        )
    return int(gate_step)


@dataclass
class GateState:
    """The state of one sampling run, shared by every hook of that run."""

    gate_step: int
    guided: bool
    step: int = 0  # index of the sampling-loop step in progress

    @property
    def caching(self) -> bool:
        """True during the last step before the gate, when cross-attention outputs are cached."""
        return self.step == self.gate_step - 1

    @property
    def gated(self) -> bool:
        """True from the gate on: cached cross-attention, no guidance branch."""
        return self.step >= self.gate_step


def merge_guidance_halves(output: torch.Tensor) -> torch.Tensor:
    """Mean of the uncond and cond halves of a guidance batch ``[uncond x B, cond x B]``, per image."""
    uncond, cond = output.chunk(2)
    return (uncond + cond) / 2


class CrossAttentionGateHook(ModelHook):
    """Runs a cross-attention module until the gate, caches its output at step ``gate - 1``, then returns it."""

    def __init__(self, state: GateState) -> None:
        super().__init__()
        self.state = state
        self.cache: torch.Tensor | None = None

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        if self.state.gated:
            if self.cache is None:
                raise RuntimeError(
                    f"TGATE reached step {self.state.step} without a cached cross-attention output; "
                    f"the step {self.state.gate_step - 1} before the gate never ran."
                )
            return self.cache
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.state.caching:
            if not torch.is_tensor(output):
                raise TypeError(f"TGATE caches tensor outputs of cross-attention, got {type(output).__name__}.")
            self.cache = merge_guidance_halves(output) if self.state.guided else output
        return output


class GuidanceCutHook(ModelHook):
    """After the gate under guidance: run the denoiser on the unconditional half of the batch only."""

    def __init__(self, state: GateState) -> None:
        super().__init__()
        self.state = state

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        if not (self.state.guided and self.state.gated):
            return self.fn_ref.original_forward(*args, **kwargs)
        batch = _first_tensor((args, kwargs)).shape[0]
        if batch % 2:
            raise RuntimeError(f"a guidance batch has an even size, the denoiser got {batch} samples.")
        # diffusers orders guidance batches [negative x B, positive x B]: keep the negative half.
        take_first_half = _on_batch_tensors(batch, lambda t: t[: batch // 2])
        output = self.fn_ref.original_forward(*take_first_half(args), **take_first_half(kwargs))
        # Both halves equal: the pipeline's guidance formula then returns this prediction as is.
        return _on_batch_tensors(batch // 2, lambda t: torch.cat([t, t]))(output)


def _first_tensor(tree: Any) -> torch.Tensor:
    if torch.is_tensor(tree):
        return tree
    values = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (list, tuple)) else ()
    for value in values:
        with contextlib.suppress(LookupError):
            return _first_tensor(value)
    raise LookupError("no tensor among the denoiser's inputs")


def _on_batch_tensors(batch: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[Any], Any]:
    """Map ``fn`` over every tensor in a nest of dicts/lists/tuples whose first dimension is ``batch``."""

    def apply(tree: Any) -> Any:
        if torch.is_tensor(tree):
            return fn(tree) if tree.ndim > 0 and tree.shape[0] == batch else tree
        if isinstance(tree, dict):  # also diffusers' BaseOutput, an OrderedDict
            return type(tree)(**{key: apply(value) for key, value in tree.items()})
        if isinstance(tree, (list, tuple)):
            return type(tree)(apply(value) for value in tree)
        return tree

    return apply


def cross_attention_modules(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """Every cross-attention module of a denoiser (the ``attn2`` of each transformer block)."""
    return [
        module
        for module in denoiser.modules()
        if isinstance(module, (Attention, AttentionModuleMixin)) and getattr(module, "is_cross_attention", False)
    ]


@contextlib.contextmanager
def wrapped_scheduler_step(scheduler: Any, wrap: Callable[[Callable], Callable]) -> Iterator[None]:
    """Replace ``scheduler.step`` by ``wrap(step)`` inside the block; restore it on exit.

    Every diffusers sampling loop ends each of its steps with exactly one ``scheduler.step`` call, so this
    is where the loop's step index can be read. The wrapper keeps ``step``'s signature: pipelines inspect it
    to decide whether to pass ``eta`` and ``generator``.
    """
    step = scheduler.step
    had_step_attribute = "step" in scheduler.__dict__
    scheduler.step = functools.wraps(step)(wrap(step))
    try:
        yield
    finally:
        if had_step_attribute:
            scheduler.step = step
        else:
            del scheduler.step


@contextlib.contextmanager
def gated_sampling(
    denoiser: torch.nn.Module, scheduler: Any, gate_step: int, guided: bool
) -> Iterator[GateState]:
    """Install TGATE on ``denoiser`` for one sampling run driven by ``scheduler``; remove it on exit.

    The step index comes from the sampling loop: the state advances after each ``scheduler.step`` call.
    """
    state = GateState(check_gate_step(gate_step), guided)
    modules = cross_attention_modules(denoiser)
    if not modules:
        raise ValueError(f"{type(denoiser).__name__} has no cross-attention module for TGATE to gate.")

    def advancing_the_state(step: Callable) -> Callable:
        def step_and_advance(*args, **kwargs):
            output = step(*args, **kwargs)
            state.step += 1
            return output

        return step_and_advance

    hooked: list[_InstalledHook] = []
    try:
        hooked.append(_InstalledHook.register(denoiser, GuidanceCutHook(state), _GUIDANCE_CUT_HOOK))
        for module in modules:
            hooked.append(_InstalledHook.register(module, CrossAttentionGateHook(state), _CROSS_ATTENTION_HOOK))
        with wrapped_scheduler_step(scheduler, advancing_the_state):
            yield state
    finally:
        for installed in reversed(hooked):
            installed.remove()
        if hasattr(denoiser, "_diffusers_hook"):
            denoiser._diffusers_hook.invalidate_child_registries_cache()


@dataclass
class _InstalledHook:
    """One hook registered on one module, removable so that the module is left exactly as it was."""

    module: torch.nn.Module
    name: str
    created_registry: bool
    had_forward_attribute: bool

    @classmethod
    def register(cls, module: torch.nn.Module, hook: ModelHook, name: str) -> "_InstalledHook":
        installed = cls(module, name, not hasattr(module, "_diffusers_hook"), "forward" in module.__dict__)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
        return installed

    def remove(self) -> None:
        registry = self.module._diffusers_hook
        registry.remove_hook(self.name, recurse=False)
        if self.created_registry and not registry.hooks:
            # HookRegistry leaves the bound original forward as an instance attribute; drop it and the
            # empty registry so the module is stock again.
            del self.module._diffusers_hook
            if not self.had_forward_attribute:
                self.module.__dict__.pop("forward", None)
