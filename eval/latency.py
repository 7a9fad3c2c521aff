"""Seconds per image, stock pipeline against TGATE, on the same inputs and seed: the paper's latency column.

Run from the repository root: ``python eval/latency.py --model sd15 --random-weights`` (``--help`` for the
flags). What is timed is a whole sampling run of one image, as the paper times it: prompt encoding, every
denoising step and the VAE decode to a PIL image. Building or loading the model is not timed; on CUDA the
device is synchronised before and after each run. The runs of the variants are interleaved (each timed
round runs every variant once, in a rotating order) so that a change of machine load affects all of them
alike; the report gives the median over the rounds and the spread (min, max).

- stock: the diffusers pipeline class itself (``StableDiffusionPipeline``, ...), sharing the TGATE
  pipeline's components through ``from_pipe``;
- TGATE: the project's pipeline with ``gate_step`` (and TGATE-V2's ``--sp-interval --fi-interval --warm-up``,
  by default the registry model's: v1 for the v1 table's models, the V2 README's 3/1/2 for PixArt-Sigma);
- with ``--overhead`` (or a gate >= steps): the TGATE pipeline with a gate at the last step, where its hooks
  are installed and no step is gated: the cost of the hooks alone, against stock;
- when the official ``tgate`` package is importable: the same gate and intervals on the same components (its
  cross-attention-only mode at ``sp_interval=1, fi_interval=1, warm_up=0``). It rewrites the attention modules'
  ``forward`` and leaves a cache on them, so their state is restored after each of its runs.

Weights: the checkpoint of the registry model (the Hugging Face cache or a local folder), or with
``--random-weights`` the full real architecture built from ``common/model_configs`` with random weights
(latency does not depend on weight values), or with ``--tiny`` the tiny components of the tests (smoke runs).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

import diffusers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from tqdm import tqdm  # noqa: E402

from common.architectures import build_denoiser, latent_multiple  # noqa: E402
from common.cli import DTYPES, check_gate_flag, device_name, resolve_device_and_dtype, synchronize  # noqa: E402
from common.models import MODELS, CheckpointNotFoundError, ModelSpec, get_model  # noqa: E402
from common.schedule import TgateSchedule, check_int  # noqa: E402
from common.tiny import tiny_clip_tokenizer  # noqa: E402
from eval.macs import V1_INTERVALS, StepCounter, format_intervals, schedule_of  # noqa: E402

JSON_KEYS = ("model", "device", "steps", "gate", "sp_interval", "fi_interval", "warm_up", "resolution", "baseline_s",
             "tgate_s", "speedup")
V2_FLAGS = (("sp_interval", 1), ("fi_interval", 1), ("warm_up", 0))  # TGATE-V2's settings and their minimum
# Text encoders above this size are not built with random weights: PixArt's T5-XXL encoder (4.76B parameters,
# 19 GB in float32) does not fit this project's CPUs, and no T5 tokenizer is available offline. Random prompt
# embeddings of the encoder's output shape are passed instead.
TEXT_ENCODER_PARAMETER_LIMIT = 1_000_000_000
# Tokens PixArt's pipeline pads T5 prompts to (its `max_sequence_length`).
T5_TOKENS = 120
# Random-weight pipelines have no safety checker (SD's default asks for one, with a warning) and no invisible
# watermark (SDXL's default adds one when its package is installed).
RANDOM_PIPELINE_OPTIONS = {"requires_safety_checker": False, "add_watermarker": False}
OFFICIAL_LOADERS = {  # the diffusers pipeline class -> the official package's loader for it
    "StableDiffusionPipeline": "TgateSDLoader",
    "StableDiffusionXLPipeline": "TgateSDXLLoader",
    "PixArtAlphaPipeline": "TgatePixArtAlphaLoader",
    "PixArtSigmaPipeline": "TgatePixArtSigmaLoader",
}
WEIGHT_NOTES = {
    "checkpoint": "real checkpoint weights",
    "random": "RANDOM WEIGHTS on the real architecture (built from common/model_configs): the timings are real, "
    "the images are noise",
    "tiny": "TINY RANDOM COMPONENTS (the test models), not the real architecture: a smoke run, the timings say "
    "nothing about the paper's models",
}


# --- Pipelines ---------------------------------------------------------------------------------------------


@dataclass
class Benchmarked:
    """The TGATE pipeline to time and what each of its calls gets for the prompt."""

    pipe: Any
    prompt_inputs: dict[str, Any]  # {"prompt": text}, or random prompt embeddings where the encoder is not built
    notes: list[str]  # what differs from the real pipeline, for the report


def config_folder(spec: ModelSpec, component: str) -> Path | None:
    """The architecture config of ``component``: the model's own, else that of a registry model with the same
    pipeline class (LCM-SDXL ships only its UNet: its VAE, text encoders and scheduler are SDXL base's)."""
    same_pipeline = [other for other in MODELS.values() if other.pipeline == spec.pipeline and other is not spec]
    for candidate in (spec, *same_pipeline):
        folder = candidate.config_dir / component
        if folder.is_dir():
            return folder
    return None


def read_config(folder: Path) -> dict[str, Any]:
    for name in ("config.json", "scheduler_config.json"):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text())
    raise ValueError(f"no config.json or scheduler_config.json in {folder}")


