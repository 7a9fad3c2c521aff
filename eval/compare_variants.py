"""The variants eval/compare.py runs: stock, diffusers' caches at their documented defaults and one faster
setting, and the places of TGATE and of TGATE stacked on a cache.

A variant is a name plus a function that, given the pipeline and the run's step count, returns the cache config
to pass to ``pipe.transformer.enable_cache`` (None: stock). Documented defaults are the config dataclasses'
defaults in diffusers 0.42.1 (``src/diffusers/hooks/*.py``), except where a config has no usable default:
PyramidAttentionBroadcast (every skip range defaults to None) takes the example of its docstring and
diffusers' docs (spatial attention every 2nd call in timesteps (100, 800)); MagCache needs ``mag_ratios``
calibrated on the model (``calibrate_mag_ratios``, diffusers' calibration mode).
"""

from __future__ import annotations

import ast
import contextlib
import io
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# Measured on the toy (tests/test_compare.py): batch 1 raises IndexError; an even batch runs, silently wrong.
FASTER_CACHE_ON_TWO_CALLS = (
    "FasterCache assumes one batched [uncond, cond] call and splits each call's batch in halves; WanPipeline "
    "guides with two calls (cond, then uncond) of the prompts' batch B: at B = 1 it raises IndexError, at an "
    "even B it takes the first B/2 prompts for the unconditional branch and rebuilds them from the other "
    "half's output (no error, wrong images)")
# Measured on the toy (tests/test_compare.py): PAB counts calls per attention module, not steps or branches.
PAB_ON_TWO_CALLS = (
    "PAB counts calls per attention module and keeps one cache for both of WanPipeline's calls per step: in its "
    "timestep range the unconditional call reuses the conditional call's output of the same step (the cond call "
    "is always the one computed), so the reuse is across branches, not across steps, and reused cross-attention "
    "carries the prompt into the unconditional branch (weaker guidance)")


@dataclass
class Variant:
    name: str
    method: str  # stock, TGATE, TGATE-V2, PyramidAttentionBroadcast, FirstBlockCache, ... or "TGATE + <cache>"
    setting: str  # human-readable settings
    cache_config: Callable[[Any, int], Any] | None = None  # (pipe, steps) -> config for enable_cache; None: none
    call_kwargs: dict = field(default_factory=dict)  # extra pipeline call arguments (TGATE's gate_step, ...)
    not_run: str | None = None  # why this variant cannot run here yet (it is listed with this reason)
    does_not_compose: str | None = None  # why the method cannot work with this pipeline (listed, not run)
    caveat: str | None = None  # it runs, but not as the method intends on this pipeline (printed with the table)


def calibrate_mag_ratios(pipe, call: Callable[..., Any], steps: int) -> list[float]:
    """MagCache's ratios for this model and step count, by diffusers' calibration mode.

    ``call()`` runs the pipeline once with ``steps`` steps. Calibration runs every block and prints one list of
    ratios per cache context; WanPipeline has two (cond and uncond). MagCache takes one list: their mean.
    """
    from diffusers import MagCacheConfig

    pipe.transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=steps))
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            call()
    finally:
        pipe.transformer.disable_cache()
    lists = [ast.literal_eval(line) for line in printed.getvalue().splitlines() if line.startswith("[") and
             not line.startswith("[MagCache]")]
    if not lists or any(len(ratios) != steps for ratios in lists):
        raise RuntimeError(f"MagCache calibration printed no {steps}-step ratio lists: {printed.getvalue()!r}")
    return [round(float(v), 5) for v in np.mean(lists, axis=0)]


