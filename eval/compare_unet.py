"""eval/compare.py on a UNet model (SDXL): its variants, and diffusers' caches applied without ``enable_cache``.

``UNet2DConditionModel`` has no ``CacheMixin`` (no ``enable_cache``), so the caches go through diffusers' hook
functions (``diffusers.hooks.apply_*``) on the UNet and come off again through its hook registry, as
``CacheMixin.disable_cache`` does. SDXL's pipeline never sets ``_current_timestep`` (``pipe.current_timestep``
is None), so PyramidAttentionBroadcast's ``current_timestep_callback`` reads the timestep the UNet was last
called with (:class:`TimestepProbe`).

What applies to SDXL's UNet (measured on the tiny SDXL UNet, diffusers 0.42.1; tests/test_compare.py):
- PyramidAttentionBroadcast: yes. Its identifiers are ``re.search`` patterns ("transformer_blocks"), which
  match the UNet's ``down_blocks.1.attentions.0.transformer_blocks.0.attn1``; SDXL guides with one batched
  ``[uncond, cond]`` call per step, the case PAB's per-module call counter was written for.
- DeepCache: the repository's own (``deepcache_interval`` / ``deepcache_branch`` on the TGATE pipeline call).
- FirstBlockCache, MagCache, FasterCache, TaylorSeer: not applicable; the reasons below are the errors or
  warnings their ``apply_*`` functions give on the UNet.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable

import torch

from eval.compare_variants import Variant

# TGATE-V2 on SDXL: the official V2 README's SDXL setting (also eval/gpu_bench.py's)
SDXL_V2_INTERVALS = {"sp_interval": 5, "fi_interval": 1, "warm_up": 2}
# DeepCache: the official defaults of the TGATE + DeepCache scripts (DESIGN.md), and one faster interval
DEEPCACHE = {"deepcache_interval": 3, "deepcache_branch": 0}
DEEPCACHE_FAST = {"deepcache_interval": 5, "deepcache_branch": 0}

FIRST_BLOCK_CACHE_ON_UNET = (
    "apply_first_block_cache collects the blocks of a top-level ModuleList named blocks / transformer_blocks / "
    "single_transformer_blocks / layers / ...; UNet2DConditionModel's children are down_blocks, mid_block and "
    "up_blocks (blocks that pass skip connections between them, not one residual stream): it finds none and "
    "fails with IndexError: pop from empty list")
MAG_CACHE_ON_UNET = (
    "apply_mag_cache looks for the same top-level ModuleList of transformer blocks; on UNet2DConditionModel it "
    "warns 'MagCache: No transformer blocks found to apply hooks.' and hooks nothing (a run would be stock)")
FASTER_CACHE_ON_UNET = (
    "apply_faster_cache's denoiser hook splits the denoiser's inputs into [uncond, cond] halves by keyword "
    "(hidden_states, encoder_hidden_states, timestep, ...); the SDXL pipeline calls the UNet with sample and a "
    "0-dim timestep: it fails with RuntimeError: chunk expects at least a 1-dimensional tensor")
TAYLORSEER_ON_UNET = (
    "apply_taylorseer_cache's default patterns (^blocks.*attn, ^transformer_blocks.*attn, ...) must match a whole "
    "module name from the root; the UNet's attention modules are nested (down_blocks.1.attentions.0."
    "transformer_blocks.0.attn1), so it hooks nothing; lite mode skips whole down/up blocks, which return tuples "
    "(hidden states and skip connections), and fails with AttributeError: 'tuple' object has no attribute "
    "'dtype' (and without a cache context, which the SDXL pipeline never sets, with 'No cache context is set')")
PAB_ACROSS_THE_GATE = (
    "a PAB-reused self-attention output keeps the batch of the step it was computed at: where PAB reuses at the "
    "first gated step an output of the guided step before it ([uncond, cond], batch 2B), the gated step (batch B) "
    "gets a batch it cannot use; the run stops with an error that says so (it depends on the gate's parity in "
    "PAB's call count)")


class TimestepProbe:
    """The timestep of the denoiser's latest call (a forward pre-hook): PAB's ``current_timestep_callback``
    for pipelines that do not set ``_current_timestep``."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        self.timestep: float | None = None
        self._handle = denoiser.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs) -> None:
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        self.timestep = float(torch.as_tensor(timestep).flatten()[0])

    def __call__(self) -> float | None:
        return self.timestep

    def remove(self) -> None:
        self._handle.remove()


