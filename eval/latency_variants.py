"""What eval/latency.py times: the pipeline (checkpoint, random or tiny weights), its stock twin, and the variants.

A :class:`Variant` is a label and a :class:`~common.schedule.TgateSchedule`: the stock variant runs the diffusers
class itself on the same components; every other one calls the TGATE pipeline with the schedule's keywords
(``common.settings.call_keywords``) and is counted by the same schedule (``common.step_macs``).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
from dataclasses import dataclass, replace
from typing import Any, Callable

import diffusers
import torch

from common.architectures import latent_multiple
from common.dit_architectures import LTX_VAE, WAN_VAE, is_dit, is_video
from common.builders import BuiltPipeline, cast, diffusers_pipeline_class, random_weights_pipeline
from common.models import ModelSpec
from common.schedule import TgateSchedule
from common.settings import call_keywords, schedule_label
from common.step_macs import pipeline_counter

WEIGHT_NOTES = {
    "checkpoint": "real checkpoint weights",
    "random": "RANDOM WEIGHTS on the real architecture (built from common/model_configs): the timings are real, "
    "the images are noise",
    "tiny": "TINY RANDOM COMPONENTS (the test models), not the real architecture: a smoke run, the timings say "
    "nothing about the paper's models",
}


def benchmarked_pipeline(spec: ModelSpec, weights: str, source: str | None, device: torch.device,
                         dtype: torch.dtype) -> BuiltPipeline:
    """The TGATE pipeline of ``spec`` on ``device``: ``weights`` is checkpoint, random or tiny."""
    if weights == "random":
        return random_weights_pipeline(spec, device, dtype)
    if weights == "tiny":
        pipe = cast(spec.tiny_pipeline(), dtype)
    else:
        pipe = spec.load(source, torch_dtype=dtype)
    return BuiltPipeline(pipe.to(device), {"prompt": spec.prompt}, [])


def stock_pipeline(pipe: Any) -> Any:
    """The diffusers pipeline class the TGATE pipeline extends, on the same components (no copy)."""
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # from_pipe casts to dtype None: every cast warns
    try:
        return diffusers_pipeline_class(type(pipe)).from_pipe(pipe)
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)


def run_settings(args: argparse.Namespace, spec: ModelSpec, pipe: Any) -> tuple[int, int, dict[str, int]]:
    """(steps, resolution, size) of a run: the flags', else the model's. ``size``: the call's ``height`` and
    ``width`` (and ``num_frames`` for a video model); ``resolution``: the height (the side of a square image)."""
    steps = spec.steps if args.steps is None else args.steps
    multiple = latent_multiple(pipe.denoiser)
    if not is_dit(pipe.denoiser):
        if args.height or args.width or args.frames:
            raise ValueError(f"--height, --width and --frames are for the DiT models; {spec.title} takes --resolution")
        resolution = args.resolution or pipe.native_resolution
        if resolution % multiple:
            raise ValueError(f"--resolution must be a multiple of {multiple} pixels for {spec.title}, got {resolution}")
        return steps, resolution, {"height": resolution, "width": resolution}
    default = dict(spec.tiny_call) if args.weights == "tiny" else {"height": spec.size[0], "width": spec.size[1],
                                                                    "num_frames": spec.frames}
    height = args.height or args.resolution or default["height"]
    width = args.width or args.resolution or default["width"]
    for flag, value in (("--height", height), ("--width", width)):
        if value % multiple:
            raise ValueError(f"{flag} (or --resolution) must be a multiple of {multiple} pixels for {spec.title}, "
                             f"got {value}")
    size = {"height": height, "width": width}
    if is_video(pipe.denoiser):
        frames = args.frames or default["num_frames"]
        per_latent = frames_per_latent(pipe.denoiser)
        if (frames - 1) % per_latent:
            raise ValueError(f"--frames must be 1 + a multiple of {per_latent} for {spec.title} (its VAE compresses "
                             f"{per_latent} frames into one latent), got {frames}")
        size["num_frames"] = frames
    elif args.frames:
        raise ValueError(f"--frames is for the video models; {spec.title} makes images")
    return steps, height, size


def frames_per_latent(denoiser: Any) -> int:
    """Frames a video VAE compresses into one latent frame (after the first): Wan's 4, LTX-Video's 8."""
    return WAN_VAE[1] if type(denoiser).__name__.startswith("Wan") else LTX_VAE[1]


def call_settings(stock: Any, prompt_inputs: dict[str, Any], steps: int, size: dict[str, int],
                  guidance: float) -> dict[str, Any]:
    """The keyword arguments every timed call gets (the stock pipeline's names); ``size``: ``run_settings``'."""
    settings = dict(prompt_inputs, num_inference_steps=steps, guidance_scale=guidance, **size)
    if "use_resolution_binning" in inspect.signature(stock.__call__).parameters:
        settings["use_resolution_binning"] = False  # PixArt would otherwise snap the size to its 1024-px bins
    if "clean_caption" in inspect.signature(stock.__call__).parameters and importlib.util.find_spec("bs4") is None:
        settings["clean_caption"] = False  # what PixArt does without Beautiful Soup, after a warning at every call
    return settings


def seeded(call: Callable[..., Any], settings: dict[str, Any], seed: int, **extra) -> Callable[[], Any]:
    """``call(**settings, **extra)`` with a fresh generator seeded with ``seed`` at each run: the same noise."""
    return lambda: call(**settings, **extra, generator=torch.Generator("cpu").manual_seed(seed))


@dataclass(frozen=True)
class Variant:
    """One timed variant: its label and schedule; ``stock``: the diffusers class, not the TGATE pipeline."""

    label: str
    schedule: TgateSchedule
    stock: bool = False

    @property
    def call(self) -> dict[str, Any] | None:
        """The TGATE pipeline's keywords (None: the stock pipeline), as the JSON record shows them."""
        return None if self.stock else call_keywords(self.schedule)


def variant_table(schedule: TgateSchedule, steps: int, overhead: bool = False,
                  deepcache_ok: bool = True) -> dict[str, Variant]:
    """The variants of one run, in timing order: stock, TGATE at ``schedule``'s gate and intervals (v1, or V2),
    TGATE v1 at the same gate when that setting is V2, the hooks with no step gated (``overhead``), and where
    ``schedule`` uses DeepCache, DeepCache alone and DeepCache + TGATE v1 (the official ``SD_DeepCache.py``
    combination: cross-attention gated, self-attention computed)."""
    gate = schedule.gate_step
    tgate = replace(schedule, deepcache_interval=None, deepcache_branch=0)
    variants = {
        "baseline": Variant("stock", TgateSchedule(None), stock=True),
        "tgate": Variant(f"TGATE{'' if tgate.is_v1 else '-V2'} ({schedule_label(tgate)})", tgate),
    }
    if not tgate.is_v1:
        variants["tgate_v1"] = Variant(f"TGATE v1 (gate {gate})", TgateSchedule(gate))
    if overhead and (gate < steps or not tgate.is_v1):  # V2 caches self-attention even where no step is gated
        variants["no_gate"] = Variant(f"TGATE, gate {steps} (no step gated)", TgateSchedule(steps))
    if schedule.uses_deepcache and deepcache_ok:
        alone = TgateSchedule(None, deepcache_interval=schedule.deepcache_interval,
                              deepcache_branch=schedule.deepcache_branch)
        variants["deepcache"] = Variant(f"DeepCache (interval {alone.deepcache_interval}, branch "
                                        f"{alone.deepcache_branch})", alone)
        variants["deepcache_tgate"] = Variant(f"DeepCache + TGATE (gate {gate})", replace(alone, gate_step=gate))
    return variants


def variant_call(variant: Variant, pipe: Any, stock: Any, settings: dict[str, Any], seed: int,
                 **extra) -> Callable[[], Any]:
    if variant.stock:
        return seeded(stock, settings, seed, **extra)
    return seeded(pipe, settings, seed, **variant.call, **extra)


def variant_macs(pipe: Any, resolution: int, steps: int, guided: bool, variants: dict[str, Variant],
                 size: dict[str, int] | None = None) -> dict[str, int]:
    """eval/macs.py's MACs of a whole run of each variant (the step walk on a weightless copy of the denoiser);
    ``size``: a DiT's height, width and frames (``run_settings``), counted with attention (``pipeline_counter``)."""
    size = size or {}
    counter = pipeline_counter(pipe, resolution, guided, height=size.get("height"), width=size.get("width"),
                               frames=size.get("num_frames", 1))
    return {name: counter.total(variant.schedule, steps) for name, variant in variants.items()}
