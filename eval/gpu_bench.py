"""The GPU cost benchmark: SD-1.5 at 512 px and SDXL at 1024 px, float16, 25 steps, and Wan2.1-T2V-1.3B at 832x480,
17 frames, 50 steps (gate 20), eager and torch.compile'd.

Run ``bash eval/gpu_bench.sh`` (or ``python eval/gpu_bench.py``) from anywhere, on a machine with one CUDA GPU;
``--random-weights`` needs no download (the real architectures with random weights: latency does not depend on
weight values). Each model goes through ``eval/latency.py`` twice (eager, then with ``--compile``), each one
interleaved run of: stock, TGATE v1 (gate 10), TGATE-V2 (gate 10, sp 5 / fi 1 / warm-up 2: the official V2
README's SDXL setting, used for SD-1.5 too), DeepCache (interval 3, branch 0), DeepCache + TGATE v1 (gate 10)
and the hooks with no step gated. Per variant: median seconds per image, the denoising loop's seconds and
speedup beside the speedup MACs predict (eval/macs.py), peak allocated memory. One JSON (``--out``) and a
markdown table beside it (same name, ``.md``) headed with the card's name.

``--compare`` adds the comparison of eval/compare.py (stock, TGATE v1 and V2, DeepCache, diffusers' caches and
TGATE stacked on them: executed MACs, loop time and speedup, peak memory, PSNR/SSIM to stock) on
Wan2.1-T2V-1.3B and SDXL (``COMPARE``), written beside ``--out`` as ``<out>_compare_<model>.{json,md,png}``;
``--compare-only`` runs only that part. With ``--tiny`` it runs on the CPU at the tiny components' size (a
smoke test of the script).

Not yet run on a GPU (none was lent to this project's sessions). The eager passes are ~40 runs of 25 steps per
model; the compiled passes add one inductor compilation per kind of step of each variant (about a dozen graphs
per UNet), which on SDXL may alone take minutes: if the whole does not fit 8 minutes, run ``--no-compile`` and
the compiled pass separately (``--models sdxl --compile-only``), or lower ``--repeats``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

from common.schedule import TgateSchedule  # noqa: E402
from common.settings import add_schedule_args, schedule_argv, schedule_from_args  # noqa: E402
from eval.timing import add_timing_args, check_timing_args  # noqa: E402

# (registry model, its size flags): the paper's resolutions; Wan2.1-T2V-1.3B at its model card's 832x480 and 50
# steps but 17 frames, not 81 (5 latent frames, 7,800 tokens instead of 32,760: about 1/9 of a full video's MACs,
# so its ~40 runs of 50 steps fit the script's minutes on one GPU)
BENCHMARKS = (("sd15", ("--resolution", "512")), ("sdxl", ("--resolution", "1024")),
              ("wan", ("--height", "480", "--width", "832", "--frames", "17")))
WAN_STEPS, WAN_GATE = 50, 20  # the model card's steps; the registry's default gate (40% of the steps)
# eval/compare.py's settings (--compare). Wan2.1-T2V-1.3B at the model card's 832x480, 17 frames (as above), 25
# steps (gate 10, 40%), not 50: the comparison runs ~15 variants, each once counted (FlopCounterMode, slower)
# and --repeats times timed, plus MagCache's calibration run: at 50 steps that alone would exceed the script's
# minutes; bfloat16 (Wan's own dtype; float16 risks overflow in its attention). SDXL at the paper's 1024 px,
# 25 steps, gate 10, float16 (its VAE is upcast by the pipeline). Wall-clock loop times (an idle GPU).
COMPARE = (("wan", ("--height", "480", "--width", "832", "--frames", "17", "--steps", "25", "--gate", "10",
                    "--dtype", "bfloat16")),
           ("sdxl", ("--resolution", "1024", "--steps", "25", "--gate", "10", "--dtype", "float16")))
# gate 10 (the example scripts'), V2 at the official V2 README's SDXL setting, DeepCache's official defaults
DEFAULTS = TgateSchedule(10, sp_interval=5, fi_interval=1, warm_up=2, deepcache_interval=3, deepcache_branch=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="SD-1.5 (512 px) and SDXL (1024 px), float16, stock vs TGATE, seconds per image on one CUDA GPU, "
        "into one JSON. Fails at once without CUDA.",
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--random-weights", action="store_true",
                         help="no download: the real architectures from common/model_configs with random weights")
    weights.add_argument("--tiny", action="store_true",
                         help="tiny random components at their own small size: a smoke test of this script only")
    parser.add_argument("--models", nargs="+", choices=[model for model, _ in BENCHMARKS],
                        default=[model for model, _ in BENCHMARKS],
                        help="models to run (default: sd15 sdxl wan; wan: Wan2.1-T2V-1.3B, 832x480, 17 frames, "
                        f"{WAN_STEPS} steps, gate {WAN_GATE}, no DeepCache)")
    parser.add_argument("--steps", type=int, default=25, metavar="N", help="sampling steps (default: 25)")
    add_schedule_args(parser, defaults=DEFAULTS)
    passes = parser.add_mutually_exclusive_group()
    passes.add_argument("--no-compile", action="store_true", help="eager only")
    passes.add_argument("--compile-only", action="store_true", help="torch.compile'd only")
    add_timing_args(parser)
    compare = parser.add_mutually_exclusive_group()
    compare.add_argument("--compare", action="store_true",
                         help="also eval/compare.py on Wan2.1-T2V-1.3B (832x480, 17 frames, 25 steps) and SDXL "
                         "(1024 px, 25 steps): <out>_compare_<model>.{json,md,png}")
    compare.add_argument("--compare-only", action="store_true", help="only the comparison (--compare's part)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", metavar="B",
                        help="also each variant's peak memory at these images per prompt (default: batch 1 only, "
                        "from the timed runs)")
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda; cpu only with --tiny, to test "
                        "this script)")
    parser.add_argument("--out", type=Path, default=Path("gpu_bench.json"), metavar="PATH",
                        help="the JSON to write (default: gpu_bench.json in the current folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device.startswith("cpu") and not args.tiny:
        parser.error("this is the GPU benchmark: --device cpu only with --tiny (eval/latency.py times the CPU)")
    try:
        schedule = schedule_from_args(args, DEFAULTS)
        check_timing_args(args)
    except ValueError as error:
        parser.error(str(error))

    import torch  # loaded with common/ by the parser: no CUDA fails before any model is built

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); this benchmark needs "
              "one. On a CPU, use eval/latency.py.", file=sys.stderr)
        return 2

    from eval import latency

    started = time.perf_counter()
    records = []
    compiled_passes = [False] if args.no_compile else [True] if args.compile_only else [False, True]
    for model, size in BENCHMARKS:
        if model not in args.models or args.compare_only:
            continue
        steps, model_schedule = args.steps, schedule
        if model == "wan":  # its own steps and gate (--tiny: the flags'); DeepCache caches a UNet's blocks only
            if not args.tiny:
                steps, model_schedule = WAN_STEPS, replace(schedule, gate_step=WAN_GATE)
            model_schedule = replace(model_schedule, deepcache_interval=None, deepcache_branch=0)
        for compiled in compiled_passes:
            argv = ["--model", model, "--steps", str(steps), *schedule_argv(model_schedule), "--repeats",
                    str(args.repeats), "--warmup", str(max(args.warmup, 1) if compiled else args.warmup),
                    "--device", args.device, "--overhead", "--no-official"]
            if compiled:
                argv += ["--compile", "--compile-mode", args.compile_mode, "--compile-backend", args.compile_backend]
            if args.batch_sizes:
                argv += ["--batch-sizes", *map(str, args.batch_sizes)]
            if args.tiny:
                argv.append("--tiny")  # at the tiny model's own size: 1024 px would only time its VAE
            else:
                argv += list(size)
            if args.random_weights:
                argv.append("--random-weights")
            record = run_with_weights(latency, argv, fallback=not (args.random_weights or args.tiny))
            if record is None:
                return 2
            print(latency.report(record), flush=True)
            records.append(record)
            if compiled:
                torch._dynamo.reset()  # the next model compiles its own graphs
            gc.collect()  # free one model before the next is built
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    if args.compare or args.compare_only:
        for model, settings in COMPARE:
            if model in args.models and run_compare(args, model, settings, schedule.gate_step) != 0:
                return 2
    if not records:
        print(f"comparison only: {time.perf_counter() - started:.0f} s")
        return 0

    summary = {  # "rows": the layout eval/table.py reads
        "device": records[0]["device"],
        "weights": sorted({record["weights"] for record in records}),
        "weights_note": "; ".join(sorted({record["weights_note"] for record in records})),
        "wall_s": time.perf_counter() - started,
        "rows": records,
    }
    latency.write_json(args.out, summary)
    table = markdown_table(summary)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    print(f"{len(records)} runs in {summary['wall_s']:.0f} s -> {args.out}, {args.out.with_suffix('.md')}")
    return 0


def run_compare(args: argparse.Namespace, model: str, settings: Sequence[str], gate: int) -> int:
    """eval/compare.py on ``model``: ``settings`` on the GPU (cached checkpoint, else random weights unless
    --random-weights asks for them at once); with --tiny, its tiny components at the flags' steps and gate."""
    from eval import compare

    stem = args.out.with_suffix("")
    outputs = ["--json", f"{stem}_compare_{model}.json", "--markdown", f"{stem}_compare_{model}.md",
               "--plot", f"{stem}_compare_{model}.png"]
    common = ["--model", model, "--device", args.device, "--repeats", str(args.repeats), "--clock",
              "cpu" if args.device.startswith("cpu") else "wall", *outputs]
    if args.tiny:
        argv = [*common, "--tiny", "--steps", str(args.steps), "--gate", str(min(gate, args.steps))]
    else:
        argv = [*common, *settings]
        if args.random_weights or not checkpoint_cached(model):
            if not args.random_weights:
                print(f"{model}: no cached checkpoint: the comparison runs random weights on the real architecture",
                      file=sys.stderr)
            argv.append("--random-weights")
    print(f"python eval/compare.py {' '.join(argv)}", flush=True)
    return compare.main(argv)


