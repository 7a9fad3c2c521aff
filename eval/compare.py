"""TGATE beside diffusers' own caches on one model: same components, prompts and seeds, one interleaved run.

    python eval/compare.py                                   # the Wan toy, offline, a few minutes on 2 cores
    python eval/compare.py --json out.json --markdown out.md --plot out.png
    python eval/compare.py --model sdxl --random-weights --resolution 512 --steps 10   # real architecture, noise
    python eval/compare.py --model wan --tiny                # tiny random Wan components: a smoke run
    python eval/compare.py --model wan --device cuda --height 480 --width 832 --frames 17 --clock wall

Models: the Wan toy (default; its toy measures too), Wan2.1-T2V-1.3B (``wan``: the toy's variant list, through
``enable_cache``) and SDXL (``sdxl``: a UNet without ``CacheMixin``: TGATE, TGATE-V2, DeepCache, TGATE +
DeepCache, PyramidAttentionBroadcast through ``apply_pyramid_attention_broadcast``, and why the other caches do
not apply: eval/compare_unet.py). Real models load the registry's cached checkpoint, or ``--random-weights``
(the real architecture, random weights: labelled so in every title) or ``--tiny`` (tiny components).

Per variant: the denoiser MACs actually executed (counted while running, attention included), the denoising
loop's time (median of ``--repeats`` runs, the variants interleaved round-robin so that a busy machine slows
all alike) and its speedup over stock, the loop's peak memory, the decoded frames' PSNR and SSIM against stock
on the same seeds, and the toy's own measures (the digit classifier's accuracy, toy-FD on the first frame).
Variants that cannot run are listed with the reason (a cache that does not compose with the pipeline's
guidance, a stack that fails on the run).
"""

from __future__ import annotations

import argparse
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

from common.cli import DTYPES  # noqa: E402
from eval.compare_report import pareto_front, write_outputs  # noqa: E402
from eval.compare_runs import WEIGHTS_NOTES, RealRun, load_real, size_of  # noqa: E402
from eval.compare_unet import TimestepProbe, applied, unet_variants  # noqa: E402
from eval.compare_variants import (  # noqa: E402
    Variant,
    calibrate_mag_ratios,
    diffusers_cache_variants,
    stock_variant,
    tgate_variants,
)
from eval.fidelity import psnr, ssim  # noqa: E402
from eval.run_meter import run_counted, run_timed  # noqa: E402
from eval.timing import add_clock_arg  # noqa: E402
from eval.toy import digits  # noqa: E402
from eval.toy.evaluate import real_digits_row, requested_digits  # noqa: E402

MODELS = ("wan_toy", "wan", "sdxl")  # models this comparison knows how to prompt and run
REAL_MODELS = ("wan", "sdxl")  # no toy measures; --random-weights and the size flags


@contextmanager
def variant_enabled(run, variant: Variant, steps: int):
    """The variant's cache on the denoiser for the duration (``enable_cache`` where the denoiser has
    ``CacheMixin``, else diffusers' ``apply_*`` hook function); the pipeline is stock again afterwards."""
    config = variant.cache_config(run.pipe, steps) if variant.cache_config else None
    if config is None:
        yield
    elif hasattr(run.denoiser, "enable_cache"):
        run.denoiser.enable_cache(config)
        try:
            yield
        finally:
            run.denoiser.disable_cache()
    else:
        with applied(run.denoiser, config, guard="gate_step" in variant.call_kwargs):
            yield


