"""TGATE on any diffusers pipeline whose denoiser has cross-attention, for classes this repository did not write.

>>> from diffusers import StableDiffusionXLControlNetImg2ImgPipeline
>>> from common.any_pipeline import tgate_class, tgate_pipeline
>>> TgateClass = tgate_class(StableDiffusionXLControlNetImg2ImgPipeline)  # TgateMixin + that class, cached
>>> pipe = TgateClass.from_pretrained(...)                                # or, from a stock pipeline:
>>> pipe = tgate_pipeline(stock_pipe)                                     # tgate_class(type(stock_pipe)).from_pipe(stock_pipe)
>>> image = pipe(..., num_inference_steps=25, gate_step=10).images[0]

:func:`tgate_class` returns this repository's own class where it has one (``SD_1_5``, ``SDXL``, ``PixArt_*``,
``AnimateDiff``, ``SVD``), else builds ``Tgate<Name>(ControlNetGuard, TgateMixin, <Name>)`` once and caches it.
TGATE needs three things of a pipeline, and a class without them is refused with a ``ValueError`` instead of
running stock (or wrong) silently:

- a denoiser named ``unet`` or ``transformer`` (plus ``controlnet`` if any) whose modules include
  cross-attention (checked on the components, by :func:`tgate_pipeline` and at every call);
- a sampling loop on the pipeline's progress bar (``self.progress_bar(`` in ``__call__``): TGATE counts the
  gate's steps there;
- a guidance it understands, checked on the tensors at the first guided evaluation
  (:func:`common.branches.guidance_layout`): one denoiser call per step on the batch ``[negative, positive]``
  (SD, SDXL, PixArt, HunyuanDiT, LTX-Video, Sana, ...), or one call per branch, conditional first, with a
  ``do_classifier_free_guidance`` property read every step (Wan, SkyReels-V2: after the gate the second call
  goes away). A positive-first batch or a third branch is refused then; so are, up front, perturbed-attention
  guidance (PAG) and pipelines that call their denoiser in several places (extra guidance or correction passes).
- a denoiser whose per-sample inputs it knows (:data:`common.branches.PER_SAMPLE_INPUTS`).

Joint-attention models (SD3, Flux, CogVideoX, HunyuanVideo, QwenImage, ...) attend to text and image tokens in one
attention: there is no cross-attention to cache, and :func:`tgate_pipeline` refuses them.

ControlNet pipelines keep :class:`~common.controlnet.ControlNetGuard`'s refusal of guess mode under guidance.
A class built here is registered with diffusers like the repository's own (``diffusers.Tgate<Name>``, the
AutoPipeline task mappings), so a saved pipeline loads back by name in a process that built the class first.
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
from typing import Any

import diffusers
from diffusers import DiffusionPipeline
from diffusers.pipelines.pag.pag_utils import PAGMixin

from .controlnet import ControlNetGuard
from .gate import cross_attention_modules, no_cross_attention_reason
from .pipeline import TgateMixin

__all__ = ["check_gateable_class", "check_gateable_pipeline", "tgate_class", "tgate_pipeline"]

# The repository's own TGATE classes, preferred over a built one for the same stock class.
FAMILY_MODULES = (
    "SD_1_5.pipeline",
    "SDXL.pipeline",
    "PixArt_alpha.pipeline",
    "PixArt_sigma.pipeline",
    "AnimateDiff.pipeline",
    "SVD.pipeline",
    "Wan.pipeline",
    "LTX_Video.pipeline",
    "Sana.pipeline",
    "HunyuanDiT.pipeline",
)
DENOISER_NAMES = ("unet", "transformer")

_BUILT: dict[type, type] = {}
_LOCK = threading.Lock()


def _stock_base(tgate_cls: type) -> type | None:
    """The pipeline class a TGATE class gates: its first base outside TgateMixin and the guards."""
    return next((base for base in tgate_cls.__mro__[1:] if issubclass(base, DiffusionPipeline)
                 and not issubclass(base, TgateMixin)), None)


def _family_class(pipeline_class: type) -> type | None:
    for name in FAMILY_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # the repository root is not on sys.path: build a class instead
            continue
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, TgateMixin) and value.__module__ == name
                    and _stock_base(value) is pipeline_class):
                return value
    return None


def _call_source(pipeline_class: type) -> str:
    try:
        return inspect.getsource(pipeline_class.__call__)
    except (OSError, TypeError):
        return ""


def check_gateable_class(pipeline_class: Any) -> None:
    """Raise a ``ValueError`` (``TypeError`` for a non-pipeline) if TGATE cannot gate ``pipeline_class``."""
    if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, DiffusionPipeline)):
        raise TypeError(f"tgate_class takes a diffusers pipeline class, got {pipeline_class!r}.")
    name = pipeline_class.__name__
    components = inspect.signature(pipeline_class.__init__).parameters
    if not any(denoiser in components for denoiser in DENOISER_NAMES):
        raise ValueError(
            f"TGATE cannot gate {name}: it has no denoiser component named 'unet' or 'transformer' "
            f"(its components: {', '.join(p for p in components if p != 'self')})."
        )
    source = _call_source(pipeline_class)
    if "self.progress_bar(" not in source:
        raise ValueError(
            f"TGATE cannot gate {name}: its __call__ has no sampling loop on self.progress_bar, where TGATE "
            "counts the gate's steps."
        )
    parameters = inspect.signature(pipeline_class.__call__).parameters
    reports_guidance = isinstance(getattr(pipeline_class, "do_classifier_free_guidance", None), property)
    if not (reports_guidance or "guidance_scale" in parameters):
        raise ValueError(
            f"TGATE cannot gate {name}: it has neither a do_classifier_free_guidance property nor a "
            "guidance_scale parameter, so TGATE cannot tell whether a step runs a guidance batch."
        )
    if issubclass(pipeline_class, PAGMixin):
        raise ValueError(
            f"TGATE cannot gate {name}: perturbed-attention guidance runs a third branch in the denoiser batch "
            "([negative, positive, perturbed]), which TGATE's cut of the batch [negative, positive] would split wrong."
        )
    denoiser_calls = len(re.findall(r"self\.(?:unet|transformer)\(", source))
    if denoiser_calls > 1:
        raise ValueError(
            f"TGATE cannot gate {name}: its __call__ calls its denoiser in {denoiser_calls} places (extra guidance "
            "or correction passes), so TGATE cannot tell which call runs the guidance batch of a step."
        )


def tgate_class(pipeline_class: type) -> type:
    """The TGATE subclass of a diffusers pipeline class: ``__call__`` gains ``gate_step`` (see TgateMixin).

    A TGATE class is returned as is; the repository's own class for ``pipeline_class`` where it has one; else
    one class built on first use and cached. Refuses classes TGATE cannot gate (:func:`check_gateable_class`).
    """
    if isinstance(pipeline_class, type) and issubclass(pipeline_class, TgateMixin):
        return pipeline_class
    with _LOCK:
        if pipeline_class in _BUILT:
            return _BUILT[pipeline_class]
        check_gateable_class(pipeline_class)
        built = _family_class(pipeline_class)
        if built is None:
            name = f"Tgate{pipeline_class.__name__}"
            doc = (f"``{pipeline_class.__name__}`` whose ``__call__`` also takes ``gate_step`` (TGATE), built by "
                   "common.any_pipeline.tgate_class.")
            built = type(name, (ControlNetGuard, TgateMixin, pipeline_class), {"__module__": __name__, "__doc__": doc})
        _BUILT[pipeline_class] = built
        return built


def check_gateable_pipeline(pipe: Any) -> None:
    """Raise a ``ValueError`` if ``pipe``'s denoiser (``unet`` or ``transformer``) has no cross-attention."""
    denoiser = next((getattr(pipe, name) for name in DENOISER_NAMES if getattr(pipe, name, None) is not None), None)
    if denoiser is None:
        raise ValueError(f"TGATE cannot gate this {type(pipe).__name__}: it has no 'unet' or 'transformer'.")
    if not cross_attention_modules(denoiser):
        raise ValueError(f"TGATE cannot gate this {type(pipe).__name__}: {no_cross_attention_reason(denoiser)}")


def tgate_pipeline(pipe: DiffusionPipeline, **kwargs) -> DiffusionPipeline:
    """A TGATE pipeline sharing ``pipe``'s components: ``tgate_class(type(pipe)).from_pipe(pipe, **kwargs)``."""
    cls = tgate_class(type(pipe))
    check_gateable_pipeline(pipe)
    return pipe if type(pipe) is cls and not kwargs else cls.from_pipe(pipe, **kwargs)