def random_component(folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
    """A diffusers model or scheduler (config with ``_class_name``) or a transformers model (``architectures``)
    built from ``folder``'s config, with random weights."""
    config = read_config(folder)
    if "_class_name" in config:
        component_class = getattr(diffusers, config["_class_name"])
        if issubclass(component_class, diffusers.SchedulerMixin):
            return component_class.from_config(config)
        with torch.device(device):
            model = component_class.from_config(config)
    else:
        model_config = transformers.AutoConfig.from_pretrained(folder)
        with torch.device(device):
            model = getattr(transformers, config["architectures"][0])(model_config)
    return cast(model, dtype).eval()


def cast(module: Any, dtype: torch.dtype) -> Any:
    """``module.to(dtype)`` only when needed: diffusers warns at every cast, also a no-op one."""
    return module if module.dtype == dtype else module.to(dtype=dtype)


def parameter_count(folder: Path) -> int:
    """Parameters of the model configured in ``folder``, counted on the meta device (no memory)."""
    model = random_component(folder, torch.device("meta"), torch.float32)
    return sum(parameter.numel() for parameter in model.parameters())


def random_weights_pipeline(spec: ModelSpec, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Benchmarked:
    """The TGATE pipeline of ``spec`` with every component built from the project's configs, random weights.

    Tokenizers are built in code (character-level CLIP tokenizers padding to the encoder's 77 positions, so the
    text encoder does the real amount of work); there is no safety checker. A text encoder over
    ``TEXT_ENCODER_PARAMETER_LIMIT`` parameters is replaced by random prompt embeddings of its output shape.
    """
    torch.manual_seed(seed)
    parameters = inspect.signature(spec.pipeline_class.__init__).parameters
    components: dict[str, Any] = {}
    notes = ["no safety checker"]
    replaced: dict[str, Path] = {}  # text encoders not built -> their config folder
    for name in parameters:
        if name == "self" or name.startswith("tokenizer"):
            continue
        if name in RANDOM_PIPELINE_OPTIONS:
            components[name] = RANDOM_PIPELINE_OPTIONS[name]
        elif name == spec.denoiser:
            components[name] = build_denoiser(spec, device=device, dtype=dtype)
        else:
            folder = config_folder(spec, name)
            if folder is None:
                if name in ("vae", "scheduler") or name.startswith("text_encoder"):
                    raise ValueError(f"no config for {spec.key}'s {name} in {spec.config_dir} (nor in a registry "
                                     "model with the same pipeline): --random-weights needs one")
                components[name] = None  # safety checker, feature extractor, image encoder
            elif name.startswith("text_encoder") and (size := parameter_count(folder)) > TEXT_ENCODER_PARAMETER_LIMIT:
                replaced[name] = folder
                components[name] = None
                notes.append(f"{name} ({size / 1e9:.2f}B parameters) not built: random prompt embeddings of its "
                             "output shape instead, so prompt encoding is not timed (the same work in stock and "
                             "TGATE runs, before the denoising loop)")
            else:
                components[name] = random_component(folder, device, dtype)
    for name in parameters:
        if name.startswith("tokenizer"):
            encoder = components.get(name.replace("tokenizer", "text_encoder"))
            if encoder is None:
                components[name] = None
            elif encoder.config.model_type.startswith("clip"):
                components[name] = tiny_clip_tokenizer(max_length=encoder.config.max_position_embeddings)
                notes.append(f"{name}: a character-level CLIP tokenizer built in code; it pads to the encoder's "
                             f"{encoder.config.max_position_embeddings} positions as the real one does, so the text "
                             "encoder does the same work")
            else:
                raise ValueError(f"no offline tokenizer for {spec.key}'s {type(encoder).__name__}")
    pipe = spec.install_scheduler(spec.pipeline_class(**components))
    prompt_inputs: dict[str, Any] = {"prompt": spec.prompt}
    if replaced:
        prompt_inputs = random_prompt_embeddings(spec, replaced, device, dtype)
    return Benchmarked(pipe, prompt_inputs, notes)


def random_prompt_embeddings(
    spec: ModelSpec, replaced: dict[str, Path], device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """Prompt and negative embeddings with attention masks, for a pipeline with one (T5) text encoder."""
    call_parameters = inspect.signature(diffusers_pipeline_class(spec.pipeline_class).__call__).parameters
    if len(replaced) > 1 or "prompt_attention_mask" not in call_parameters:
        raise ValueError(f"{spec.key}: random prompt embeddings are supported for a single T5 text encoder "
                         f"(PixArt); {', '.join(replaced)} too big to build")
    (folder,) = replaced.values()
    width = read_config(folder)["d_model"]
    generator = torch.Generator().manual_seed(0)

    def embeddings() -> torch.Tensor:
        return torch.randn(1, T5_TOKENS, width, generator=generator).to(device=device, dtype=dtype)

    mask = torch.ones(1, T5_TOKENS, device=device)
    return {"prompt_embeds": embeddings(), "prompt_attention_mask": mask,
            "negative_prompt_embeds": embeddings(), "negative_prompt_attention_mask": mask.clone(),
            "negative_prompt": None}  # PixArt's default negative prompt "" cannot go with negative embeddings


def benchmarked_pipeline(spec: ModelSpec, weights: str, source: str | None, device: torch.device,
                         dtype: torch.dtype) -> Benchmarked:
    """The TGATE pipeline of ``spec`` on ``device``: ``weights`` is checkpoint, random or tiny."""
    if weights == "random":
        return random_weights_pipeline(spec, device, dtype)
    if weights == "tiny":
        pipe = spec.tiny_pipeline()
        pipe = cast(pipe, dtype)
    else:
        pipe = spec.load(source, torch_dtype=dtype)
    return Benchmarked(pipe.to(device), {"prompt": spec.prompt}, [])


def diffusers_pipeline_class(pipeline_class: type) -> type:
    """The diffusers class a TGATE pipeline class extends (``StableDiffusionPipeline``, ...)."""
    return next(c for c in pipeline_class.__mro__ if c.__module__.startswith("diffusers.pipelines"))


def stock_pipeline(pipe: Any) -> Any:
    """The diffusers pipeline class the TGATE pipeline extends, on the same components (no copy)."""
    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()  # from_pipe casts to dtype None: every cast warns
    try:
        return diffusers_pipeline_class(type(pipe)).from_pipe(pipe)
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)


# --- The official tgate package ----------------------------------------------------------------------------


class OfficialPackageError(RuntimeError):
    """The official tgate package failed on this pipeline."""


def official_variant(pipe: Any, settings: dict[str, Any], seed: int, gate: int, guided: bool,
                     intervals: tuple[int, int, int] = V1_INTERVALS) -> Callable | None:
    """A run of the official ``tgate`` package on ``pipe``'s components at the same gate and V2 intervals (its
    cross-attention-only mode at v1's), or None when the package is not installed. Each run restores the
    modules it rewrites."""
    if importlib.util.find_spec("tgate") is None:
        return None
    stock = stock_pipeline(pipe)
    loader = getattr(importlib.import_module("tgate"), OFFICIAL_LOADERS[type(stock).__name__])
    official = loader(stock)
    official.set_progress_bar_config(disable=True)
    # v1 (sp_interval = fi_interval = 1, no warm-up): cross-attention cached at the gate, self-attention computed
    sp_interval, fi_interval, warm_up = intervals
    run = seeded(official.tgate, settings, seed, gate_step=gate, sp_interval=sp_interval, fi_interval=fi_interval,
                 warm_up=warm_up, lcm=not guided)

    def run_restoring_modules() -> None:
        with restored_module_state(pipe.denoiser):
            try:
                run()
            except Exception as error:  # a package outside this project: say which, not a traceback
                raise OfficialPackageError(f"the official tgate package failed: {type(error).__name__}: {error}. "
                                           "Time without it: --no-official.") from error

    return run_restoring_modules


@contextlib.contextmanager
def restored_module_state(denoiser: torch.nn.Module) -> Iterator[None]:
    """Put back every module's instance ``forward`` and ``cache`` as they were (the official package leaves
    its own ``forward`` and a cross-attention cache on each attention module)."""
    saved = [(module, {key: module.__dict__[key] for key in ("forward", "cache") if key in module.__dict__})
             for module in denoiser.modules()]
    try:
        yield
    finally:
        for module, attributes in saved:
            for key in ("forward", "cache"):
                module.__dict__.pop(key, None)
            module.__dict__.update(attributes)


# --- Timing ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    runs: tuple[float, ...]  # seconds of each timed run, in order
    loop_runs: tuple[float, ...] = ()  # seconds of the denoising loop of each timed run (where it was seen)
    peak_memory_bytes: int | None = None  # CUDA: the most memory allocated during any timed run

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def loop_median(self) -> float | None:
        return statistics.median(self.loop_runs) if self.loop_runs else None

    def summary(self) -> dict[str, Any]:
        summary = {"median_s": self.median, "min_s": min(self.runs), "max_s": max(self.runs), "runs_s": list(self.runs)}
        if self.loop_runs:
            summary.update(loop_median_s=self.loop_median, loop_runs_s=list(self.loop_runs))
        if self.peak_memory_bytes is not None:
            summary["peak_memory_bytes"] = self.peak_memory_bytes
        return summary


class LoopClock:
    """The denoising loop's seconds, apart from prompt encoding and VAE decoding.

    Every pipeline here opens its progress bar right before the loop (``with self.progress_bar(total=steps)``)
    and closes it right after the last step: the clock starts when the bar is opened and stops when it is
    closed, with the device synchronised at both ends. It sits outside the denoiser, so a torch.compile'd
    denoiser is timed the same way."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start: float | None = None
        self.end: float | None = None

    def reset(self) -> None:
        self.start = self.end = None

    @property
    def seconds(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start

    def instrument(self, pipe: Any) -> Any:
        """Time ``pipe``'s loops on this clock (an instance attribute over its ``progress_bar`` method)."""
        original = pipe.progress_bar

        def progress_bar(*args, **kwargs):
            synchronize(self.device)
            self.start, self.end = time.perf_counter(), None
            bar = original(*args, **kwargs)
            close = getattr(bar, "close", None)
            if close is not None:
                def close_and_stop(*close_args, **close_kwargs):
                    if self.end is None:
                        synchronize(self.device)
                        self.end = time.perf_counter()
                    return close(*close_args, **close_kwargs)

                bar.close = close_and_stop
            return bar

        pipe.progress_bar = progress_bar
        return pipe


def timed_run(run: Callable[[], Any], device: torch.device) -> float:
    """Seconds of ``run()``, with the garbage collector paused as ``timeit`` does (no collection pause
    falls at random into one variant's run)."""
    synchronize(device)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        run()
        synchronize(device)
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def time_interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device,
                     progress: bool = True, clock: LoopClock | None = None) -> dict[str, Timing]:
    """Run every variant ``warmup`` times untimed, then ``repeats`` timed rounds; round ``r`` starts with
    variant ``r mod n``: over the rounds each variant takes each place in the order in turn. With a ``clock``
    (on the pipelines the variants call), each run's denoising loop is timed too; on CUDA each variant's peak
    allocated memory over its timed runs is kept (the peak is reset before every run)."""
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    loops: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, int] = {}
    cuda = device.type == "cuda"
    bar = tqdm(total=(warmup + repeats) * len(names), desc="timing", unit="run", file=sys.stderr,
               disable=not progress)
    with bar:
        for round_index in range(warmup + repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                bar.set_postfix_str(("warm-up " if round_index < warmup else "") + name)
                if clock is not None:
                    clock.reset()
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                elapsed = timed_run(variants[name], device)
                if round_index >= warmup:
                    seconds[name].append(elapsed)
                    if clock is not None and clock.seconds is not None:
                        loops[name].append(clock.seconds)
                    if cuda:
                        peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device))
                bar.update()
    return {name: Timing(tuple(runs), tuple(loops[name]) if len(loops[name]) == len(runs) else (), peaks.get(name))
            for name, runs in seconds.items()}


