"""The TGATE gate: hooks that make a denoiser's attention modules obey a :class:`~common.schedule.StepPlan`.

One :class:`TgateCall` holds everything of one sampling run: its schedule, the step in progress (the
pipeline's own count, read from its progress bar), the pipeline's guidance state at that step, and the
attention caches. The call travels with the thread that runs it (a ``ContextVar``), never with the modules:

- the hooks, on diffusers' own ``HookRegistry``, are shared by every call on a denoiser. They are installed
  when the first TGATE call on that denoiser starts and removed when the last one ends; a call that is not a
  TGATE call (no active :class:`TgateCall` in its thread) passes straight through them, bit for bit stock.
  So stock and TGATE requests can share one denoiser across threads (diffusers' ``from_pipe`` server pattern).
- the hooks branch on the plan's few values (compute / cache / reuse, single branch or not), never on the step
  number, so ``torch.compile`` of the denoiser needs one graph per kind of step, whatever the step count or
  gate.

Per evaluation of the denoiser (several per step for Heun, DPM-SDE, PNDM's first step):

1. the denoiser-level hook reads the plan of the current step and the pipeline's guidance state;
2. after the gate under guidance it runs the negative half of the batch only, and hands its prediction back
   for both halves, so the pipeline's guidance formula ``uncond + s * (cond - uncond)`` returns it unchanged;
3. every attention module computes, caches (the mean of the uncond and cond halves at the last guided step)
   or returns its cache, as the plan says;
4. with DeepCache, the UNet's deep modules (those its shallow branch leaves out, see
   :func:`deepcache_modules`) run and keep their outputs at a caching step, and return them at a partial one.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

from .branches import TWO_CALLS, BranchCut, branch_cut, guidance_layout
from .schedule import CACHE, COMPUTE, REUSE, StepPlan, TgateSchedule, check_gate_step

__all__ = [
    "TgateCall",
    "TgateSchedule",
    "check_deepcache",
    "check_gate_step",
    "cross_attention_modules",
    "deepcache_modules",
    "gated_sampling",
    "merge_guidance_halves",
    "self_attention_modules",
]

_ATTENTION_HOOK = "tgate_attention"
_DEEPCACHE_HOOK = "tgate_deepcache"
_ACTIVE_CALL: contextvars.ContextVar["TgateCall | None"] = contextvars.ContextVar("tgate_call", default=None)
logger = logging.getLogger("tgate")


@dataclass(eq=False)
class TgateCall:
    """The state of one TGATE sampling run, shared by every hook while it runs in this thread."""

    schedule: TgateSchedule
    guided: Callable[[], bool]  # the pipeline's guidance state now (callbacks may end guidance mid-run)
    pipeline_class: type | None = None  # whose inputs keep the positive branch (see common.branches)
    step: int = 0  # the pipeline's step in progress: its progress-bar count
    follows_loop: bool = False  # set once the sampling loop's progress bar is followed
    plan: StepPlan | None = None  # the plan of the denoiser evaluation in progress
    guided_now: bool = False  # whether that evaluation runs the guidance batch
    caches: dict[Any, Any] = field(default_factory=dict)
    # Every hook's cache key, present in ``caches`` from the start (value None): torch.compile guards on the
    # dict's size where hooks write to it, so a size that never changes keeps one graph per kind of step.
    cache_keys: tuple = ()
    # How often each hooked module has run in the evaluation in progress: a module called more than once per
    # evaluation (FreeNoise's windows, a tiled denoiser) keeps one cache per call, in order.
    visits: dict[Any, int] = field(default_factory=dict)
    cuts: dict[int, BranchCut] = field(default_factory=dict)  # per denoiser (id): how its batch is cut
    text_states: list[tuple] = field(default_factory=list)  # what the pipeline's encode_prompt returned
    layout: str | None = None  # batched or two calls per step: checked on the first guided evaluation's tensors
    evaluation_in_step: int = 0  # this denoiser's evaluations of this step before the one in progress
    _evaluations: dict[int, tuple[int, int]] = field(default_factory=dict)  # per denoiser: (step, its evaluation)
    # Per denoiser (id): the step whose evaluation cached its cross-attention. A denoiser that first runs after
    # the gate (Wan 2.2's second expert) has no cache: its first step runs as step gate - 1 does, to fill it.
    cached_at: dict[int, int] = field(default_factory=dict)

    @property
    def two_calls(self) -> bool:
        """Whether the pipeline guides with one denoiser call per branch (Wan) instead of one batch."""
        return self.layout == TWO_CALLS

    def drops_guidance_call(self) -> bool:
        """For a two-call pipeline, read after the step's first (conditional) call: skip the second one."""
        return self.two_calls and self.plan is not None and self.plan.single_branch

    def begin_evaluation(self, denoiser: int = 0) -> StepPlan:
        """Called as the denoiser (its id) starts: fix the plan and guidance of this evaluation for every hook."""
        if not self.follows_loop:
            raise RuntimeError(
                "TGATE cannot see this pipeline's sampling loop (it counts steps on the pipeline's progress bar, "
                "which was never opened), so it cannot tell where the gate is. Gate a pipeline class built with "
                "common.pipeline.TgateMixin, or call the stock pipeline without gate_step."
            )
        last = self._evaluations.get(denoiser)
        self.evaluation_in_step = last[1] + 1 if last is not None and last[0] == self.step else 0
        self._evaluations[denoiser] = (self.step, self.evaluation_in_step)
        plan = self.schedule.plan(self.step)
        if plan.cross_attention == REUSE and self.cached_at.get(denoiser, self.step) == self.step:
            plan = dataclasses.replace(self.schedule.plan(self.schedule.gate_step - 1), deepcache=plan.deepcache)
        if plan.cross_attention == CACHE:
            self.cached_at[denoiser] = self.step
        self.plan, self.guided_now, self.visits = plan, self.guided(), {}
        return plan

    def visit(self, key: Any) -> int:
        """The call site of a hooked module in this evaluation: 0 for its first call, 1 for its second, ..."""
        site = self.visits.get(key, 0)
        self.visits[key] = site + 1
        return site

    def follow(self, progress_bar: Any) -> Any:
        """Count steps on the sampling loop's progress bar (``total=`` or iterable form); a new bar restarts."""
        self.step, self.follows_loop, self.caches = 0, True, dict.fromkeys(self.cache_keys)
        self._evaluations, self.cached_at = {}, {}
        self._warn_if_gate_unreached(progress_bar)
        if getattr(progress_bar, "iterable", None) is None:
            update = progress_bar.update

            def update_and_advance(n: int = 1):
                self.step += n
                return update(n)

            progress_bar.update = update_and_advance
            return progress_bar
        return self._advancing(progress_bar)

    def _warn_if_gate_unreached(self, progress_bar: Any) -> None:
        steps, gate = getattr(progress_bar, "total", None), self.schedule.gate_step
        if gate is None or steps is None or gate < steps:
            return
        also = "" if self.schedule.is_v1 else " (TGATE-V2's self-attention caching before the gate still applies)"
        logger.warning(
            f"gate_step={gate} is never reached: this call runs {steps} steps (the pipeline's own count, after "
            f"strength or denoising_end), so no step after the gate reuses the cache and guidance is never "
            f"dropped{also}. Use a gate_step below {steps} to accelerate this call."
        )

    def _advancing(self, progress_bar: Iterable) -> Iterator:
        for index, item in enumerate(progress_bar):
            self.step = index
            yield item


