"""TGATE beside diffusers' own caches on one model: same components, prompts and seeds, one interleaved run.

    python eval/compare.py                                   # the Wan toy, offline, a few minutes on 2 cores
    python eval/compare.py --json out.json --markdown out.md --plot out.png

Per variant: the denoiser MACs actually executed (counted while running, attention included), the denoising
loop's time (median of ``--repeats`` runs, the variants interleaved round-robin so that a busy machine slows
all alike) and its speedup over stock, the loop's peak memory, the decoded frames' PSNR and SSIM against stock
on the same seeds, and the toy's own measures (the digit classifier's accuracy, toy-FD on the first frame).
Variants that cannot run are listed with the reason (a cache that does not compose with the pipeline's
guidance, a stack that fails on the run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `common` and `eval`

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from eval.compare_report import markdown_table, pareto_front, plot  # noqa: E402
from eval.compare_variants import (  # noqa: E402
    Variant,
    calibrate_mag_ratios,
    diffusers_cache_variants,
    stock_variant,
    tgate_variants,
)
from eval.fidelity import psnr, ssim  # noqa: E402
from eval.run_meter import run_counted, run_timed  # noqa: E402
from eval.toy import digits  # noqa: E402
from eval.toy.evaluate import real_digits_row, requested_digits  # noqa: E402

MODELS = ("wan_toy",)  # models this comparison knows how to prompt and judge


@contextmanager
def variant_enabled(pipe, variant: Variant, steps: int):
    """The variant's cache on the transformer for the duration; the pipeline is stock again afterwards."""
    config = variant.cache_config(pipe, steps) if variant.cache_config else None
    if config is not None:
        pipe.transformer.enable_cache(config)
    try:
        yield
    finally:
        if config is not None:
            pipe.transformer.disable_cache()


class ToyRun:
    """One setting of the Wan toy: its prompts, labels and call; ``__call__`` runs the pipeline once."""

    def __init__(self, pipe, per_digit: int, steps: int, guidance: float, seed: int, text_length: int) -> None:
        from eval.wan_toy.model import CALL_DEFAULTS

        self.pipe, self.steps, self.guidance, self.seed = pipe, steps, guidance, seed
        self.prompts, self.labels = requested_digits(per_digit, list(digits.CAPTION_STYLES))
        self.call_defaults = {**CALL_DEFAULTS, "max_sequence_length": text_length}

    def __call__(self, prompts: list[str] | None = None, steps: int | None = None, seed: int | None = None,
                 **kwargs):
        return self.pipe(prompts or self.prompts, num_inference_steps=steps or self.steps,
                         guidance_scale=self.guidance,
                         generator=torch.Generator().manual_seed(self.seed if seed is None else seed),
                         output_type="np", **self.call_defaults, **kwargs).frames