# --- Benchmark ---------------------------------------------------------------------------------------------


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(value, 2) for value in os.getloadavg()]
    return None


def macs_prediction(pipe: Any, resolution: int, steps: int, gate: int, guided: bool,
                    intervals: tuple[int, int, int] = V1_INTERVALS) -> dict[str, Any]:
    """eval/macs.py's count for the timed denoiser's architecture (a weightless copy on the meta device)."""
    denoiser = pipe.denoiser
    with torch.device("meta"):
        architecture = type(denoiser).from_config(denoiser.config).eval()
    counter = StepCounter(architecture, resolution, guided, pipe.vae_scale_factor)
    baseline, tgate = counter.run_macs(steps, schedule_of(gate, intervals))
    return {"macs_baseline": baseline, "macs_tgate": tgate, "macs_speedup": baseline / tgate}


def call_settings(stock: Any, prompt_inputs: dict[str, Any], steps: int, resolution: int,
                  guidance: float) -> dict[str, Any]:
    """The keyword arguments every timed call gets (the stock pipeline's names)."""
    settings = dict(prompt_inputs, num_inference_steps=steps, guidance_scale=guidance, height=resolution,
                    width=resolution)
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
    """One timed variant: the TGATE pipeline's keyword arguments (None: the stock pipeline) and the schedule
    eval/macs.py counts its MACs with."""

    label: str
    call: dict[str, Any] | None
    schedule: TgateSchedule


