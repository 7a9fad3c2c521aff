"""What TGATE does at each step of a sampling run: a plain table, no model involved.

A :class:`TgateSchedule` maps the pipeline's step index ``i`` (its progress-bar count, see
``common/DESIGN.md``) to a :class:`StepPlan`: what every cross-attention and self-attention module does
(compute, cache, reuse its cache) and whether the denoiser runs a single branch instead of the guidance
batch. The hooks in ``common/gate.py`` only obey plans; v1 and V2 are two settings of the same schedule.

V2 (the official package 1.0.0), for gate ``g``:

- ``i < g - 1``: cross-attention computed; self-attention computed while ``i < warm_up``, then computed and
  cached at ``i == warm_up`` and every ``sp_interval`` steps, otherwise returning its cache;
- ``i == g - 1``: both computed and cached (the mean of the uncond and cond halves under guidance);
- ``i >= g``: cross-attention returns its cache, one branch only; self-attention computed and cached every
  ``fi_interval`` steps, otherwise returning its cache.

``sp_interval = fi_interval = 1, warm_up = 0`` is v1: self-attention is always computed and never cached.

DeepCache (``deepcache_interval`` N > 1, ``deepcache_branch`` b; the official ``SD_DeepCache.py`` with
DeepCache 0.1.1's ``DeepCacheSDHelper``): the UNet runs in full every N steps and otherwise only its shallow
branch b, reusing the deep features of the last full step. Combined with a gate ``g``, DeepCache is reset at
steps ``g - 1`` and ``g``: both run in full and the interval restarts at the gate (the batch halves there, so
deep features of a guided step never serve a single-branch one). Full steps are then

- ``i < g - 1`` (or every step without a gate): ``i % N == 0``;
- ``i == g - 1``;
- ``i >= g``: ``(i - g) % N == 0``.

A plan's ``deepcache`` is ``REUSE`` at a partial step, ``CACHE`` at a full step followed by a partial one, and
``COMPUTE`` otherwise (a full step; every step when DeepCache is off). Which modules the branch keeps is the
hooks' business (``common/gate.py``), not the schedule's.
"""

from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass
from typing import Any

# What one attention module does at one step. Plain strings: torch.compile guards on their values, so a
# compiled denoiser needs one graph per distinct plan, not one per step.
COMPUTE = "compute"
CACHE = "cache"  # compute, and keep the output for later steps
REUSE = "reuse"  # return the kept output, compute nothing


@dataclass(frozen=True)
class StepPlan:
    """What the modules of the denoiser do during one step."""

    cross_attention: str
    self_attention: str
    single_branch: bool  # after the gate: guidance dropped, the denoiser runs the negative branch only
    merge_halves: bool  # the last guided step: caches keep the mean of the uncond and cond halves
    # DeepCache: what the UNet's deep blocks do. COMPUTE and CACHE: a full forward (CACHE keeps the deep
    # features); REUSE: a partial forward, the shallow branch only, the deep features from the cache.
    deepcache: str = COMPUTE
    deepcache_branch: int = 0  # DeepCache's cache_branch_id: which shallow branch a partial forward runs


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an int >= ``minimum`` (bools refused), else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r} of type {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}.")
    return int(value)


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
            "Use gate_step=None (or, at sp_interval 1, a value >= num_inference_steps) for the stock pipeline."
        )
    return int(gate_step)


@dataclass(frozen=True)
class TgateSchedule:
    """TGATE's settings for one call; :meth:`plan` says what happens at each step.

    ``gate_step=None`` is no gate: the stock run, or DeepCache alone when ``deepcache_interval > 1``.
    ``deepcache_interval`` None or 1 is no DeepCache (1: every forward is a full one).
    """

    gate_step: int | None
    sp_interval: int = 1
    fi_interval: int = 1
    warm_up: int = 0
    deepcache_interval: int | None = None
    deepcache_branch: int = 0

    def __post_init__(self) -> None:
        if self.gate_step is not None:
            check_gate_step(self.gate_step)
        check_int("sp_interval", self.sp_interval, 1)
        check_int("fi_interval", self.fi_interval, 1)
        check_int("warm_up", self.warm_up, 0)
        if self.gate_step is None and not (self.is_v1 and self.warm_up == 0):
            raise ValueError("sp_interval, fi_interval and warm_up are TGATE-V2 settings: they need a gate_step.")
        if self.deepcache_interval is not None:
            check_int("deepcache_interval", self.deepcache_interval, 1)
        check_int("deepcache_branch", self.deepcache_branch, 0)
        if self.deepcache_interval is None and self.deepcache_branch != 0:
            raise ValueError(
                "deepcache_branch is a DeepCache setting: it needs a deepcache_interval (the number of steps "
                "between full forwards of the UNet, e.g. 3)."
            )

    @property
    def is_v1(self) -> bool:
        return self.sp_interval == 1 and self.fi_interval == 1

    @property
    def uses_deepcache(self) -> bool:
        """Whether some forward may be a partial one (``deepcache_interval > 1``)."""
        return self.deepcache_interval is not None and self.deepcache_interval > 1

    @property
    def is_stock(self) -> bool:
        """No gate and no DeepCache: every step runs as the stock pipeline's."""
        return self.gate_step is None and not self.uses_deepcache

    @functools.lru_cache(maxsize=None)  # noqa: B019 - a few hundred small plans per schedule at most
    def plan(self, step: int) -> StepPlan:
        deepcache = self._deepcache(step)
        gate = self.gate_step
        if gate is None:
            return StepPlan(COMPUTE, COMPUTE, False, False, deepcache, self.deepcache_branch)
        if step < gate - 1:
            cross = COMPUTE
        elif step == gate - 1:
            cross = CACHE
        else:
            cross = REUSE
        # A cache nobody reads is memory for nothing: keep one only when the next step reuses it. After the
        # warm-up every step caches or reuses, so no computing step sits between a cache and its reuse.
        self_attention = self._official_self_attention(step)
        if self_attention == CACHE and self._official_self_attention(step + 1) != REUSE:
            self_attention = COMPUTE
        return StepPlan(
            cross,
            self_attention,
            single_branch=step >= gate,
            merge_halves=step == gate - 1,
            deepcache=deepcache,
            deepcache_branch=self.deepcache_branch,
        )

    def _deepcache(self, step: int) -> str:
        if not self._deepcache_full(step):
            return REUSE
        # As for self-attention: keep deep features only when the next step reuses them.
        return CACHE if not self._deepcache_full(step + 1) else COMPUTE

    def _deepcache_full(self, step: int) -> bool:
        """Whether the UNet runs in full at ``step`` (the official combination's resets at ``g - 1`` and ``g``)."""
        if not self.uses_deepcache:
            return True
        interval, gate = self.deepcache_interval, self.gate_step
        if gate is None or step < gate - 1:
            return step % interval == 0
        if step == gate - 1:
            return True
        return (step - gate) % interval == 0

    def _official_self_attention(self, step: int) -> str:
        if self.is_v1:
            return COMPUTE
        gate = self.gate_step
        if step < gate - 1:
            if step < self.warm_up:
                return COMPUTE
            return CACHE if step == self.warm_up or step % self.sp_interval == 0 else REUSE
        if step == gate - 1:
            return CACHE
        return CACHE if step % self.fi_interval == 0 else REUSE