def active_call() -> TgateCall | None:
    """The TGATE call running in this thread, if any."""
    return _ACTIVE_CALL.get()


def merge_guidance_halves(output: torch.Tensor) -> torch.Tensor:
    """Mean of the uncond and cond halves of a guidance batch ``[uncond x B, cond x B]``, per image."""
    uncond, cond = output.chunk(2)
    return (uncond + cond) / 2


class AttentionGateHook(ModelHook):
    """Makes one attention module compute, cache or reuse its output as the active call's plan says.

    A module called more than once per denoiser evaluation keeps one cache per call, in order.
    """

    def __init__(self, key: int, cross: bool, name: str) -> None:
        super().__init__()
        self.key, self.cross, self.name = key, cross, name

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        call = _ACTIVE_CALL.get()
        if call is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        plan = call.plan
        action = plan.cross_attention if self.cross else plan.self_attention
        if action == COMPUTE:
            return self.fn_ref.original_forward(*args, **kwargs)
        site = call.visit(self.key)
        if action == REUSE:
            caches = call.caches.get(self.key) or ()
            cache = caches[site] if site < len(caches) else None
            # Self-attention caches from guided steps do not fit a single-branch batch (guidance ended by a
            # callback before a cache refresh): compute then, as the official schedule would have to.
            if cache is not None and (self.cross or cache.shape[0] == _batch_size(args, kwargs)):
                return cache
            if self.cross:
                raise RuntimeError(self._missing_cache(call, site, len(caches)))
            action = CACHE
        output = self.fn_ref.original_forward(*args, **kwargs)
        if not torch.is_tensor(output):
            raise TypeError(f"TGATE caches tensor outputs of attention, got {type(output).__name__}.")
        merging = plan.merge_halves and call.guided_now
        if merging and call.two_calls and call.evaluation_in_step % 2:
            # The step's second call (the unconditional branch): the mean with the first call's output.
            cached = call.caches[self.key]
            call.caches[self.key] = (*cached[:site], (cached[site] + output) / 2, *cached[site + 1 :])
        else:
            kept = merge_guidance_halves(output) if merging and not call.two_calls else output
            # The first call site starts the module's caches afresh (read nothing: a compiled block guards less).
            call.caches[self.key] = (*call.caches[self.key][:site], kept) if site else (kept,)
        return output

    def _missing_cache(self, call: TgateCall, site: int, cached_sites: int) -> str:
        gate = call.schedule.gate_step
        if cached_sites:
            return (
                f"TGATE: {self.name} ran {site + 1} times in one denoiser evaluation at step {call.step}, but only "
                f"{cached_sites} times at step {gate - 1}, where its outputs were cached: the pipeline calls it "
                "differently after the gate, so TGATE cannot reuse its cache."
            )
        return (
            f"TGATE reached step {call.step} without a cached output of the cross-attention module {self.name}: it "
            f"did not run at step {gate - 1}, the step before the gate. Another cache method that skips blocks "
            "(FirstBlockCache, MagCache, TaylorSeer, PyramidAttentionBroadcast, DeepCache) probably skipped it "
            "there: TGATE needs every cross-attention module to run at the step before the gate."
        )