def variant_table(args: argparse.Namespace, steps: int, gate: int, intervals: tuple[int, int, int],
                  deepcache_ok: bool = True) -> dict[str, Variant]:
    """The variants of one run, in timing order: stock, TGATE at the given setting (v1, or V2 with
    ``--sp-interval ...``), TGATE v1 at the same gate when that setting is V2, the hooks with no step gated
    (``--overhead``), and with ``--deepcache-interval N > 1`` DeepCache alone and DeepCache + TGATE v1 (the
    official ``SD_DeepCache.py`` combination: cross-attention gated, self-attention computed)."""
    v1 = tuple(intervals[:2]) == (1, 1)
    v2 = dict(zip(("sp_interval", "fi_interval", "warm_up"), intervals))
    short = "" if v1 else ", sp {}/fi {}/wu {}".format(*intervals)
    variants = {
        "baseline": Variant("stock", None, TgateSchedule(None)),
        "tgate": Variant(f"TGATE{'' if v1 else '-V2'} (gate {gate}{short})", dict(gate_step=gate, **v2),
                         schedule_of(gate, intervals)),
    }
    if not v1:
        variants["tgate_v1"] = Variant(f"TGATE v1 (gate {gate})", dict(gate_step=gate), schedule_of(gate))
    if args.overhead and (gate < steps or not v1):  # V2 caches self-attention even where no step is gated
        variants["no_gate"] = Variant(f"TGATE, gate {steps} (no step gated)", dict(gate_step=steps),
                                      schedule_of(steps))
    interval, branch = args.deepcache_interval, args.deepcache_branch
    if interval is not None and interval > 1 and deepcache_ok:
        deepcache = dict(deepcache_interval=interval, deepcache_branch=branch)
        variants["deepcache"] = Variant(f"DeepCache (interval {interval}, branch {branch})", deepcache,
                                        TgateSchedule(None, **deepcache))
        variants["deepcache_tgate"] = Variant(f"DeepCache + TGATE (gate {gate})", dict(gate_step=gate, **deepcache),
                                              TgateSchedule(gate, **deepcache))
    return variants


def variant_call(variant: Variant, pipe: Any, stock: Any, settings: dict[str, Any], seed: int,
                 **extra) -> Callable[[], Any]:
    if variant.call is None:
        return seeded(stock, settings, seed, **extra)
    return seeded(pipe, settings, seed, **variant.call, **extra)


def variant_macs(pipe: Any, resolution: int, steps: int, guided: bool, variants: dict[str, Variant]) -> dict[str, int]:
    """eval/macs.py's MACs of a whole run of each variant (its StepCounter on a weightless copy of the denoiser)."""
    denoiser = pipe.denoiser
    with torch.device("meta"):
        architecture = type(denoiser).from_config(denoiser.config).eval()
    counter = StepCounter(architecture, resolution, guided, pipe.vae_scale_factor)
    return {name: sum(counter.step_macs(variant.schedule, steps)) for name, variant in variants.items()}


# --- Peak memory --------------------------------------------------------------------------------------------


