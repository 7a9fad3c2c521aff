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
from common.schedule import check_int  # noqa: E402
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

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    def summary(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": min(self.runs), "max_s": max(self.runs), "runs_s": list(self.runs)}


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
                     progress: bool = True) -> dict[str, Timing]:
    """Run every variant ``warmup`` times untimed, then ``repeats`` timed rounds; round ``r`` starts with
    variant ``r mod n``: over the rounds each variant takes each place in the order in turn."""
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    bar = tqdm(total=(warmup + repeats) * len(names), desc="timing", unit="run", file=sys.stderr,
               disable=not progress)
    with bar:
        for round_index in range(warmup + repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                bar.set_postfix_str(("warm-up " if round_index < warmup else "") + name)
                elapsed = timed_run(variants[name], device)
                if round_index >= warmup:
                    seconds[name].append(elapsed)
                bar.update()
    return {name: Timing(tuple(runs)) for name, runs in seconds.items()}


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


def run(args: argparse.Namespace, progress: bool = True) -> dict[str, Any]:
    """Build the pipeline, time the variants and return the JSON record (see ``JSON_KEYS``)."""
    spec = get_model(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    built = benchmarked_pipeline(spec, args.weights, args.checkpoint, args.device_resolved, args.dtype_resolved)
    pipe = built.pipe
    steps = spec.steps if args.steps is None else args.steps
    gate = spec.gate_step if args.gate is None else args.gate
    intervals = tuple(args.intervals)
    v1 = intervals[:2] == (1, 1)
    resolution = args.resolution or pipe.native_resolution
    multiple = latent_multiple(pipe.denoiser)
    if resolution % multiple:
        raise ValueError(f"--resolution must be a multiple of {multiple} pixels for {spec.title}, got {resolution}")
    guided = pipe.uses_guidance(spec.guidance_scale)
    stock = stock_pipeline(pipe)
    for each in (pipe, stock):
        each.set_progress_bar_config(disable=True)

    settings = call_settings(stock, built.prompt_inputs, steps, resolution, spec.guidance_scale)
    v2 = dict(zip(("sp_interval", "fi_interval", "warm_up"), intervals))
    variants = {"baseline": seeded(stock, settings, args.seed),
                "tgate": seeded(pipe, settings, args.seed, gate_step=gate, **v2)}
    if args.overhead and (gate < steps or not v1):  # V2 caches self-attention even where no step is gated
        variants["no_gate"] = seeded(pipe, settings, args.seed, gate_step=steps)
    official = official_variant(pipe, settings, args.seed, gate, guided, intervals) if args.official else None
    if official is not None:
        variants["official"] = official

    load_before = load_average()
    timings = time_interleaved(variants, args.repeats, args.warmup, args.device_resolved, progress)
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
        **macs_prediction(pipe, resolution, steps, gate, guided, intervals),
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
    record["official_tgate"] = "timed" if official else "not requested" if not args.official else "not installed"
    return record


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
    parser.add_argument("--no-official", dest="official", action="store_false",
                        help="do not time the official tgate package even when it is installed")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the record as JSON: " + ", ".join(JSON_KEYS) + " and more (every run's "
                        "seconds, MACs, the weights used, device, dtype, load average)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    device = record["device"] + (f", torch threads: {record['torch_threads']}" if record["torch_threads"] else "")
    lines = [
        f"{record['title']} | {record['weights_note']}",
        f"{record['torch_device']}: {device} | {record['dtype']} | {record['resolution']} px, {record['steps']} steps, "
        f"gate {record['gate']}{v2}, guidance {record['guidance_scale']}, seed {record['seed']}",
        *(f"  note: {note}" for note in record["setup_notes"]),
        f"{record['repeats']} timed runs of each after {record['warmup']} warm-up, interleaved; seconds per image:",
        f"  {'':<34}{'median':>9}{'min':>9}{'max':>9}",
        *(f"  {labels[name]:<34}{t['median_s']:>9.3f}{t['min_s']:>9.3f}{t['max_s']:>9.3f}" for name, t in timings.items()),
        f"speedup {record['speedup']:.3f}x; MACs predict {record['macs_speedup']:.3f}x for the denoiser alone "
        "(text encoding and VAE decode are not gated)",
    ]
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