class BatchGuard:
    """Raises where an attention module returns a batch other than its input's (a cache reused across TGATE's
    gate, where the guidance batch halves): an error row instead of silently broadcast images."""

    def __init__(self, denoiser: torch.nn.Module) -> None:
        from diffusers.models.attention_processor import Attention

        self._handles = [module.register_forward_hook(self._check(name)) for name, module in
                         denoiser.named_modules() if isinstance(module, Attention)]

    @staticmethod
    def _check(name: str) -> Callable:
        def check(module, args, output) -> None:
            if args and isinstance(output, torch.Tensor) and output.shape[0] != args[0].shape[0]:
                raise RuntimeError(f"{name} returned a batch of {output.shape[0]} for an input batch of "
                                   f"{args[0].shape[0]}: a cache reused across TGATE's gate ({PAB_ACROSS_THE_GATE})")
        return check

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def hook_names(config: Any) -> list[str]:
    """The registry names of the hooks ``config``'s ``apply_*`` function installs (as ``disable_cache`` removes)."""
    from diffusers import PyramidAttentionBroadcastConfig
    from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK

    if isinstance(config, PyramidAttentionBroadcastConfig):
        return [_PYRAMID_ATTENTION_BROADCAST_HOOK]
    raise ValueError(f"{type(config).__name__} is not applied to UNets here (see eval/compare_unet.py)")


@contextmanager
def applied(denoiser: torch.nn.Module, config: Any, guard: bool = False):
    """``config``'s cache hooked onto ``denoiser`` by diffusers' ``apply_*`` function for the duration; with
    ``guard``, a :class:`BatchGuard` too. The denoiser is stock again afterwards."""
    from diffusers.hooks import HookRegistry, PyramidAttentionBroadcastConfig, apply_pyramid_attention_broadcast

    names = hook_names(config)
    if isinstance(config, PyramidAttentionBroadcastConfig):
        apply_pyramid_attention_broadcast(denoiser, config)
    checker = BatchGuard(denoiser) if guard else None
    try:
        yield
    finally:
        if checker is not None:
            checker.remove()
        registry = HookRegistry.check_if_exists_or_initialize(denoiser)
        for name in names:
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()


def unet_variants(gate: int, steps: int, probe: Callable[[], float | None]) -> list[Variant]:
    """Stock's companions on SDXL: TGATE, TGATE-V2, DeepCache, TGATE + DeepCache, PAB through its hook function,
    TGATE + PAB, and the caches that do not apply, each with its reason. ``probe``: PAB's timestep callback."""
    from diffusers import PyramidAttentionBroadcastConfig

    def pab(**settings) -> Callable[[Any, int], Any]:
        return lambda pipe, steps: PyramidAttentionBroadcastConfig(current_timestep_callback=probe, **settings)

    docs = {"spatial_attention_block_skip_range": 2, "spatial_attention_timestep_skip_range": (100, 800)}
    fast = {"spatial_attention_block_skip_range": 2, "cross_attention_block_skip_range": 6,
            "spatial_attention_timestep_skip_range": (100, 900), "cross_attention_timestep_skip_range": (100, 900)}
    tgate = {"gate_step": gate}
    v2 = "sp {sp_interval}, fi {fi_interval}, warm-up {warm_up}".format(**SDXL_V2_INTERVALS)
    return [
        Variant("TGATE", "TGATE", f"gate {gate} of {steps}", call_kwargs=tgate),
        Variant("TGATE (gate = steps)", "TGATE", f"gate {steps} of {steps}: never reached, stock exactly",
                call_kwargs={"gate_step": steps}),
        Variant("TGATE-V2", "TGATE-V2", f"gate {gate}, {v2} (V2 README's SDXL setting)",
                call_kwargs={**tgate, **SDXL_V2_INTERVALS}),
        Variant("DeepCache", "DeepCache", "interval 3, branch 0 (official defaults)", call_kwargs=dict(DEEPCACHE)),
        Variant("DeepCache (fast)", "DeepCache", "interval 5, branch 0", call_kwargs=dict(DEEPCACHE_FAST)),
        Variant("TGATE + DeepCache", "TGATE + DeepCache", f"gate {gate}; interval 3, branch 0 (official combination)",
                call_kwargs={**tgate, **DEEPCACHE}),
        Variant("PAB (docs)", "PyramidAttentionBroadcast", "spatial every 2nd call, timesteps (100, 800)", pab(**docs)),
        Variant("PAB (fast)", "PyramidAttentionBroadcast",
                "spatial every 2nd, cross every 6th call (PAB paper), timesteps (100, 900)", pab(**fast)),
        Variant("TGATE + PAB (self-attention only)", "TGATE + PyramidAttentionBroadcast",
                f"gate {gate}; spatial every 2nd call, timesteps (100, 800); cross-attention left to TGATE",
                pab(**docs), call_kwargs=tgate),
        Variant("FirstBlockCache", "FirstBlockCache", "threshold 0.05 / 0.2",
                does_not_compose=f"not applicable: {FIRST_BLOCK_CACHE_ON_UNET}"),
        Variant("MagCache", "MagCache", "threshold 0.06 / 0.24", does_not_compose=f"not applicable: {MAG_CACHE_ON_UNET}"),
        Variant("FasterCache", "FasterCache", "defaults", does_not_compose=f"not applicable: {FASTER_CACHE_ON_UNET}"),
        Variant("TaylorSeer", "TaylorSeer", "interval 5 / lite", does_not_compose=f"not applicable: {TAYLORSEER_ON_UNET}"),
    ]