def process_memory() -> dict[str, int]:
    """This process's resident memory now (VmRSS) and at its peak (VmHWM), in bytes, from /proc/self/status."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) * 1024
    return values


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current resident set (Linux: ``5`` into /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_probe(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: build the pipeline, run one variant once at one batch size, and report the resident
    memory after building and the peak during the run (the child side of ``--batch-sizes`` on the CPU)."""
    spec = get_model(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    built = benchmarked_pipeline(spec, args.weights, args.checkpoint, args.device_resolved, args.dtype_resolved)
    pipe, steps, gate, resolution = built.pipe, *run_settings(args, spec, built.pipe)
    stock = stock_pipeline(pipe)
    for each in (pipe, stock):
        each.set_progress_bar_config(disable=True)
    settings = call_settings(stock, built.prompt_inputs, steps, resolution, spec.guidance_scale)
    variant = variant_table(args, steps, gate, tuple(args.intervals))[args.memory_probe]
    gc.collect()
    before = process_memory()
    was_reset = reset_peak_rss()
    with torch.no_grad():
        variant_call(variant, pipe, stock, settings, args.seed, num_images_per_prompt=args.memory_batch)()
    after = process_memory()
    return {"variant": args.memory_probe, "batch": args.memory_batch, "rss_after_build_bytes": before.get("VmRSS"),
            "peak_rss_bytes": after.get("VmHWM"), "peak_reset_after_build": was_reset,
            "peak_above_build_bytes": (after["VmHWM"] - before["VmRSS"]) if was_reset and after and before else None}


MEMORY_PROBE_TAG = "MEMORY_PROBE "


def child_argv(args: argparse.Namespace) -> list[str]:
    """The command line of this run without the flags a memory probe must not repeat."""
    argv: list[str] = []
    skipping = False
    for item in args.argv:
        name = item.split("=", 1)[0]
        if skipping and not item.startswith("--"):
            continue  # a value of the flag dropped
        skipping = False
        if name in ("--json", "--batch-sizes", "--compile-mode", "--compile-backend"):
            skipping = "=" not in item
            continue
        if name == "--compile":
            continue
        argv.append(item)
    return argv


def cpu_peak_memory(args: argparse.Namespace, names: Sequence[str], progress: bool) -> dict[str, dict[str, Any]]:
    """Each variant at each of ``--batch-sizes``, each in a fresh Python process (eager): its peak resident
    memory, and the peak above the resident memory once the pipeline is built."""
    results: dict[str, dict[str, Any]] = {name: {} for name in names}
    script = str(Path(__file__).resolve())
    jobs = [(batch, name) for batch in args.batch_sizes for name in names]
    for batch, name in tqdm(jobs, desc="memory", unit="process", file=sys.stderr, disable=not progress):
        command = [sys.executable, script, *child_argv(args), "--memory-probe", name, "--memory-batch", str(batch)]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith(MEMORY_PROBE_TAG)]
        if done.returncode or not lines:
            raise ValueError(f"the memory probe of {name} at batch {batch} failed: {done.stderr.strip()[-2000:]}")
        results[name][str(batch)] = json.loads(lines[-1][len(MEMORY_PROBE_TAG):])
    return results


def cuda_peak_memory(args: argparse.Namespace, variants: dict[str, Callable[..., Any]],
                     device: torch.device) -> dict[str, dict[str, Any]]:
    """Each variant at each of ``--batch-sizes`` on CUDA: ``torch.cuda.max_memory_allocated`` over one run (the
    peak reset before it), and the peak above what was allocated before the run (weights)."""
    results: dict[str, dict[str, Any]] = {name: {} for name in variants}
    for batch in args.batch_sizes:
        for name, make in variants.items():
            gc.collect()
            torch.cuda.empty_cache()
            synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            make(num_images_per_prompt=batch)()
            synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            results[name][str(batch)] = {"variant": name, "batch": batch, "allocated_before_bytes": before,
                                         "peak_allocated_bytes": peak, "peak_above_build_bytes": peak - before}
    return results


# --- The run ------------------------------------------------------------------------------------------------


def run_settings(args: argparse.Namespace, spec: ModelSpec, pipe: Any) -> tuple[int, int, int]:
    steps = spec.steps if args.steps is None else args.steps
    gate = spec.gate_step if args.gate is None else args.gate
    resolution = args.resolution or pipe.native_resolution
    multiple = latent_multiple(pipe.denoiser)
    if resolution % multiple:
        raise ValueError(f"--resolution must be a multiple of {multiple} pixels for {spec.title}, got {resolution}")
    return steps, gate, resolution


