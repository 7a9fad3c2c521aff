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

The parts (``python eval/latency.py`` is this command only): ``eval/latency_variants.py`` (the pipeline and the
variants, each a ``TgateSchedule``), ``eval/timing.py`` (clocks, interleaving, memory probes, shared with
``eval/gpu_bench.py``), ``eval/latency_memory.py`` (the CPU's fresh-process memory probe),
``eval/official_tgate.py`` (the official package's adapter), ``eval/latency_report.py`` (the screen report);
MACs from ``common/step_macs.py``, random weights from ``common/builders.py``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

import torch  # noqa: E402

from common.dit_architectures import is_dit  # noqa: E402
from common.cli import DTYPES, device_name, resolve_device_and_dtype  # noqa: E402
from common.models import MODELS, CheckpointNotFoundError, ModelSpec, get_model  # noqa: E402
from common.schedule import check_int  # noqa: E402
from common.settings import V2_FIELDS, add_schedule_args, model_schedule, schedule_from_args  # noqa: E402
from eval.latency_memory import MEMORY_PROBE_TAG, cpu_peak_memory, memory_probe  # noqa: E402
from eval.latency_report import report  # noqa: E402
from eval.latency_variants import (  # noqa: E402
    WEIGHT_NOTES, Variant, benchmarked_pipeline, call_settings, run_settings, stock_pipeline, variant_call,
    variant_macs, variant_table,
)
from eval.official_tgate import OFFICIAL_LOADERS, OfficialPackageError, official_variant  # noqa: E402
from eval.timing import (  # noqa: E402
    LoopClock, Timing, add_clock_arg, add_timing_args, check_timing_args, cuda_peak_memory, load_average,
    time_interleaved,
)

JSON_KEYS = ("model", "device", "steps", "gate", "sp_interval", "fi_interval", "warm_up", "resolution", "baseline_s",
             "tgate_s", "speedup")


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
    pipe, schedule = built.pipe, args.schedule
    steps, resolution, size = run_settings(args, spec, pipe)
    gate = schedule.gate_step
    guided = pipe.uses_guidance(spec.guidance_scale)
    stock = stock_pipeline(pipe)
    for each in (pipe, stock):
        each.set_progress_bar_config(disable=True)
    if schedule.uses_deepcache and not hasattr(pipe, "unet"):  # a checkpoint of a registry model without a UNet
        raise ValueError(f"--deepcache-interval: DeepCache caches a UNet's deep blocks; {spec.title} has none")

    settings = call_settings(stock, built.prompt_inputs, steps, size, spec.guidance_scale)
    table = variant_table(schedule, steps, args.overhead)
    macs = variant_macs(pipe, resolution, steps, guided, table, size)  # before compiling: from the eager architecture
    memory: dict[str, dict[str, Any]] | None = None
    if args.batch_sizes and args.device_resolved.type == "cpu":  # fresh processes, before this one grows
        memory = cpu_peak_memory(args, list(table), progress)
    if args.compile:
        compile_denoiser(args, spec, [pipe, stock])
    clock = LoopClock(args.device_resolved, args.clock)
    for each in (pipe, stock):
        clock.instrument(each)
    variants = {name: variant_call(variant, pipe, stock, settings, args.seed) for name, variant in table.items()}
    official = None
    covered = type(stock).__name__ in OFFICIAL_LOADERS  # the official package has SD, SDXL and PixArt only
    if args.official and not args.compile and covered:
        official = official_variant(pipe, settings, args.seed, table["tgate"].schedule, guided)
    if official is not None:
        variants["official"] = official

    load_before = load_average()
    timings = time_interleaved(variants, args.repeats, args.warmup, args.device_resolved, progress, clock,
                               args.clock)
    if args.batch_sizes and args.device_resolved.type == "cuda":
        memory = cuda_peak_memory(args.batch_sizes, {name: (lambda variant=variant, **extra: variant_call(
            variant, pipe, stock, settings, args.seed, **extra)) for name, variant in table.items()},
            args.device_resolved)
    record: dict[str, Any] = {
        "model": spec.key,
        "title": spec.title,
        "device": device_name(args.device_resolved),
        "torch_device": str(args.device_resolved),
        "steps": steps,
        "gate": gate,
        **{field: getattr(schedule, field) for field in V2_FIELDS},
        "resolution": resolution,
        "height": size["height"],
        "width": size["width"],
        "frames": size.get("num_frames"),  # None: an image model
        "macs_convention": "torch FlopCounterMode (attention included)" if macs_by_flop_counter(pipe)
        else "calflops (the paper's: scaled_dot_product_attention not counted)",
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
        "clock": args.clock,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "timings": {name: timing.summary() for name, timing in timings.items()},
        "macs_baseline": macs["baseline"],
        "macs_tgate": macs["tgate"],
        "macs_speedup": macs["baseline"] / macs["tgate"],
        "compile": {"mode": args.compile_mode, "backend": args.compile_backend} if args.compile else None,
        "deepcache_interval": schedule.deepcache_interval,
        "deepcache_branch": schedule.deepcache_branch,
        "variants": variant_records(table, timings, macs),
        "batch_sizes": args.batch_sizes,
        "peak_memory": memory,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "versions": {name: importlib.import_module(name).__version__ for name in ("torch", "diffusers")},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # The hooks' cost alone: the TGATE pipeline with no step gated, against stock.
    no_gate = timings["tgate"] if gate >= steps and schedule.is_v1 else timings.get("no_gate")
    record["overhead_pct"] = 100 * (no_gate.median / timings["baseline"].median - 1) if no_gate else None
    if "official" in timings:
        record["official_tgate_s"] = timings["official"].median
        record["official_speedup"] = timings["baseline"].median / timings["official"].median
    record["official_tgate"] = ("timed" if official else "not requested" if not args.official
                                else f"the official package has no {type(stock).__name__}" if not covered
                                else "not timed with --compile" if args.compile else "not installed")
    return record


def macs_by_flop_counter(pipe: Any) -> bool:
    """Whether this pipeline's MACs are torch's FlopCounterMode's (the DiTs, attention counted: step_macs)."""
    return is_dit(pipe.denoiser)


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
    add_schedule_args(parser, gate_help="; a gate >= --steps measures the hooks' overhead",
                      deepcache_help=": also times DeepCache alone and DeepCache + TGATE v1 at the same gate "
                      "(N > 1; default: not timed)")
    parser.add_argument("--steps", type=int, metavar="N", help="sampling steps (default: the model's paper setting)")
    parser.add_argument("--resolution", type=int, metavar="PIXELS",
                        help="image side in pixels (default: the model's native size, e.g. 512 for SD-1.5, "
                        "1024 for SDXL; with --tiny the tiny model's); for the DiT models (wan, wan22, ltx, sana, "
                        "hunyuandit) both --height and --width")
    parser.add_argument("--height", type=int, metavar="PIXELS",
                        help="DiT models only: the height (default: --resolution, else the model card's, e.g. 480 "
                        "for Wan2.1-1.3B)")
    parser.add_argument("--width", type=int, metavar="PIXELS",
                        help="DiT models only: the width (default: --resolution, else the model card's, e.g. 832 "
                        "for Wan2.1-1.3B)")
    parser.add_argument("--frames", type=int, metavar="N",
                        help="video models only (wan, wan22, ltx): frames (default: the model card's, 81 for Wan, "
                        "161 for LTX-Video; 1 + a multiple of 4 for Wan, of 8 for LTX-Video)")
    add_timing_args(parser)
    add_clock_arg(parser)
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
    parser.add_argument("--batch-sizes", type=int, nargs="+", metavar="B",
                        help="also measure each variant's peak memory at these images per prompt (e.g. 1 4 8): on "
                        "CUDA torch.cuda.max_memory_allocated of one run, on the CPU the peak resident memory "
                        "(VmHWM) of a fresh process per variant and size, eager (default: not measured)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the denoiser, stock and TGATE alike (one compiled module shared); "
                        "warm-up runs (>= 1) compile every variant's graphs and are not timed")
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
        args.schedule = schedule_from_args(args, model_schedule(spec), spec)
        check_timing_args(args)
        for batch in args.batch_sizes or ():
            check_int("--batch-sizes", batch, 1)
        if args.compile and args.warmup < 1:
            raise ValueError("--compile needs --warmup >= 1: the warm-up runs compile each variant's graphs")
        if args.compile_mode == "reduce-overhead" and args.device == "cpu":
            raise ValueError("--compile-mode reduce-overhead uses CUDA graphs: CUDA only")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        for flag, value in (("--resolution", args.resolution), ("--height", args.height), ("--width", args.width)):
            if value is not None and (value < 8 or value % 8):
                raise ValueError(f"{flag} must be a positive multiple of 8 pixels, got {value}")
        if args.frames is not None and args.frames < 1:
            raise ValueError(f"--frames must be >= 1, got {args.frames}")
        args.device_resolved, args.dtype_resolved = resolve_device_and_dtype(args.device, args.dtype)
        if args.clock == "cpu" and args.device_resolved.type != "cpu":
            raise ValueError(f"--clock cpu times the CPU's work; on {args.device_resolved.type} use --clock wall")
    except ValueError as error:
        parser.error(str(error))
    args.weights = "random" if args.random_weights else "tiny" if args.tiny else "checkpoint"
    args.seed = spec.seed if args.seed is None else args.seed
    return args


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