class ToyRun:
    """One setting of the Wan toy: its prompts, labels and call; ``__call__`` runs the pipeline once."""

    def __init__(self, pipe, per_digit: int, steps: int, guidance: float, seed: int, text_length: int) -> None:
        from eval.wan_toy.model import CALL_DEFAULTS

        self.pipe, self.steps, self.guidance, self.seed = pipe, steps, guidance, seed
        self.prompts, self.labels = requested_digits(per_digit, list(digits.CAPTION_STYLES))
        self.call_defaults = {**CALL_DEFAULTS, "max_sequence_length": text_length}
        self.denoiser, self.count, self._reference = pipe.transformer, len(self.prompts), None

    def as_images(self, frames) -> np.ndarray:
        from eval.wan_toy.model import frames_as_images

        return np.concatenate(list(frames_as_images(frames, f) for f in range(frames.shape[1])))

    def measures(self, frames) -> dict:
        """The toy's own: the digit classifier's accuracy and toy-FD on the first frame."""
        from eval.wan_toy.model import frame_measures

        if self._reference is None:
            self._reference = digits.features(digits.load_reference_digits()[0])
        return frame_measures(frames, self.labels, reference_features=self._reference)

    def __call__(self, prompts: list[str] | None = None, steps: int | None = None, seed: int | None = None,
                 **kwargs):
        return self.pipe(prompts or self.prompts, num_inference_steps=steps or self.steps,
                         guidance_scale=self.guidance,
                         generator=torch.Generator().manual_seed(self.seed if seed is None else seed),
                         output_type="np", **self.call_defaults, **kwargs).frames


