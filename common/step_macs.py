"""MACs of a sampling run, step by step, counted through the project's own gate: the one MACs path.

A :class:`StepCounter` walks a run's :class:`~common.schedule.TgateSchedule` in order inside
``common.gate.gated_sampling``, as a sampling loop would, and counts one denoiser forward of each distinct
:class:`~common.schedule.StepPlan` (what cross- and self-attention and DeepCache's deep blocks do, guided or
one branch); a run's MACs are the sum over its steps. ``eval/macs.py`` (the tables), ``eval/latency.py``
(the speedup MACs predict), ``eval/observation.py`` (the gate sweep) and ``eval/toy`` all count this way.

What counts one forward is a :data:`MacsCount`, chosen per model by :func:`macs_count_for`: calflops
(:func:`calflops_macs`, the paper's counter) by default; :func:`flop_counter_macs` (torch's
``FlopCounterMode``, which also counts the attention product of ``scaled_dot_product_attention``) for the
cross-attention DiTs (``architectures.counts_attention``), or a counter named in :data:`MACS_COUNTERS`.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any, Callable

import torch

from .architectures import VAE_SCALE_FACTOR, counts_attention, denoiser_inputs, text_tokens
from .builders import meta_copy
from .dit_architectures import dit_denoiser_inputs, is_dit
from .gate import cross_attention_modules, deepcache_modules, gated_sampling, self_attention_modules
from .models import ModelSpec
from .pipeline import TgateMixin
from .schedule import CACHE, REUSE, StepPlan, TgateSchedule

MacsCount = Callable[[torch.nn.Module, dict[str, Any]], int]  # MACs of denoiser(**inputs), hooks included


def calflops_macs(denoiser: torch.nn.Module, inputs: dict[str, Any]) -> int:
    """calflops' MACs of ``denoiser(**inputs)``, with whatever hooks are installed on it.

    The same count as ``calflops.calculate_flops``, whose pipeline this drives directly: it takes nested
    inputs (SDXL's ``added_cond_kwargs``) as they are, and always removes calflops' patches of torch
    functions, which ``calculate_flops`` leaves in place (counting twice from then on) when a forward raises.
    """
    from calflops.calculate_pipline import CalFlopsPipline  # calflops patches torch functions: import on use

    counter = CalFlopsPipline(denoiser, include_backPropagation=False, compute_bp_factor=2.0)
    counter.start_flops_calculate(ignore_list=None)
    try:
        with torch.no_grad():
            denoiser(**inputs)
        return int(counter.get_total_macs())
    finally:
        counter.end_flops_calculate()


def flop_counter_macs(denoiser: torch.nn.Module, inputs: dict[str, Any]) -> int:
    """torch's ``FlopCounterMode`` count of ``denoiser(**inputs)`` in MACs (its FLOPs / 2): it counts at the
    aten level, so fused attention (``scaled_dot_product_attention``) and any module class are seen."""
    from .flop_count import attention_flop_counter

    with attention_flop_counter() as mode, torch.no_grad():
        denoiser(**inputs)
    return int(mode.get_total_flops()) // 2


# Registry model key -> its counter, where neither rule of macs_count_for is the right one (empty: both are).
MACS_COUNTERS: dict[str, MacsCount] = {}


def macs_count_for(spec: ModelSpec | None) -> MacsCount:
    """``spec``'s counter: :data:`MACS_COUNTERS`' where it names one; torch's for the cross-attention DiTs (the Wan
    models, the Wan toy, LTX-Video, Sana, HunyuanDiT: calflops skips ``scaled_dot_product_attention``, most of a
    video forward, flop_count.py); else calflops, as the paper's tables are counted."""
    if spec is None:
        return calflops_macs
    if spec.key in MACS_COUNTERS:
        return MACS_COUNTERS[spec.key]
    return flop_counter_macs if counts_attention(spec) else calflops_macs