def compile_denoiser(args: argparse.Namespace, spec: ModelSpec, pipes: Sequence[Any]) -> Any:
    """torch.compile the denoiser once and give the compiled module to every pipeline (stock and TGATE alike)."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)  # a graph per step kind
    denoiser = getattr(pipes[0], spec.denoiser)
    compiled = torch.compile(denoiser, mode=args.compile_mode, backend=args.compile_backend)
    for pipe in pipes:
        setattr(pipe, spec.denoiser, compiled)
    return compiled


def run(args: argparse.Namespace, progress: bool = True) -> dict[str, Any]:
    """Build the pipeline, time the variants and return the JSON record (see ``JSON_KEYS``)."""
    spec = get_model(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    built = benchmarked_pipeline(spec, args.weights, args.checkpoint, args.device_resolved, args.dtype_resolved)
    pipe = built.pipe
    steps, gate, resolution = run_settings(args, spec, pipe)
    intervals = tuple(args.intervals)
    v1 = intervals[:2] == (1, 1)
    guided = pipe.uses_guidance(spec.guidance_scale)
    stock = stock_pipeline(pipe)
    for each in (pipe, stock):
        each.set_progress_bar_config(disable=True)
    if args.deepcache_interval is not None and args.deepcache_interval > 1 and not hasattr(pipe, "unet"):
        raise ValueError(f"--deepcache-interval: DeepCache caches a UNet's deep blocks; {spec.title} has none")

    settings = call_settings(stock, built.prompt_inputs, steps, resolution, spec.guidance_scale)
    v2 = dict(zip(("sp_interval", "fi_interval", "warm_up"), intervals))
    table = variant_table(args, steps, gate, intervals)
    macs = variant_macs(pipe, resolution, steps, guided, table)  # before compiling: from the eager architecture
    memory: dict[str, dict[str, Any]] | None = None
    if args.batch_sizes and args.device_resolved.type == "cpu":  # fresh processes, before this one grows
        memory = cpu_peak_memory(args, list(table), progress)
    if args.compile:
        compile_denoiser(args, spec, [pipe, stock])
    clock = LoopClock(args.device_resolved)
    for each in (pipe, stock):
        clock.instrument(each)
    variants = {name: variant_call(variant, pipe, stock, settings, args.seed) for name, variant in table.items()}
    official = None
    if args.official and not args.compile:
        official = official_variant(pipe, settings, args.seed, gate, guided, intervals)
    if official is not None:
        variants["official"] = official

    load_before = load_average()
    timings = time_interleaved(variants, args.repeats, args.warmup, args.device_resolved, progress, clock)
    if args.batch_sizes and args.device_resolved.type == "cuda":
        memory = cuda_peak_memory(args, {name: (lambda variant=variant, **extra: variant_call(
            variant, pipe, stock, settings, args.seed, **extra)) for name, variant in table.items()},
            args.device_resolved)
    record: dict[str, Any] = {
        "model": spec.key,
        "title": spec.title,
        "device": device_name(args.device_resolved),
        "torch_device": str(args.device_resolved),
        "steps": steps,
        "gate": gate,
        **v2,
        "resolution": resolution,
        "baseline_s": timings["baseline"].median,
        "tgate_s": timings["tgate"].median,
        "speedup": timings["baseline"].median / timings["tgate"].median,
        "weights": args.weights,
        "weights_note": WEIGHT_NOTES[args.weights],
        "tiny": args.weights == "tiny",  # the flags eval/table.py labels a cell with
        "random_weights": args.weights == "random",
        "setup_notes": built.notes,
        "checkpoint": (args.checkpoint or spec.checkpoint) if args.weights == "checkpoint" else None,
        "dtype": str(args.dtype_resolved).removeprefix("torch."),
        "torch_threads": torch.get_num_threads() if args.device_resolved.type == "cpu" else None,
        "guidance_scale": spec.guidance_scale,
        "guided": guided,
        "seed": args.seed,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timings": {name: timing.summary() for name, timing in timings.items()},
        "macs_baseline": macs["baseline"],
        "macs_tgate": macs["tgate"],
        "macs_speedup": macs["baseline"] / macs["tgate"],
        "compile": {"mode": args.compile_mode, "backend": args.compile_backend} if args.compile else None,
        "deepcache_interval": args.deepcache_interval,
        "deepcache_branch": args.deepcache_branch,
        "variants": variant_records(table, timings, macs),
        "batch_sizes": args.batch_sizes,
        "peak_memory": memory,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "versions": {name: importlib.import_module(name).__version__ for name in ("torch", "diffusers")},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # The hooks' cost alone: the TGATE pipeline with no step gated, against stock.
    no_gate = timings["tgate"] if gate >= steps and v1 else timings.get("no_gate")
    record["overhead_pct"] = 100 * (no_gate.median / timings["baseline"].median - 1) if no_gate else None
    if "official" in timings:
        record["official_tgate_s"] = timings["official"].median
        record["official_speedup"] = timings["baseline"].median / timings["official"].median
    record["official_tgate"] = ("timed" if official else "not requested" if not args.official
                                else "not timed with --compile" if args.compile else "not installed")
    return record


def variant_records(table: dict[str, Variant], timings: dict[str, Timing], macs: dict[str, int]) -> dict[str, Any]:
    """Per variant: seconds per image, the loop's seconds, their speedups over stock and the speedup MACs
    predict for the loop (the denoiser's work only), with measured / predicted."""
    stock = timings["baseline"]
    records = {}
    for name, variant in table.items():
        timing = timings[name]
        entry = {"label": variant.label, "call": variant.call, "median_s": timing.median,
                 "speedup": stock.median / timing.median, "loop_median_s": timing.loop_median,
                 "loop_speedup": None, "macs": macs[name], "macs_speedup": macs["baseline"] / macs[name],
                 "loop_vs_macs": None, "peak_memory_bytes": timing.peak_memory_bytes}
        if timing.loop_median and stock.loop_median:
            entry["loop_speedup"] = stock.loop_median / timing.loop_median
            entry["loop_vs_macs"] = entry["loop_speedup"] / entry["macs_speedup"]
        records[name] = entry
    return records


# --- Command line ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Seconds per image of the stock pipeline and of TGATE on the same inputs and seed, with the "
        "speedup, its spread over repeats and the speedup MACs predict (eval/macs.py). Model loading is not "
        "timed; CUDA is synchronised around every run.",
    )
    parser.add_argument("--model", default="sd15", metavar="NAME",
                        help=f"registry model: {', '.join(MODELS)} (default: sd15)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--random-weights", action="store_true",
                         help="no download: the full real architecture built from common/model_configs with random "
                         "weights (latency does not depend on weight values; the images are noise)")
    weights.add_argument("--tiny", action="store_true",
                         help="tiny random components (the tests'), for smoke runs: not the real architecture")
    weights.add_argument("--checkpoint", metavar="HUB_ID_OR_FOLDER",
                         help="weights to load (default: the model's checkpoint, from the Hugging Face cache)")
    parser.add_argument("--gate", type=int, metavar="N",
                        help="gate step: steps run stock before cross-attention is cached and guidance dropped; "
                        ">= --steps gates nothing and measures the hooks' overhead (default: the model's paper setting)")
    parser.add_argument("--sp-interval", type=int, metavar="N", help="TGATE-V2: before the gate, self-attention is "
                        "computed and cached every N steps after the warm-up and returns its cache in between "
                        "(default: the registry model's: 1 = v1, every step; 3 for pixart_sigma)")
    parser.add_argument("--fi-interval", type=int, metavar="N", help="TGATE-V2: after the gate, self-attention is "
                        "computed and cached every N steps (default: the registry model's, 1)")
    parser.add_argument("--warm-up", type=int, metavar="N", help="TGATE-V2: the first N steps compute "
                        "self-attention without caching it (default: the registry model's: 0; 2 for pixart_sigma)")
    parser.add_argument("--steps", type=int, metavar="N", help="sampling steps (default: the model's paper setting)")
    parser.add_argument("--resolution", type=int, metavar="PIXELS",
                        help="image side in pixels (default: the model's native size, e.g. 512 for SD-1.5, "
                        "1024 for SDXL; with --tiny the tiny model's)")
    parser.add_argument("--repeats", type=int, default=3, metavar="K",
                        help="timed runs of each variant, interleaved (default: 3); the median is reported")
    parser.add_argument("--warmup", type=int, default=1, metavar="W",
                        help="untimed runs of each variant first (default: 1)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of the initial noise (default: the model's)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="weights dtype; auto (default) = float16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default="auto",
                        help="torch device: cuda, cuda:1, cpu; auto (default) = cuda if available")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: torch's own choice, one per core)")
    parser.add_argument("--overhead", action="store_true",
                        help="also time the TGATE pipeline with its gate at the last step (hooks on, nothing "
                        "gated) and report its overhead over stock in percent")
    parser.add_argument("--deepcache-interval", type=int, metavar="N",
                        help="also time DeepCache (UNet models): the UNet runs in full every N steps, else only its "
                        "shallow branch; and DeepCache + TGATE v1 at the same gate (N > 1; default: not timed)")
    parser.add_argument("--deepcache-branch", type=int, default=0, metavar="B",
                        help="DeepCache's shallow branch (cache_branch_id, default 0)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", metavar="B",
                        help="also measure each variant's peak memory at these images per prompt (e.g. 1 4 8): on "
                        "CUDA torch.cuda.max_memory_allocated of one run, on the CPU the peak resident memory "
                        "(VmHWM) of a fresh process per variant and size, eager (default: not measured)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the denoiser, stock and TGATE alike (one compiled module shared); "
                        "warm-up runs (>= 1) compile every variant's graphs and are not timed")
    parser.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile mode (default: default; reduce-overhead uses CUDA graphs, CUDA only)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (default: inductor; eager for quick checks of the code path)")
    parser.add_argument("--memory-probe", metavar="VARIANT", help=argparse.SUPPRESS)
    parser.add_argument("--memory-batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--no-official", dest="official", action="store_false",
                        help="do not time the official tgate package even when it is installed")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the record as JSON: " + ", ".join(JSON_KEYS) + " and more (every run's "
                        "seconds, MACs, the weights used, device, dtype, load average)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        spec = get_model(args.model)
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        if args.gate is not None:
            check_gate_flag(args.gate)
        args.intervals = [getattr(spec, name) if getattr(args, name) is None else getattr(args, name)
                          for name, _ in V2_FLAGS]
        for (name, minimum), value in zip(V2_FLAGS, args.intervals):
            check_int("--" + name.replace("_", "-"), value, minimum)
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        if args.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
        if args.deepcache_interval is not None:
            check_int("--deepcache-interval", args.deepcache_interval, 1)
        check_int("--deepcache-branch", args.deepcache_branch, 0)
        for batch in args.batch_sizes or ():
            check_int("--batch-sizes", batch, 1)
        if args.compile and args.warmup < 1:
            raise ValueError("--compile needs --warmup >= 1: the warm-up runs compile each variant's graphs")
        if args.compile_mode == "reduce-overhead" and args.device == "cpu":
            raise ValueError("--compile-mode reduce-overhead uses CUDA graphs: CUDA only")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.resolution is not None and (args.resolution < 8 or args.resolution % 8):
            raise ValueError(f"--resolution must be a positive multiple of 8 pixels, got {args.resolution}")
        args.device_resolved, args.dtype_resolved = resolve_device_and_dtype(args.device, args.dtype)
    except ValueError as error:
        parser.error(str(error))
    args.weights = "random" if args.random_weights else "tiny" if args.tiny else "checkpoint"
    args.seed = spec.seed if args.seed is None else args.seed
    return args


def report(record: dict[str, Any]) -> str:
    timings = record["timings"]
    intervals = (record["sp_interval"], record["fi_interval"], record["warm_up"])
    v1 = intervals[:2] == (1, 1)
    v2 = "" if v1 else f", {format_intervals(intervals)}"
    short = "" if v1 else ", sp {}/fi {}/wu {}".format(*intervals)
    labels = {"baseline": "stock", "tgate": f"TGATE (gate {record['gate']}{short})",
              "no_gate": f"TGATE, gate {record['steps']} (no step gated)", "official": "official tgate package"}
    labels.update({name: entry["label"] for name, entry in (record.get("variants") or {}).items()})
    device = record["device"] + (f", torch threads: {record['torch_threads']}" if record["torch_threads"] else "")
    lines = [
        f"{record['title']} | {record['weights_note']}",
        f"{record['torch_device']}: {device} | {record['dtype']} | {record['resolution']} px, {record['steps']} steps, "
        f"gate {record['gate']}{v2}, guidance {record['guidance_scale']}, seed {record['seed']}",
        *(f"  note: {note}" for note in record["setup_notes"]),
        f"{record['repeats']} timed runs of each after {record['warmup']} warm-up, interleaved; seconds per image:",
        f"  {'':<38}{'median':>9}{'min':>9}{'max':>9}",
        *(f"  {labels[name]:<38}{t['median_s']:>9.3f}{t['min_s']:>9.3f}{t['max_s']:>9.3f}" for name, t in timings.items()),
        f"speedup {record['speedup']:.3f}x; MACs predict {record['macs_speedup']:.3f}x for the denoiser alone "
        "(text encoding and VAE decode are not gated)",
    ]
    lines += variant_report(record)
    if record["overhead_pct"] is not None:
        lines.append(f"overhead of the TGATE pipeline with no step gated, over stock: {record['overhead_pct']:+.2f}%")
    if "official_speedup" in record:
        lines.append(f"official tgate package: speedup {record['official_speedup']:.3f}x")
    else:
        lines.append(f"official tgate package: {record['official_tgate']}")
    cpus = f" on {os.cpu_count()} CPUs" if record["torch_device"] == "cpu" else ""
    lines.append(f"load average before / after: {record['load_average_before']} / {record['load_average_after']}{cpus}")
    if record["weights"] != "checkpoint":
        lines.append(record["weights_note"])
    return "\n".join(lines)


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def variant_report(record: dict[str, Any]) -> list[str]:
    """The per-variant table: seconds per image, the loop alone, its speedup beside MACs', peak memory."""
    variants = record.get("variants") or {}
    if not variants:
        return []
    compiled = record.get("compile")
    lines = ["per variant" + (f" (torch.compile, {compiled['backend']}, mode {compiled['mode']})" if compiled else
                              " (eager)") + ": s/image, loop = the denoising loop alone (no text encoding, no VAE "
             "decode), its speedup over stock, the MACs-predicted speedup, measured/predicted"
             + (", peak MiB allocated (CUDA, batch 1)" if record["torch_device"].startswith("cuda") else ""),
             f"  {'':<38}{'s/img':>8}{'loop s':>9}{'loop x':>8}{'MACs x':>8}{'ratio':>7}"
             + ("  peak MiB" if record["torch_device"].startswith("cuda") else "")]
    for entry in variants.values():
        loop = "-" if entry["loop_median_s"] is None else f"{entry['loop_median_s']:.3f}"
        speed = "-" if entry["loop_speedup"] is None else f"{entry['loop_speedup']:.3f}"
        ratio = "-" if entry["loop_vs_macs"] is None else f"{entry['loop_vs_macs']:.3f}"
        peak = f"{mib(entry['peak_memory_bytes']):>10}" if record["torch_device"].startswith("cuda") else ""
        lines.append(f"  {entry['label']:<38}{entry['median_s']:>8.3f}{loop:>9}{speed:>8}"
                     f"{entry['macs_speedup']:>8.3f}{ratio:>7}{peak}")
    memory = record.get("peak_memory")
    if memory:
        cpu = record["torch_device"] == "cpu"
        kind = ("peak resident memory of a fresh process per variant (VmHWM), MiB; in brackets the peak above the "
                "resident memory once the pipeline was built" if cpu else
                "peak allocated memory (torch.cuda.max_memory_allocated), MiB; in brackets above the weights")
        lines.append(f"peak memory by images per prompt: {kind}")
        batches = [str(batch) for batch in record["batch_sizes"]]
        lines.append(f"  {'':<38}" + "".join(f"{'batch ' + b:>18}" for b in batches))
        for name, per_batch in memory.items():
            cells = []
            for b in batches:
                probe = per_batch[b]
                peak = probe.get("peak_rss_bytes", probe.get("peak_allocated_bytes"))
                cells.append(f"{mib(peak) + ' (' + mib(probe['peak_above_build_bytes']) + ')':>18}")
            lines.append(f"  {variants[name]['label']:<38}" + "".join(cells))
    return lines


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def run_or_explain(args: argparse.Namespace) -> dict[str, Any] | None:
    """``run(args)``, or None after a short message on stderr for what the user can fix (missing weights, a
    resolution the model cannot take, a missing config)."""
    try:
        return run(args)
    except CheckpointNotFoundError as error:
        print(f"error: {error}\n  Or time the real architecture without weights: --random-weights.", file=sys.stderr)
    except (ValueError, OfficialPackageError) as error:
        print(f"error: {error}", file=sys.stderr)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_probe:  # the child process of --batch-sizes on the CPU
        print(MEMORY_PROBE_TAG + json.dumps(memory_probe(args)), flush=True)
        return 0
    record = run_or_explain(args)
    if record is None:
        return 2
    print(report(record))
    if args.json:
        write_json(args.json, record)
        print(f"record -> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
