"""`TgateMixin`: adds TGATE's parameters to a diffusers pipeline class, around `super().__call__()`."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

import diffusers
import torch
from diffusers.pipelines import auto_pipeline

from .gate import active_call, check_deepcache, gated_sampling
from .schedule import TgateSchedule

TGATE_PARAMETERS = {
    "gate_step": None,
    "sp_interval": 1,
    "fi_interval": 1,
    "warm_up": 0,
    "deepcache_interval": None,
    "deepcache_branch": 0,
}

TGATE_DOCSTRING = """
        TGATE (keyword-only, added to the stock arguments above):
            gate_step (`int`, *optional*, defaults to `None`):
                The gate: steps `0 .. gate_step - 1` run as stock; at step `gate_step - 1` every cross-attention
                module caches its output (the mean of its unconditional and conditional halves under guidance);
                from step `gate_step` on it returns that cache and classifier-free guidance is dropped (the
                denoiser runs the negative branch only). Steps are the pipeline's own (its progress bar: after
                `strength` or `denoising_end`), whatever the scheduler evaluates per step. `None` is the stock
                pipeline; `gate_step >= num_inference_steps` gives the stock output bit for bit at `sp_interval=1`
                (TGATE-V2's larger intervals change the steps before the gate), with a warning that the gate is
                never reached.
            sp_interval (`int`, *optional*, defaults to 1):
                TGATE-V2: before the gate, self-attention is computed (and cached) every `sp_interval` steps
                after the warm-up, and returns its cache in between. 1 computes it every step (v1).
            fi_interval (`int`, *optional*, defaults to 1):
                TGATE-V2: after the gate, self-attention is computed (and cached) every `fi_interval` steps.
            warm_up (`int`, *optional*, defaults to 0):
                TGATE-V2: the first `warm_up` steps compute self-attention without caching it.
            deepcache_interval (`int`, *optional*, defaults to `None`):
                DeepCache (UNet pipelines only): the UNet runs in full every `deepcache_interval` steps and in
                between only its shallow branch `deepcache_branch`, the deeper blocks returning their outputs of
                the last full step. With a `gate_step`, steps `gate_step - 1` and `gate_step` both run in full and
                the interval restarts at the gate (the official TGATE + DeepCache combination; its defaults are
                `deepcache_interval=3, deepcache_branch=0`). `gate_step=None` with an interval > 1 is DeepCache
                alone, as DeepCache 0.1.1's `DeepCacheSDHelper.set_params(cache_interval, cache_branch_id)`.
                `None` or 1 is no DeepCache (TGATE alone, bit for bit).
            deepcache_branch (`int`, *optional*, defaults to 0):
                DeepCache's `cache_branch_id`: the shallow branch a partial forward runs. With `B = b // 3` and
                `L = b % 3` (DeepCache counts three layers per down block: its resnet/attention pairs, then its
                downsampler), that is the down blocks before `B`, the layers before `L` of down block `B`, the last
                `L + 1` layers of the up block of the same level and the up blocks after it (plus the UNet's input
                and output layers); everything deeper, the mid block included, returns its output of the last full
                step. 0 is the shallowest branch; valid: `0 .. 3 * len(unet.down_blocks) - 1` (SD 0..11, SDXL 0..8).
"""


class TgateMixin:
    """Mix in before a diffusers pipeline class to give its ``__call__`` TGATE's keyword-only parameters.

    ``pipe(..., gate_step=None)`` is the stock pipeline; ``gate_step=g`` runs ``g`` stock steps, caches
    cross-attention at step ``g - 1`` and runs the remaining steps with the cache and without guidance
    (``sp_interval``, ``fi_interval``, ``warm_up`` add TGATE-V2's self-attention caching;
    ``deepcache_interval``, ``deepcache_branch`` add DeepCache, with or without a gate). The subclass keeps
    the stock ``__call__``'s signature and docstring, plus TGATE's. The denoiser is ``unet`` or
    ``transformer``, whichever the pipeline has; everything else is the parent pipeline's own code.

    To gate an already-built stock pipeline, share its components: ``TgateX.from_pipe(stock_pipe)``.
    """

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.__call__ = _tgate_call_for(super(TgateMixin, cls).__call__)
        guidance = getattr(super(TgateMixin, cls), "do_classifier_free_guidance", None)
        if isinstance(guidance, property) and not hasattr(guidance.fget, "_tgate_stock"):
            cls.do_classifier_free_guidance = _guidance_with_gate(guidance)
        encode_prompt = getattr(super(TgateMixin, cls), "encode_prompt", None)
        if encode_prompt is not None and not getattr(encode_prompt, "_tgate_records", False):
            cls.encode_prompt = _recording(encode_prompt)
        _register_with_diffusers(cls)

    @property
    def denoiser(self) -> torch.nn.Module:
        """``unet`` or ``transformer``; a Wan 2.2 pipeline loaded with ``transformer=None`` (its low-noise expert
        alone, an optional component in diffusers) has ``transformer_2``."""
        denoiser = self.unet if hasattr(self, "unet") else self.transformer
        return getattr(self, "transformer_2", None) if denoiser is None else denoiser

    @property
    def denoisers(self) -> list[torch.nn.Module]:
        """What the sampling loop runs on the guidance batch: the denoiser, a second expert (Wan 2.2's
        ``transformer_2``) and the ControlNet, where the pipeline has them (components set to None left out)."""
        modules = (self.denoiser, *(getattr(self, name, None) for name in ("transformer_2", "controlnet")))
        return list({id(module): module for module in modules if module is not None}.values())

    @property
    def native_resolution(self) -> int:
        """The image side the pipeline makes by default: the denoiser's sample size times the VAE factor."""
        return self.denoiser.config.sample_size * self.vae_scale_factor

    def uses_guidance(self, guidance_scale: float) -> bool:
        """Whether a call with ``guidance_scale`` runs classifier-free guidance (a doubled batch).

        The rule of diffusers' SD, SDXL and PixArt pipelines: guidance above 1, unless the denoiser takes
        the guidance scale as an embedding (LCM's ``time_cond_proj_dim``, a guidance-distilled transformer's
        ``guidance_embeds``: Sana-Sprint) instead of a second branch.
        """
        config = self.denoiser.config
        embedded = getattr(config, "time_cond_proj_dim", None) is not None or getattr(config, "guidance_embeds", False)
        return guidance_scale > 1 and not embedded

    def guidance_state(self, guidance_scale: float) -> Callable[[], bool]:
        """The pipeline's guidance state, to be read at every step.

        SD and SDXL read their ``do_classifier_free_guidance`` property at every step, and callbacks may end
        guidance by changing ``_guidance_scale`` (diffusers' CFG cut-off callbacks); PixArt decides once.
        """
        guidance = getattr(type(self), "do_classifier_free_guidance", None)
        if isinstance(guidance, property):  # the stock property, not the gated one
            stock = getattr(guidance.fget, "_tgate_stock", guidance)
            return lambda: stock.fget(self)
        guided = self.uses_guidance(guidance_scale)
        return lambda: guided

    def progress_bar(self, iterable=None, total=None):
        """The stock progress bar; during a TGATE call, also the clock that counts the gate's steps."""
        bar = super().progress_bar(iterable=iterable, total=total)
        call = active_call()
        return bar if call is None else call.follow(bar)

    def _tgate_call(self, stock_call: Callable, args: tuple, kwargs: dict, tgate: dict[str, Any]):
        schedule = TgateSchedule(**tgate)
        check_deepcache(self.denoisers, schedule)
        if schedule.is_stock:  # no gate and no DeepCache
            return stock_call(self, *args, **kwargs)
        call = inspect.signature(stock_call).bind(self, *args, **kwargs)
        call.apply_defaults()
        guided = self.guidance_state(call.arguments.get("guidance_scale", 1.0))
        with gated_sampling(self.denoisers, schedule, guided, type(self)):
            return stock_call(self, *args, **kwargs)


def _guidance_with_gate(stock: property) -> property:
    """The pipeline's ``do_classifier_free_guidance``, False after the gate for a pipeline that guides with two
    denoiser calls per step (Wan): the loop reads it after the conditional call and skips the second one. One
    batch ``[negative, positive]`` pipelines read it unchanged (the gate cuts their batch instead)."""

    def do_classifier_free_guidance(self) -> bool:
        call = active_call()
        return stock.fget(self) and not (call is not None and call.drops_guidance_call())

    gated = property(do_classifier_free_guidance, doc=stock.__doc__)
    gated.fget._tgate_stock = stock
    return gated


def _recording(encode_prompt: Callable) -> Callable:
    """``encode_prompt`` that also hands what it returns to the TGATE call in progress, which checks the guidance
    batch's branch order on these tensors (``common.branches.check_branch_order``)."""

    @functools.wraps(encode_prompt)
    def recording_encode_prompt(self, *args, **kwargs):
        output = encode_prompt(self, *args, **kwargs)
        call = active_call()
        if call is not None and isinstance(output, tuple):
            call.text_states.append(output)
        return output

    recording_encode_prompt._tgate_records = True
    return recording_encode_prompt


def _register_with_diffusers(cls: type) -> None:
    """Make diffusers' loaders find ``cls`` by name, as they find their own classes.

    ``DiffusionPipeline.from_pretrained(folder)`` looks the saved ``_class_name`` up on the ``diffusers``
    module (and diffusers' tooling on ``diffusers.pipelines``); ``AutoPipelineFor*.from_pipe`` / ``from_pretrained`` look classes up in the task mappings. Each
    TGATE class gets the key ``tgate-<key>`` of its stock class, so a TGATE text-to-image pipeline maps to the
    TGATE image-to-image class of its family (where one exists) and back.
    """
    # The class it gates, as its first non-TGATE pipeline base: a TGATE class of a user's own subclass of a
    # diffusers pipeline maps no task (it would take the place of diffusers' own class there).
    stock = next(base for base in cls.__mro__[1:] if issubclass(base, diffusers.DiffusionPipeline)
                 and not issubclass(base, TgateMixin))
    setattr(diffusers, cls.__name__, cls)
    setattr(diffusers.pipelines, cls.__name__, cls)  # diffusers' own test tooling looks classes up there
    for mapping in auto_pipeline.SUPPORTED_TASKS_MAPPINGS:
        for key, pipeline_class in list(mapping.items()):
            if pipeline_class is stock:
                mapping[f"tgate-{key}"] = cls


def _tgate_call_for(stock_call: Callable) -> Callable:
    """A ``__call__`` with ``stock_call``'s signature and docstring plus TGATE's keyword-only parameters."""

    def __call__(self, *args, **kwargs):
        tgate = {name: kwargs.pop(name, default) for name, default in TGATE_PARAMETERS.items()}
        return self._tgate_call(stock_call, args, kwargs, tgate)

    functools.update_wrapper(__call__, stock_call)
    del __call__.__wrapped__  # inspect.signature must show the TGATE parameters, not the stock ones
    stock = inspect.signature(stock_call)
    parameters = list(stock.parameters.values())
    tail = [p for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD]
    head = [p for p in parameters if p.kind is not inspect.Parameter.VAR_KEYWORD]
    tgate = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in TGATE_PARAMETERS.items()]
    __call__.__signature__ = stock.replace(parameters=head + tgate + tail)
    __call__.__doc__ = (stock_call.__doc__ or "").rstrip() + "\n" + TGATE_DOCSTRING
    return __call__