def load_model(model: str, checkpoint: Path | None, tiny: bool = False):
    """The Wan toy's pipeline (real models: ``eval.compare_runs.load_real``)."""
    if model not in MODELS:
        raise ValueError(f"eval/compare.py runs on {', '.join(MODELS)}; got {model!r}")
    from common.models import get_model

    spec = get_model(model)
    pipe = spec.tiny_pipeline() if tiny else spec.load(str(checkpoint) if checkpoint else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_variants(run, variants: list[Variant], repeats: int) -> dict[str, dict]:
    """One counted run per variant (MACs, peak memory, the frames), then ``repeats`` interleaved timed rounds."""
    measured: dict[str, dict] = {}
    runnable = [v for v in variants if v.not_run is None and v.does_not_compose is None]
    for variant in tqdm(runnable, desc="counted runs (MACs, memory, frames)"):
        try:
            with variant_enabled(run, variant, run.steps):
                cost = run_counted(lambda **kw: run(**variant.call_kwargs, **kw), run.denoiser)
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
            with variant_enabled(run, variant, run.steps):
                cost = run_timed(lambda **kw: run(**variant.call_kwargs, **kw), run.denoiser)
            entry = measured[variant.name]
            entry["seconds"].append(cost.loop_seconds)
            entry["cpu_seconds"].append(cost.loop_cpu_seconds)
            entry["deterministic"] &= bool(np.array_equal(cost.output, entry["frames"]))
            rounds.update()
    rounds.close()
    return measured


def result_rows(run, variants: list[Variant], measured: dict[str, dict], clock: str = "cpu") -> list[dict]:
    """One row per variant; speedup from the median loop time on ``clock`` ("cpu" seconds or "wall" seconds).
    ``run``: a ToyRun or a RealRun (``as_images``, ``measures``: the toy's accuracy/toy-FD, none for real models)."""
    stock = measured["stock"]
    stock_frames = run.as_images(stock["frames"])
    timing = "cpu_seconds" if clock == "cpu" else "seconds"
    stock_seconds = statistics.median(stock[timing])
    count = run.count
    rows = []
    for variant in variants:
        row = {"name": variant.name, "method": variant.method, "setting": variant.setting, "caveat": variant.caveat}
        entry = measured.get(variant.name)
        if entry is None:
            status = "does not compose" if variant.does_not_compose else "not run"
            reason = variant.does_not_compose or variant.not_run
            if reason.startswith("not applicable: "):  # the method cannot be applied to this denoiser at all
                status, reason = "not applicable", reason.removeprefix("not applicable: ")
            rows.append({**row, "status": status, "reason": reason})
            continue
        if entry["status"] != "ran":
            rows.append({**row, "status": entry["status"], "reason": entry["reason"]})
            continue
        frames = entry["frames"]
        flat = run.as_images(frames)
        seconds = statistics.median(entry[timing])
        rows.append({
            **row, "status": "ran",
            "denoiser_macs": entry["macs"], "macs_per_image": entry["macs"] / count,
            "macs_fraction": entry["macs"] / stock["macs"],
            "loop_seconds": seconds, "speedup": stock_seconds / seconds,
            "loop_wall_seconds_all": entry["seconds"], "loop_cpu_seconds_all": entry["cpu_seconds"],
            "peak_mb": entry["peak_bytes"] / 2**20 if entry["peak_bytes"] is not None else None,
            "psnr": psnr(flat, stock_frames), "ssim": ssim(flat, stock_frames),
            **run.measures(frames),
            "deterministic": entry["deterministic"],
        })
    return rows


def all_variants(model: str, mag_ratios: list[float] | None, gate: int, steps: int,
                 timestep=None) -> list[Variant]:
    """Stock and the model's variants: the toy's list on Wan (``enable_cache``), the UNet list on SDXL
    (``timestep``: PAB's timestep callback, a ``TimestepProbe`` on the UNet)."""
    if model == "sdxl":
        return [stock_variant(), *unet_variants(gate, steps, timestep or (lambda: None))]
    return [stock_variant(), *tgate_variants(gate, steps, mag_ratios), *diffusers_cache_variants(mag_ratios)]


def select_variants(parser, names: list[str] | None, mag_ratios: list[float] | None, gate: int,
                    steps: int, model: str = "wan_toy", timestep=None) -> list[Variant]:
    """Every variant, or stock (the reference, always) and those named."""
    variants = all_variants(model, mag_ratios, gate, steps, timestep)
    if not names:
        return variants
    known = [v.name for v in all_variants(model, [1.0], gate, steps)]  # MagCache's names once calibrated
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from: {', '.join(known)}")
    return [v for v in variants if v.name == "stock" or v.name in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="TGATE beside DeepCache and diffusers' caches (PyramidAttentionBroadcast, FasterCache, "
        "FirstBlockCache, MagCache, TaylorSeer) on one model, same prompts and seeds: executed MACs, loop speedup, "
        "peak memory, PSNR/SSIM to stock (the Wan toy: also its accuracy and toy-FD). Default: the Wan toy, offline.")
    parser.add_argument("--model", choices=MODELS, default="wan_toy",
                        help="wan_toy (default), wan (Wan2.1-T2V-1.3B) or sdxl")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", type=Path, help="pipeline folder (default: the model's checkpoint: the "
                         "toy's committed one, a real model's from the Hugging Face cache)")
    weights.add_argument("--random-weights", action="store_true",
                         help="wan/sdxl: the real architecture with random weights, no download (the images are "
                         "noise; every title says 'random weights')")
    weights.add_argument("--tiny", action="store_true",
                         help="tiny random components of the model's family: a smoke run of the code (its numbers "
                         "and images mean nothing)")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the toy's 20, a real "
                        "model's registry steps: Wan 50, SDXL 25)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's; 5)")
    parser.add_argument("--gate", type=int, default=None,
                        help="TGATE's gate step (default: the model's at its steps (toy 8 of 20, Wan 20 of 50, SDXL "
                        "10 of 25), else 40%% of the steps)")
    parser.add_argument("--per-digit", type=int, default=10,
                        help="the toy: prompts per digit, one batched call per run (default 10: 100 frames)")
    parser.add_argument("--seed", type=int, default=None, help="seed of every run's initial noise (default: the "
                        "toy's 0, a real model's registry seed)")
    parser.add_argument("--prompt", help="wan/sdxl: the prompt (default: the registry's; random weights: random "
                        "prompt embeddings of the encoder's shape, where the text encoder is not built)")
    parser.add_argument("--images", type=int, default=1, help="wan/sdxl: images (videos) per call (default 1)")
    parser.add_argument("--height", type=int, help="wan: frame height in pixels (default: 480; --tiny: 16)")
    parser.add_argument("--width", type=int, help="wan: frame width in pixels (default: 832; --tiny: 16)")
    parser.add_argument("--frames", type=int, help="wan: frames, 1 + a multiple of 4 (default: 81; --tiny: 5)")
    parser.add_argument("--resolution", type=int, help="sdxl: image side in pixels (default 1024; --tiny: 32)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu; cuda for a GPU)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="weights' dtype (default auto: float16 on CUDA, float32 on the CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed runs per variant (default 3)")
    parser.add_argument("--text-length", type=int, default=None,
                        help="the toy: max_sequence_length of the prompts (default 16; Wan's pipeline uses 512)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    add_clock_arg(parser, default="cpu")  # the loop time the speedups come from
    parser.add_argument("--variants", nargs="+", metavar="NAME",
                        help="run only these variants (and stock), by name as in the table (default: all)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--markdown", type=Path, help="write the markdown table here")
    parser.add_argument("--plot", type=Path, help="write the speedup-against-PSNR plot (PNG) here")
    return parser


def resolve_settings(parser, args) -> tuple[int, float, int, int]:
    """(steps, guidance, seed, gate): the flags', else the model's (the toy: 20 steps, guidance 5, seed 0)."""
    from common.models import get_model

    spec = get_model(args.model)
    real = args.model in REAL_MODELS
    if not real and (args.random_weights or args.prompt or args.height or args.width or args.frames
                     or args.resolution):
        parser.error("--random-weights, --prompt and the size flags are for --model wan or sdxl")
    video = args.model == "wan"
    if real and (args.resolution if video else (args.height or args.width or args.frames)):
        parser.error("wan takes --height/--width/--frames, sdxl takes --resolution")
    steps = args.steps or (spec.steps if real else 20)
    guidance = spec.guidance_scale if args.guidance is None else args.guidance
    seed = args.seed if args.seed is not None else (spec.seed if real else 0)
    if min(steps, args.per_digit, args.repeats, args.threads, args.images) < 1 or guidance < 0:
        parser.error("--steps, --per-digit, --repeats, --threads and --images must be >= 1, --guidance >= 0")
    gate = args.gate or (spec.gate_step if steps == spec.steps else max(1, round(0.4 * steps)))
    if not 1 <= gate <= steps:
        parser.error(f"--gate must be between 1 and --steps ({steps}), got {gate}")
    return steps, guidance, seed, gate


def build_run(args, steps: int, guidance: float, seed: int, device, dtype):
    """(run, weights, notes): the toy's ToyRun, or a real model's RealRun."""
    if args.model not in REAL_MODELS:
        from eval.wan_toy.model import TEXT_LENGTH

        pipe = load_model(args.model, args.checkpoint, args.tiny)
        return ToyRun(pipe, args.per_digit, steps, guidance, seed, args.text_length or TEXT_LENGTH), "toy", []
    from common.models import get_model

    spec = get_model(args.model)
    weights = "random" if args.random_weights else "tiny" if args.tiny else "checkpoint"
    pipe, prompt_inputs, notes = load_real(args.model, weights, str(args.checkpoint) if args.checkpoint else None,
                                           device, dtype)
    if args.prompt:
        if "prompt" not in prompt_inputs:
            raise ValueError("--prompt needs the model's text encoder; with --random-weights it is not built for "
                             f"{spec.title} (random prompt embeddings instead)")
        prompt_inputs = {"prompt": args.prompt}
    call_kwargs = dict(spec.call_kwargs) if "prompt" in prompt_inputs else {}  # Wan's negative prompt
    size = size_of(spec, args, weights, video=args.model == "wan")
    return RealRun(pipe, prompt_inputs, size, steps, guidance, seed, args.images, call_kwargs), weights, notes


def main(argv: list[str] | None = None) -> int:
    from common.cli import resolve_device_and_dtype
    from common.models import CheckpointNotFoundError

    parser = build_parser()
    args = parser.parse_args(argv)
    steps, guidance, seed, gate = resolve_settings(parser, args)
    select_variants(parser, args.variants, None, gate, steps, args.model)  # unknown names fail before anything runs
    try:
        device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    try:
        run, weights, notes = build_run(args, steps, guidance, seed, device, dtype)
    except (CheckpointNotFoundError, ValueError) as error:
        print(f"error: {error}\n  Without weights: --random-weights (real architecture) or --tiny.", file=sys.stderr)
        return 2
    started, cpu_started, load_before = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    run(prompts=run.prompts[:2], steps=2)  # warm-up, untimed
    mag_ratios, probe = None, None
    if args.model != "sdxl" and (not args.variants or any("MagCache" in name for name in args.variants)):
        calibration = (lambda: run(prompts=run.prompts[::args.per_digit], seed=seed + 1)) if weights == "toy" else (
            lambda: run(seed=seed + 1))
        print("calibrating MagCache's ratios (diffusers' calibration mode, seed + 1)")
        mag_ratios = calibrate_mag_ratios(run.pipe, calibration, steps)
    if args.model == "sdxl":
        probe = TimestepProbe(run.denoiser)
    variants = select_variants(parser, args.variants, mag_ratios, gate, steps, args.model, probe)
    measured = run_variants(run, variants, args.repeats)
    if probe is not None:
        probe.remove()
    rows = result_rows(run, variants, measured, args.clock)
    results = {
        "title": run_title(args, run, weights, steps, gate, guidance, seed),
        "model": args.model,
        "weights": weights, "weights_note": WEIGHTS_NOTES.get(weights, "the toy's committed checkpoint"),
        "notes": notes,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("json", "markdown", "plot")},
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "torch_threads": torch.get_num_threads(),
        "mag_ratios": mag_ratios,
        "conventions": conventions(args.clock, weights == "toy", getattr(run, "video", True)),
        "rows": rows,
        "seconds_total": round(time.perf_counter() - started, 1),
        "cpu_seconds_total": round(time.process_time() - cpu_started, 1),
        "load_average_before_and_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if weights == "toy":
        results["real_digits"] = real_digits_row(len(run.prompts))
    results["pareto_front_psnr"] = pareto_front(rows, "psnr")
    write_outputs(args, results)
    return 0


def run_title(args, run, weights: str, steps: int, gate: int, guidance: float, seed: int) -> str:
    if weights == "toy":
        return (f"{args.model}{' (tiny random weights: a smoke run)' if args.tiny else ''}: {steps} steps, "
                f"gate {gate}, guidance {guidance}, {len(run.prompts)} prompts, seed {seed}")
    from common.models import get_model

    label = {"random": " (random weights: images are noise)", "tiny": " (tiny random weights: a smoke run)"}
    size = "x".join(str(run.size[k]) for k in ("width", "height", "num_frames") if k in run.size)
    return (f"{get_model(args.model).title}{label.get(weights, '')}: {size}, {steps} steps, gate {gate}, "
            f"guidance {guidance}, {run.count} {'video' if run.video else 'image'}(s), seed {seed}, {args.device}")


def conventions(clock: str, toy: bool, video: bool) -> dict:
    found = {"macs": "denoiser only, FlopCounterMode FLOPs / 2 while running, attention included",
             "loop_seconds": f"{clock} seconds from the first denoiser forward to the last step's end; median of "
                             "interleaved repeats",
             "peak_mb": "tensors alive during the loop above those at its start (CUDA: the allocator's peak)",
             "fidelity": f"PSNR (dB) and SSIM of decoded {'frames' if video else 'images'} against stock, same seeds"}
    if toy:
        found["toy"] = "digit classifier accuracy and toy-FD (classifier features, not Inception FID) on frame 0"
    return found


if __name__ == "__main__":
    sys.exit(main())