def _batch_size(args: tuple, kwargs: dict) -> int:
    hidden_states = args[0] if args else kwargs["hidden_states"]
    return hidden_states.shape[0]


class DeepCacheHook(ModelHook):
    """Makes one deep module of a UNet keep its output at DeepCache's caching steps and return it at partial ones.

    ``branches``: the ``deepcache_branch`` values whose partial forward leaves this module out while its parent
    block runs (or it is a block itself): the outermost modules a partial forward skips. Others pass through.
    """

    def __init__(self, key: int, branches: frozenset[int]) -> None:
        super().__init__()
        self.key, self.branches = (_DEEPCACHE_HOOK, key), branches

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        call = _ACTIVE_CALL.get()
        if call is None or call.plan.deepcache == COMPUTE or call.plan.deepcache_branch not in self.branches:
            return self.fn_ref.original_forward(*args, **kwargs)
        batch = _batch_size(args, kwargs)
        if call.plan.deepcache == REUSE:
            cached = call.caches.get(self.key)
            # Deep features of another batch size (a callback ended guidance since the last full forward) do
            # not fit: this forward runs in full and keeps its own, as a DeepCache reset would.
            if cached is not None and cached[0] == batch:
                return cached[1]
        output = self.fn_ref.original_forward(*args, **kwargs)
        call.caches[self.key] = (batch, output)
        return output