def diffusers_cache_variants(mag_ratios: list[float] | None) -> list[Variant]:
    """diffusers' caches for a transformer with ``CacheMixin`` (``enable_cache``): defaults and one faster setting."""
    from diffusers import (
        FirstBlockCacheConfig,
        MagCacheConfig,
        PyramidAttentionBroadcastConfig,
        TaylorSeerCacheConfig,
    )

    def timestep(pipe) -> Callable[[], int]:
        return lambda: pipe.current_timestep

    def pab(**settings) -> Callable[[Any, int], Any]:
        return lambda pipe, steps: PyramidAttentionBroadcastConfig(current_timestep_callback=timestep(pipe),
                                                                   **settings)

    def mag(**settings) -> Callable[[Any, int], Any]:
        return lambda pipe, steps: MagCacheConfig(num_inference_steps=steps, mag_ratios=mag_ratios, **settings)

    variants = [
        Variant("PAB (docs)", "PyramidAttentionBroadcast", "spatial every 2nd call, timesteps (100, 800)",
                pab(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800)),
                caveat=PAB_ON_TWO_CALLS),
        Variant("PAB (fast)", "PyramidAttentionBroadcast",
                "spatial every 2nd, cross every 6th call (PAB paper), timesteps (100, 900)",
                pab(spatial_attention_block_skip_range=2, cross_attention_block_skip_range=6,
                    spatial_attention_timestep_skip_range=(100, 900), cross_attention_timestep_skip_range=(100, 900)),
                caveat=PAB_ON_TWO_CALLS),
        Variant("FasterCache (default)", "FasterCache", "defaults", does_not_compose=FASTER_CACHE_ON_TWO_CALLS),
        Variant("FirstBlockCache (default)", "FirstBlockCache", "threshold 0.05",
                lambda pipe, steps: FirstBlockCacheConfig()),
        Variant("FirstBlockCache (fast)", "FirstBlockCache", "threshold 0.2",
                lambda pipe, steps: FirstBlockCacheConfig(threshold=0.2)),
        Variant("TaylorSeer (default)", "TaylorSeer",
                "interval 5, first 3 steps full, order 1 (its default patterns hook no Wan module)",
                lambda pipe, steps: TaylorSeerCacheConfig()),
        Variant("TaylorSeer (lite)", "TaylorSeer", "lite mode: blocks skipped, proj_out predicted; interval 5",
                lambda pipe, steps: TaylorSeerCacheConfig(use_lite_mode=True)),
    ]
    if mag_ratios is None:
        variants.append(Variant("MagCache", "MagCache", "-", not_run="no calibrated mag_ratios"))
    else:
        variants += [
            Variant("MagCache (default)", "MagCache", "threshold 0.06, max 3 skips, retention 0.2 (calibrated ratios)",
                    mag()),
            Variant("MagCache (fast)", "MagCache", "threshold 0.24, max 4 skips, retention 0.1 (calibrated ratios)",
                    mag(threshold=0.24, max_skip_steps=4, retention_ratio=0.1)),
        ]
    return variants


# TGATE-V2's self-attention intervals on the toy: the official V2 README's PixArt setting (sp 3, fi 1, warm-up 2).
V2_INTERVALS = {"sp_interval": 3, "fi_interval": 1, "warm_up": 2}


def tgate_variants(gate: int, steps: int, mag_ratios: list[float] | None) -> list[Variant]:
    """TGATE (its gate, and the gate at the last step: stock exactly), TGATE-V2, and TGATE stacked on each of
    diffusers' caches that works on one call: the cache's hooks and TGATE's on the same transformer.

    A block cache stacks only where it runs every cross-attention module at step ``gate - 1`` (TGATE's caching
    step): where it skips one there, TGATE's call stops with an error that says so, and the row shows it."""
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    tgate = {"gate_step": gate}
    variants = [
        Variant("TGATE", "TGATE", f"gate {gate} of {steps}", call_kwargs=tgate),
        Variant("TGATE (gate = steps)", "TGATE", f"gate {steps} of {steps}: never reached, stock exactly",
                call_kwargs={"gate_step": steps}),
        Variant("TGATE-V2", "TGATE-V2", f"gate {gate}, sp 3, fi 1, warm-up 2", call_kwargs={**tgate, **V2_INTERVALS}),
        Variant("TGATE + FirstBlockCache", "TGATE + FirstBlockCache", f"gate {gate}; threshold 0.2",
                lambda pipe, steps: FirstBlockCacheConfig(threshold=0.2), call_kwargs=tgate),
        Variant("TGATE + TaylorSeer (lite)", "TGATE + TaylorSeer", f"gate {gate}; lite mode, interval 5",
                lambda pipe, steps: TaylorSeerCacheConfig(use_lite_mode=True), call_kwargs=tgate),
        Variant("TGATE + PAB (self-attention only)", "TGATE + PyramidAttentionBroadcast",
                f"gate {gate}; spatial every 2nd call, timesteps (100, 800); cross-attention left to TGATE",
                lambda pipe, steps: PyramidAttentionBroadcastConfig(
                    current_timestep_callback=lambda: pipe.current_timestep, spatial_attention_block_skip_range=2,
                    spatial_attention_timestep_skip_range=(100, 800)),
                call_kwargs=tgate, caveat=PAB_ON_TWO_CALLS),
    ]
    if mag_ratios is None:
        variants.append(Variant("TGATE + MagCache", "TGATE + MagCache", "-", not_run="no calibrated mag_ratios"))
    else:
        variants.append(Variant(
            "TGATE + MagCache", "TGATE + MagCache", f"gate {gate}; threshold 0.06 (calibrated ratios)",
            lambda pipe, steps: MagCacheConfig(num_inference_steps=steps, mag_ratios=mag_ratios), call_kwargs=tgate))
    return variants


def stock_variant() -> Variant:
    return Variant("stock", "stock", "no cache")