def checkpoint_cached(model: str) -> bool:
    """Whether the registry checkpoint of ``model`` is in the Hugging Face cache (no download is tried)."""
    from huggingface_hub import try_to_load_from_cache

    from common.models import get_model

    found = try_to_load_from_cache(get_model(model).checkpoint, "model_index.json")
    return isinstance(found, str)


def run_with_weights(latency, argv: list[str], fallback: bool) -> dict | None:
    """latency.run on ``argv``; with ``fallback``, the model's checkpoint where it is cached, else random weights
    on the real architecture (said in the record's weights note)."""
    from common.models import CheckpointNotFoundError

    if not fallback:
        return latency.run_or_explain(latency.parse_args(argv))
    try:
        return latency.run(latency.parse_args(argv))
    except CheckpointNotFoundError:
        print("no cached checkpoint: random weights on the real architecture", file=sys.stderr)
        return latency.run_or_explain(latency.parse_args([*argv, "--random-weights"]))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def markdown_table(summary: dict) -> str:
    """One row per model, pass and variant: s/image, loop speedup beside MACs', their ratio, peak memory."""
    lines = [f"### TGATE cost on {summary['device']} ({summary['weights_note']})", "",
             "| model | pass | variant | s/image | speedup | loop s | loop speedup | MACs speedup | loop / MACs "
             "| peak MiB |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]

    def number(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    for record in summary["rows"]:
        compiled = record.get("compile")
        mode = f"compiled ({compiled['backend']}, {compiled['mode']})" if compiled else "eager"
        size = (f"{record['width']}x{record['height']}" + (f"x{record['frames']}" if record.get("frames") else "")
                if record.get("width", record["resolution"]) != record["resolution"] or record.get("frames")
                else f"{record['resolution']} px")
        title = f"{record['title']} {size}, {record['steps']} steps, {record['dtype']}"
        for entry in record["variants"].values():
            peak = entry["peak_memory_bytes"]
            lines.append(f"| {title} | {mode} | {entry['label']} | {number(entry['median_s'])} | "
                         f"{number(entry['speedup'])} | {number(entry['loop_median_s'])} | "
                         f"{number(entry['loop_speedup'])} | {number(entry['macs_speedup'])} | "
                         f"{number(entry['loop_vs_macs'])} | {'-' if peak is None else f'{peak / 2**20:.0f}'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