def load_model(model: str, checkpoint: Path | None, tiny: bool = False):
    if model not in MODELS:
        raise ValueError(f"eval/compare.py runs on {', '.join(MODELS)}; got {model!r}")
    from common.models import get_model

    spec = get_model(model)
    pipe = spec.tiny_pipeline() if tiny else spec.load(str(checkpoint) if checkpoint else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_variants(run: ToyRun, variants: list[Variant], repeats: int) -> dict[str, dict]:
    """One counted run per variant (MACs, peak memory, the frames), then ``repeats`` interleaved timed rounds."""
    measured: dict[str, dict] = {}
    runnable = [v for v in variants if v.not_run is None and v.does_not_compose is None]
    for variant in tqdm(runnable, desc="counted runs (MACs, memory, frames)"):
        try:
            with variant_enabled(run.pipe, variant, run.steps):
                cost = run_counted(lambda **kw: run(**variant.call_kwargs, **kw), run.pipe.transformer)
        except Exception as error:  # noqa: BLE001 - one failing variant is a result; the others still run
            measured[variant.name] = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
            continue
        measured[variant.name] = {"status": "ran", "frames": cost.output, "macs": cost.denoiser_macs,
                                  "peak_bytes": cost.peak_bytes, "seconds": [], "cpu_seconds": [],
                                  "deterministic": True}
    timed = [v for v in runnable if measured[v.name]["status"] == "ran"]
    rounds = tqdm(total=repeats * len(timed), desc="timed runs (interleaved)")
    for repeat in range(repeats):
        order = timed[repeat % len(timed):] + timed[:repeat % len(timed)]  # rotate: no variant always first
        for variant in order:
            with variant_enabled(run.pipe, variant, run.steps):
                cost = run_timed(lambda **kw: run(**variant.call_kwargs, **kw), run.pipe.transformer)
            entry = measured[variant.name]
            entry["seconds"].append(cost.loop_seconds)
            entry["cpu_seconds"].append(cost.loop_cpu_seconds)
            entry["deterministic"] &= bool(np.array_equal(cost.output, entry["frames"]))
            rounds.update()
    rounds.close()
    return measured


def result_rows(run: ToyRun, variants: list[Variant], measured: dict[str, dict], clock: str = "cpu") -> list[dict]:
    """One row per variant; speedup from the median loop time on ``clock`` ("cpu" seconds or "wall" seconds)."""
    from eval.wan_toy.model import frame_measures, frames_as_images

    stock = measured["stock"]
    stock_frames = np.concatenate(list(frames_as_images(stock["frames"], f) for f in range(stock["frames"].shape[1])))
    timing = "cpu_seconds" if clock == "cpu" else "seconds"
    stock_seconds = statistics.median(stock[timing])
    reference = digits.features(digits.load_reference_digits()[0])
    count = len(run.prompts)
    rows = []
    for variant in variants:
        row = {"name": variant.name, "method": variant.method, "setting": variant.setting, "caveat": variant.caveat}
        entry = measured.get(variant.name)
        if entry is None:
            status = "does not compose" if variant.does_not_compose else "not run"
            rows.append({**row, "status": status, "reason": variant.does_not_compose or variant.not_run})
            continue
        if entry["status"] != "ran":
            rows.append({**row, "status": entry["status"], "reason": entry["reason"]})
            continue
        frames = entry["frames"]
        flat = np.concatenate(list(frames_as_images(frames, f) for f in range(frames.shape[1])))
        seconds = statistics.median(entry[timing])
        rows.append({
            **row, "status": "ran",
            "denoiser_macs": entry["macs"], "macs_per_image": entry["macs"] / count,
            "macs_fraction": entry["macs"] / stock["macs"],
            "loop_seconds": seconds, "speedup": stock_seconds / seconds,
            "loop_wall_seconds_all": entry["seconds"], "loop_cpu_seconds_all": entry["cpu_seconds"],
            "peak_mb": entry["peak_bytes"] / 2**20 if entry["peak_bytes"] is not None else None,
            "psnr": psnr(flat, stock_frames), "ssim": ssim(flat, stock_frames),
            **frame_measures(frames, run.labels, reference_features=reference),
            "deterministic": entry["deterministic"],
        })
    return rows


def all_variants(mag_ratios: list[float] | None, gate: int, steps: int) -> list[Variant]:
    return [stock_variant(), *tgate_variants(gate, steps, mag_ratios), *diffusers_cache_variants(mag_ratios)]


def select_variants(parser, names: list[str] | None, mag_ratios: list[float] | None, gate: int,
                    steps: int) -> list[Variant]:
    """Every variant, or stock (the reference, always) and those named."""
    if not names:
        return all_variants(mag_ratios, gate, steps)
    known = [v.name for v in all_variants([1.0], gate, steps)]  # the names MagCache's variants take once calibrated
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from: {', '.join(known)}")
    return [v for v in all_variants(mag_ratios, gate, steps) if v.name == "stock" or v.name in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="TGATE beside diffusers' caches (PyramidAttentionBroadcast, FasterCache, FirstBlockCache, "
        "MagCache, TaylorSeer) on one model, same prompts and seeds: executed MACs, loop speedup, peak memory, "
        "PSNR/SSIM to stock, the toy's accuracy and toy-FD. Default: the Wan toy, offline.")
    parser.add_argument("--model", choices=MODELS, default="wan_toy", help="registry model (default: wan_toy)")
    parser.add_argument("--checkpoint", type=Path, help="pipeline folder (default: the model's committed checkpoint)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--guidance", type=float, default=5.0, help="guidance scale (default 5, Wan's)")
    parser.add_argument("--gate", type=int, default=None,
                        help="TGATE's gate step (default: 40%% of the steps, the paper's 10 of 25: 8 of 20)")
    parser.add_argument("--per-digit", type=int, default=10,
                        help="prompts per digit, one batched call per run (default 10: 100 frames)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run's initial noise (default 0)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per variant (default 3)")
    parser.add_argument("--text-length", type=int, default=None,
                        help="max_sequence_length of the prompts (default: the toy's 16; Wan's pipeline uses 512)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                        help="loop time for the speedup: the process's CPU seconds (default: stable on a CPU shared "
                        "with other jobs, where wall time varies several-fold; with --threads 1 it is the work done) "
                        "or wall-clock seconds (an idle machine, a GPU)")
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="run only these variants (and stock), by name as in the table (default: all)")
    parser.add_argument("--tiny", action="store_true",
                        help="random weights of the model's architecture: a smoke run of the code (its numbers and "
                        "images mean nothing)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the markdown table here")
    parser.add_argument("--plot", type=Path, help="write the speedup-against-PSNR plot (PNG) here")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if min(args.steps, args.per_digit, args.repeats, args.threads) < 1 or args.guidance < 0:
        parser.error("--steps, --per-digit, --repeats and --threads must be >= 1, --guidance >= 0")
    if args.tiny and args.checkpoint:
        parser.error("--tiny builds random components; it takes no --checkpoint")
    gate = max(1, round(0.4 * args.steps)) if args.gate is None else args.gate
    if not 1 <= gate <= args.steps:
        parser.error(f"--gate must be between 1 and --steps ({args.steps}), got {gate}")
    select_variants(parser, args.variants, None, gate, args.steps)  # unknown names fail before anything runs
    from eval.wan_toy.model import TEXT_LENGTH

    torch.set_num_threads(args.threads)
    pipe = load_model(args.model, args.checkpoint, args.tiny)
    run = ToyRun(pipe, args.per_digit, args.steps, args.guidance, args.seed, args.text_length or TEXT_LENGTH)
    started, cpu_started, load_before = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    run(prompts=run.prompts[:2], steps=2)  # warm-up, untimed
    mag_ratios = None
    if not args.variants or any("MagCache" in name for name in args.variants):
        print("calibrating MagCache's ratios (diffusers' calibration mode, 1 prompt per digit, seed + 1)")
        mag_ratios = calibrate_mag_ratios(pipe, lambda: run(prompts=run.prompts[::args.per_digit], seed=args.seed + 1),
                                          args.steps)
    variants = select_variants(parser, args.variants, mag_ratios, gate, args.steps)
    measured = run_variants(run, variants, args.repeats)
    rows = result_rows(run, variants, measured, args.clock)
    results = {
        "title": f"{args.model}{' (tiny random weights: a smoke run)' if args.tiny else ''}: {args.steps} steps, "
                 f"gate {gate}, guidance {args.guidance}, {len(run.prompts)} prompts, seed {args.seed}",
        "model": args.model,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("json", "markdown", "plot")},
        "device": "cpu", "torch_threads": torch.get_num_threads(),
        "mag_ratios": mag_ratios,
        "conventions": {"macs": "denoiser only, FlopCounterMode FLOPs / 2 while running, attention included",
                        "loop_seconds": f"{args.clock} seconds from the first denoiser forward to the last step's "
                                        "end; median of interleaved repeats",
                        "peak_mb": "tensors alive during the loop above those at its start",
                        "fidelity": "PSNR (dB) and SSIM of decoded frames against stock, same seeds",
                        "toy": "digit classifier accuracy and toy-FD (classifier features, not Inception FID) "
                               "on frame 0"},
        "rows": rows,
        "real_digits": real_digits_row(len(run.prompts)),
        "seconds_total": round(time.perf_counter() - started, 1),
        "cpu_seconds_total": round(time.process_time() - cpu_started, 1),
        "load_average_before_and_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    results["pareto_front_psnr"] = pareto_front(rows, "psnr")
    table = markdown_table(results)
    print("\n" + table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(jsonable(results), indent=2) + "\n")
        print(f"-> {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(f"# {results['title']}\n\n{table}")
        print(f"-> {args.markdown}")
    if args.plot:
        plot(results, args.plot)
        print(f"-> {args.plot}")
    return 0


def jsonable(value):
    """Plain JSON: infinite PSNR (identical to stock) as the string "inf", numpy scalars as numbers, no arrays."""
    if isinstance(value, dict):
        return {key: jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


if __name__ == "__main__":
    sys.exit(main())