def _denoiser_forward(original: Callable, key: int, *args, **kwargs) -> Any:
    """The denoiser's forward while TGATE hooks are installed: plan the evaluation, cut guidance after the gate."""
    call = _ACTIVE_CALL.get()
    if call is None:
        return original(*args, **kwargs)
    plan = call.begin_evaluation(key)
    if call.guided_now and call.layout is None:
        call.layout = guidance_layout(call.cuts[key], args, kwargs, call.text_states)
    # Two calls per step: after the gate the pipeline makes one (TgateMixin's do_classifier_free_guidance).
    if not (plan.single_branch and call.guided_now) or call.two_calls:
        return original(*args, **kwargs)
    cut = call.cuts[key]
    kept = cut.keep_one_branch(args, kwargs)
    return cut.for_both_branches(original(**kept), kept[cut.per_sample[0]].shape[0])


def _attention_modules(denoiser: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, module in denoiser.named_modules():
        if isinstance(module, (Attention, AttentionModuleMixin)):
            yield name, module


def is_added_kv_attention(module: torch.nn.Module) -> bool:
    """Added-KV attention (``AttnAddedKVProcessor``: DeepFloyd IF, Kandinsky 2.x, UnCLIP): the text keys join the
    image's own keys in one softmax and the residual is added inside the processor, so its output is not a
    cross-attention output that can be cached alone."""
    return isinstance(module, Attention) and getattr(module, "added_kv_proj_dim", None) is not None


def cross_attention_modules(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """Every true cross-attention module of a denoiser (keys and values from the condition alone: the ``attn2``
    of each transformer block); added-KV attention is not one (:func:`is_added_kv_attention`)."""
    return [module for _, module in named_cross_attention_modules(denoiser)]


# Attention classes that do not say whether they attend to the condition (no ``is_cross_attention``), with the
# name their cross-attention has in a block: LTX-Video's text enters through each block's attn2.
_CROSS_ATTENTION_BY_NAME = {"LTXAttention": "attn2"}


def _is_cross_attention(name: str, module: torch.nn.Module) -> bool:
    said = getattr(module, "is_cross_attention", None)
    if said is None:
        return name.rpartition(".")[2] == _CROSS_ATTENTION_BY_NAME.get(type(module).__name__)
    return bool(said) and not is_added_kv_attention(module)


def named_cross_attention_modules(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, module) for name, module in _attention_modules(denoiser) if _is_cross_attention(name, module)]


def self_attention_modules(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """Every self-attention module of a transformer block (its ``attn1``): what TGATE-V2 caches."""
    return [module for _, module in _named_self_attention_modules(denoiser)]


def _named_self_attention_modules(denoiser: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [
        (name, module)
        for name, module in _attention_modules(denoiser)
        if name.rpartition(".")[2] == "attn1" and not _is_cross_attention(name, module)
    ]


DEEPCACHE_LAYERS_PER_BLOCK = 3  # DeepCache numbers branches 3 per down block: cache_branch_id = 3 * block + layer


def _unet(denoiser: torch.nn.Module) -> UNet2DConditionModel | None:
    """The UNet behind ``denoiser`` (also a ``torch.compile``'d one), or None if it is not a UNet."""
    inner = getattr(denoiser, "_orig_mod", denoiser)
    return inner if isinstance(inner, UNet2DConditionModel) else None


def deepcache_branch_count(denoiser: torch.nn.Module) -> int:
    """How many ``deepcache_branch`` values ``denoiser`` has (3 per down block); a ``ValueError`` if not a UNet."""
    unet = _unet(denoiser)
    if unet is None or unet.mid_block is None:
        raise ValueError(
            f"DeepCache caches the deep blocks of a UNet (down_blocks, mid_block, up_blocks), and "
            f"{type(denoiser).__name__} is not a UNet2DConditionModel with a mid block: deepcache_interval and "
            "deepcache_branch work with the UNet pipelines (SD-1.5, SD-2.1, SDXL, LCM-SDXL)."
        )
    return DEEPCACHE_LAYERS_PER_BLOCK * len(unet.down_blocks)


def check_deepcache(denoisers: torch.nn.Module | Sequence[torch.nn.Module], schedule: TgateSchedule) -> None:
    """A ``ValueError`` unless the first of ``denoisers`` is a UNet with ``schedule``'s DeepCache branch.

    The first denoiser is the pipeline's own (a ControlNet after it runs in full at every step)."""
    if schedule.deepcache_interval is None:
        return
    denoiser = denoisers if isinstance(denoisers, torch.nn.Module) else denoisers[0]
    count = deepcache_branch_count(denoiser)
    if schedule.deepcache_branch >= count:
        unet = _unet(denoiser)
        raise ValueError(
            f"deepcache_branch must be < {count} for this UNet ({len(unet.down_blocks)} down blocks, DeepCache's "
            f"numbering: branch b is layer b % 3 of down block b // 3), got {schedule.deepcache_branch}."
        )


def deepcache_modules(denoiser: torch.nn.Module) -> list[tuple[torch.nn.Module, frozenset[int]]]:
    """The modules a DeepCache partial forward of a UNet leaves out, each with the branches that leave it out.

    DeepCache 0.1.1's ``DeepCacheSDHelper`` rule, for ``cache_branch_id`` b = 3 * B + L: its modules are each
    down block (layer 0), its attentions and resnets (layer = index) and downsampler (layer = number of
    resnets); the mid block; each up block counted from the output side (block ``len(up_blocks) - 1 - index``,
    layer 0), its attentions and resnets counted from the last (layer ``len(resnets) - 1 - index``) and
    upsampler (layer 0). A partial forward skips the mid block, every block deeper than B, and in block B the
    down layers ``>= L`` and up layers ``> L``. A skipped module returns its output of the last full forward.
    Listed here: the outermost skipped ones (their block runs, or they are a block), per branch; their children
    never run in a partial forward.
    """
    unet = _unet(denoiser)
    if unet is None or unet.mid_block is None:
        return []
    entries: list[tuple[torch.nn.Module, str, int, int, Any]] = []  # module, kind, block, layer, parent block
    for index, block in enumerate(unet.down_blocks):
        resnets = list(getattr(block, "resnets", None) or [])
        entries.append((block, "down", index, 0, None))
        for layer, attention in enumerate(getattr(block, "attentions", None) or []):
            entries.append((attention, "down", index, layer, block))
        for layer, resnet in enumerate(resnets):
            entries.append((resnet, "down", index, layer, block))
        for downsampler in getattr(block, "downsamplers", None) or []:
            entries.append((downsampler, "down", index, len(resnets), block))
    entries.append((unet.mid_block, "mid", 0, 0, None))
    for position, block in enumerate(unet.up_blocks):
        index = len(unet.up_blocks) - 1 - position
        layers = len(getattr(block, "resnets", None) or [])
        entries.append((block, "up", index, 0, None))
        for number, attention in enumerate(getattr(block, "attentions", None) or []):
            entries.append((attention, "up", index, layers - 1 - number, block))
        for number, resnet in enumerate(getattr(block, "resnets", None) or []):
            entries.append((resnet, "up", index, layers - 1 - number, block))
        for upsampler in getattr(block, "upsamplers", None) or []:
            entries.append((upsampler, "up", index, 0, block))

    def skipped(kind: str, block: int, layer: int, branch: int) -> bool:
        branch_block, branch_layer = divmod(branch, DEEPCACHE_LAYERS_PER_BLOCK)
        if kind == "mid" or block > branch_block:
            return True
        if block < branch_block:
            return False
        return layer >= branch_layer if kind == "down" else layer > branch_layer

    branches = range(DEEPCACHE_LAYERS_PER_BLOCK * len(unet.down_blocks))
    modules = []
    for module, kind, block, layer, parent in entries:
        outermost = frozenset(
            branch for branch in branches
            if skipped(kind, block, layer, branch) and not (parent is not None and skipped(kind, block, 0, branch))
        )
        if outermost:
            modules.append((module, outermost))
    return modules


def no_cross_attention_reason(denoiser: torch.nn.Module) -> str:
    """Why ``denoiser`` has nothing for TGATE to cache (for an error message)."""
    name = type(getattr(denoiser, "_orig_mod", denoiser)).__name__
    if any(is_added_kv_attention(module) for _, module in _attention_modules(denoiser)):
        return (
            f"{name}'s text enters through added-KV attention (AttnAddedKVProcessor: DeepFloyd IF, Kandinsky 2.x, "
            "UnCLIP), which attends to the text and the image's own tokens in one softmax and adds the residual "
            "inside: there is no cross-attention output to cache alone, so TGATE does not apply."
        )
    return (
        f"{name} has no cross-attention module (joint-attention transformers such as SD3's, Flux's, CogVideoX's "
        "and HunyuanVideo's attend to text and image tokens in one self-attention), so there is nothing to cache."
    )


# Hook groups: cross-attention (every TGATE call), self-attention (TGATE-V2 calls) and DeepCache's deep blocks.
CROSS, SELF, DEEP = "cross", "self", "deep"


def hook_groups(schedule: TgateSchedule) -> tuple[str, ...]:
    """The hooks a call with ``schedule`` needs: the others would only pass through."""
    groups = [] if schedule.gate_step is None else [CROSS]
    if not schedule.is_v1:
        groups.append(SELF)
    if schedule.uses_deepcache:
        groups.append(DEEP)
    return tuple(groups)


class _Installation:
    """TGATE's hooks on one denoiser, shared by the calls running on it: the denoiser's forward wrapper while
    any call runs, and each group of module hooks while a call that needs it runs."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        self.denoiser, self.users = denoiser, 0
        self.group_users = {CROSS: 0, SELF: 0, DEEP: 0}
        self.hooked: dict[str, list[_InstalledHook]] = {}

    def _hooks(self, group: str) -> list[tuple[torch.nn.Module, ModelHook, str]]:
        if group == CROSS:
            modules = named_cross_attention_modules(self.denoiser)
            if not modules:
                raise ValueError(f"TGATE cannot gate this denoiser: {no_cross_attention_reason(self.denoiser)}")
            return [(m, AttentionGateHook(id(m), True, name), _ATTENTION_HOOK) for name, m in modules]
        if group == SELF:
            modules = _named_self_attention_modules(self.denoiser)
            return [(m, AttentionGateHook(id(m), False, name), _ATTENTION_HOOK) for name, m in modules]
        modules = deepcache_modules(self.denoiser)
        return [(m, DeepCacheHook(id(m), branches), _DEEPCACHE_HOOK) for m, branches in modules]

    def enter(self, groups: Sequence[str]) -> tuple:
        """Install what ``groups`` need and is not installed yet; the cache keys of their hooks."""
        if self.users == 0:
            self._wrap_forward()
        self.users += 1
        entered: list[str] = []
        try:
            for group in groups:
                if self.group_users[group] == 0:
                    self._install(group)
                self.group_users[group] += 1
                entered.append(group)
        except BaseException:
            self.leave(entered)
            raise
        return tuple(installed.key for group in groups for installed in self.hooked[group])

    def leave(self, groups: Sequence[str]) -> None:
        for group in groups:
            self.group_users[group] -= 1
            if self.group_users[group] == 0:
                for installed in reversed(self.hooked.pop(group)):
                    installed.remove()
        self.users -= 1
        if self.users == 0:
            self._unwrap_forward()

    def _install(self, group: str) -> None:
        self.hooked[group] = []
        try:
            for module, hook, name in self._hooks(group):
                self.hooked[group].append(_InstalledHook.register(module, hook, name))
        except BaseException:
            for installed in reversed(self.hooked.pop(group)):
                installed.remove()
            raise

    def _wrap_forward(self) -> None:
        # The denoiser-level hook is a plain forward wrapper, not a HookRegistry hook: it must sit outside a
        # torch.compile'd denoiser (an OptimizedModule forwards registry attributes to the inner module).
        self.had_forward = "forward" in self.denoiser.__dict__
        self.original_forward = self.denoiser.forward
        self.denoiser.forward = functools.update_wrapper(
            functools.partial(_denoiser_forward, self.original_forward, id(self.denoiser)), self.original_forward
        )

    def _unwrap_forward(self) -> None:
        if self.had_forward:
            self.denoiser.forward = self.original_forward
        else:
            del self.denoiser.forward
        if hasattr(self.denoiser, "_diffusers_hook"):
            self.denoiser._diffusers_hook.invalidate_child_registries_cache()


_INSTALLATIONS: dict[int, _Installation] = {}
_INSTALL_LOCK = threading.Lock()


@contextlib.contextmanager
def _hooks_on(denoiser: torch.nn.Module, groups: Sequence[str]) -> Iterator[tuple]:
    with _INSTALL_LOCK:
        installation = _INSTALLATIONS.get(id(denoiser)) or _Installation(denoiser)
        keys = installation.enter(groups)
        _INSTALLATIONS[id(denoiser)] = installation
    try:
        yield keys
    finally:
        with _INSTALL_LOCK:
            installation.leave(groups)
            if installation.users == 0:
                del _INSTALLATIONS[id(denoiser)]


@contextlib.contextmanager
def gated_sampling(
    denoisers: torch.nn.Module | Sequence[torch.nn.Module],
    schedule: TgateSchedule | int,
    guided: Callable[[], bool] | bool,
    pipeline_class: type | None = None,
) -> Iterator[TgateCall]:
    """Run TGATE on ``denoisers`` for one sampling run in this thread; everything is removed on exit.

    ``denoisers`` are the models the pipeline calls with the guidance batch at every step: its UNet or
    transformer, and a ControlNet where it has one (it runs on the same single branch after the gate, and its
    cross-attention is gated too). DeepCache (``schedule.deepcache_interval``) applies to the first, which must
    be a UNet; a ControlNet runs in full at every step. ``guided`` is the pipeline's guidance state, read at
    every denoiser evaluation (or a constant). ``pipeline_class`` says which inputs keep their positive half
    after the gate (:mod:`common.branches`; None: every input keeps its negative half). The call's step is the
    pipeline's step: :meth:`TgateCall.follow` counts it on the loop's progress bar (the pipeline classes do
    this); code that drives the denoiser itself sets ``call.step`` and ``call.follows_loop``.
    """
    if _ACTIVE_CALL.get() is not None:
        raise RuntimeError("a TGATE call is already running in this thread; TGATE calls do not nest.")
    schedule = schedule if isinstance(schedule, TgateSchedule) else TgateSchedule(schedule)
    denoisers = [denoisers] if isinstance(denoisers, torch.nn.Module) else list(denoisers)
    check_deepcache(denoisers, schedule)
    call = TgateCall(schedule, guided if callable(guided) else (lambda: guided), pipeline_class)
    # Known before any hook is installed: a denoiser whose per-sample inputs TGATE does not know is refused here.
    call.cuts = {id(d): branch_cut(d, pipeline_class) for d in denoisers}
    groups = hook_groups(schedule)
    with contextlib.ExitStack() as hooks:
        for denoiser in denoisers:
            call.cache_keys += hooks.enter_context(_hooks_on(denoiser, groups))
        call.caches = dict.fromkeys(call.cache_keys)
        token = _ACTIVE_CALL.set(call)
        try:
            yield call
        finally:
            _ACTIVE_CALL.reset(token)


@dataclass
class _InstalledHook:
    """One hook registered on one module, removable so that the module is left exactly as it was."""

    module: torch.nn.Module
    name: str
    created_registry: bool
    had_forward_attribute: bool
    key: Any  # the hook's cache key

    @classmethod
    def register(cls, module: torch.nn.Module, hook: ModelHook, name: str) -> "_InstalledHook":
        installed = cls(module, name, not hasattr(module, "_diffusers_hook"), "forward" in module.__dict__, hook.key)
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