class StepCounter:
    """MACs of one denoiser evaluation of each kind of step (each distinct ``StepPlan``) of TGATE runs.

    Counts go through the project's own hooks: a run's schedule is walked in order inside ``gated_sampling``
    with ``call.step`` set, as a sampling loop would, so every cache a step reuses was made by an earlier
    step. Each plan is counted once and remembered, so several schedules (gates, intervals) on the same
    denoiser and inputs share their counts. ``tokens``: the text length the pipeline hands the denoiser
    (``architectures.text_tokens``); ``count``: what counts one forward (calflops by default).
    """

    def __init__(self, denoiser: torch.nn.Module, resolution: int | None, guided: bool,
                 vae_factor: int = VAE_SCALE_FACTOR, tokens: int | None = None, count: MacsCount = calflops_macs,
                 inputs: dict[str, Any] | None = None) -> None:
        """``inputs``: the guided (or unguided) batch's inputs, where a square ``resolution`` does not say them
        (a video's frames and size: ``dit_architectures.dit_denoiser_inputs``)."""
        self.denoiser, self.guided, self.count = denoiser, guided, count
        if inputs is None:
            inputs = denoiser_inputs(denoiser, 2 if guided else 1, resolution, vae_factor=vae_factor, tokens=tokens)
        self.inputs = inputs
        self.counts: dict[StepPlan, int] = {}

    def step_macs(self, schedule: TgateSchedule, steps: int) -> list[int]:
        """MACs of each step ``0 .. steps - 1`` of a run with ``schedule``."""
        plans = [schedule.plan(step) for step in range(steps)]
        new = [step for step, plan in enumerate(plans) if plan not in self.counts]
        if new:
            with gated_sampling(self.denoiser, schedule, self.guided) as call, projections(self.denoiser) as ran:
                call.follows_loop = True  # this loop is the sampling loop: it sets the step itself
                for step, plan in enumerate(plans[: new[-1] + 1]):
                    call.step = step
                    if plan not in self.counts:
                        self.counts[plan] = self._count(plan, ran)
                    elif CACHE in (plan.cross_attention, plan.self_attention, plan.deepcache):
                        with torch.no_grad():  # not counted again, but its caches are what later steps reuse
                            self.denoiser(**self.inputs)
        return [self.counts[plan] for plan in plans]

    def total(self, schedule: TgateSchedule, steps: int) -> int:
        """MACs of a whole run of ``steps`` steps with ``schedule``."""
        return sum(self.step_macs(schedule, steps))

    def stock_step(self) -> int:
        """MACs of one step of the stock pipeline (before any gate, self-attention computed)."""
        return self.step_macs(TgateSchedule(gate_step=2), 1)[0]

    def run_macs(self, steps: int, schedule: TgateSchedule) -> tuple[int, int]:
        """(baseline, TGATE) MACs of a whole sampling run of ``steps`` steps.

        The baseline is the stock run, or DeepCache alone (no gate, the same interval and branch) where
        ``schedule`` uses DeepCache."""
        if schedule.uses_deepcache:
            alone = TgateSchedule(None, deepcache_interval=schedule.deepcache_interval,
                                  deepcache_branch=schedule.deepcache_branch)
            return self.total(alone, steps), self.total(schedule, steps)
        return steps * self.stock_step(), self.total(schedule, steps)

    def _count(self, plan: StepPlan, ran: dict[str, int]) -> int:
        ran.update(cross=0, self=0, deep=0)
        macs = self.count(self.denoiser, self.inputs)
        for kind, action in (("cross", plan.cross_attention), ("self", plan.self_attention),
                             ("deep", plan.deepcache)):
            if action == REUSE and ran[kind]:  # the hook found no cache and computed: the count would be wrong
                what = "the deep blocks" if kind == "deep" else f"{kind}-attention"
                raise RuntimeError(f"{what} computed at a step planned to reuse its cache ({plan})")
        return macs


@contextlib.contextmanager
def projections(denoiser: torch.nn.Module):
    """Count the query projections run by cross- and self-attention modules (``ran["cross"]``, ``ran["self"]``)
    and, with DeepCache, the full forwards (``ran["deep"]``)."""
    ran = {"cross": 0, "self": 0, "deep": 0}
    handles = []
    for kind, modules in (("cross", cross_attention_modules(denoiser)), ("self", self_attention_modules(denoiser))):
        for module in modules:
            handles.append(module.to_q.register_forward_pre_hook(
                lambda _module, _args, kind=kind: ran.__setitem__(kind, ran[kind] + 1)))
    # DeepCache: every partial forward skips the UNet's mid block (its DeepCache hook returns the cache without
    # running it), so its first resnet runs only in a full forward or when the cache was missing
    mid_block = getattr(getattr(denoiser, "mid_block", None), "resnets", None) if deepcache_modules(denoiser) else None
    if mid_block:
        handles.append(mid_block[0].register_forward_pre_hook(
            lambda _module, _args: ran.__setitem__("deep", ran["deep"] + 1)))
    try:
        yield ran
    finally:
        for handle in handles:
            handle.remove()


def runs_guidance(spec: ModelSpec, denoiser: torch.nn.Module) -> bool:
    """Whether ``spec``'s pipeline samples with classifier-free guidance: the TGATE pipelines' own rule."""
    return TgateMixin.uses_guidance(SimpleNamespace(denoiser=denoiser), spec.guidance_scale)


def pipeline_counter(pipe: Any, resolution: int, guided: bool, spec: ModelSpec | None = None,
                     height: int | None = None, width: int | None = None, frames: int = 1) -> StepCounter:
    """A :class:`StepCounter` for a built TGATE pipeline: its denoiser's weightless meta copy (built before
    any torch.compile), its VAE's scale, ``spec``'s text length and counter where the registry model is known.

    A cross-attention DiT is counted on its pipeline's inputs at ``height`` x ``width`` (default: ``resolution``)
    and ``frames``, the guidance batch of two (Wan's two calls of one cost the same), with torch's
    ``FlopCounterMode`` (attention included) whatever ``spec`` says."""
    denoiser = meta_copy(pipe.denoiser)
    if is_dit(denoiser):
        inputs = dit_denoiser_inputs(denoiser, 2 if guided else 1, height or resolution, width or resolution, frames)
        return StepCounter(denoiser, None, guided, count=flop_counter_macs, inputs=inputs)
    tokens = text_tokens(spec) if spec is not None else None
    return StepCounter(denoiser, resolution, guided, pipe.vae_scale_factor, tokens, macs_count_for(spec))
