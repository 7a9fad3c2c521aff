"""Zero-shot FID on MS-COCO val2014 (the paper's 10K-FID): `python eval/fid.py --help`.

Steps: a deterministic caption list (written to OUT/captions.json); one image per caption, resumable and
shared among `accelerate launch` processes; reference statistics of the matching COCO images (cached);
the Fréchet distance of Inception features; OUT/result.json. The two seams a new benchmark plugs into:
the caption source (eval/fid_data.py: captions and reference images) and the feature extractor
(eval/fid_features.py: features and the name of the distance).

Files: this command is over 400 lines because resuming a run across processes (run.json checks, shared
captions, per-process timing) is one piece with its flags; generation is in eval/fid_generate.py, the toy
benchmark's captions and features in eval/fid_toy.py.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import sys
import time
import uuid
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common` and `eval`

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from common.cli import DTYPES, device_name, resolve_device_and_dtype  # noqa: E402
from common.models import MODELS, TOY_MODEL, CheckpointNotFoundError, ModelSpec, get_model  # noqa: E402
from common.schedule import TgateSchedule  # noqa: E402
from common.settings import (  # noqa: E402
    V2_FIELDS, add_schedule_args, call_keywords, given, model_schedule, schedule_from_args, schedule_label,
    schedule_suffix,
)
from eval.fid_data import (  # noqa: E402
    CaptionRecord, CaptionSourceError, CocoCaptions, center_crop_resize, read_captions, write_captions,
    write_json_atomically,
)
from eval.fid_features import (  # noqa: E402
    FeatureWeightsError, InceptionFeatures, default_inception_weights_path, frechet_distance, load_statistics,
    resolve_inception_weights, save_statistics, statistics,
)
from eval.fid_generate import generate_images, generation_totals, image_path, missing_images  # noqa: E402
from eval.fid_toy import DigitFeatures, ToyDigitCaptions, classifier_weights  # noqa: E402

PAPER_N = 10_000
TINY_WARNING = "[--tiny] tiny random components, not the real model: the images are noise and the FID means nothing."
VERSIONED = ["torch", "diffusers", "transformers", "accelerate", "pytorch-fid", "pycocotools", "numpy", "scipy", "pillow"]


class RunMismatchError(RuntimeError):
    """OUT already holds the images of a run with other settings."""


class IncompleteImagesError(RuntimeError):
    """The generated images are missing or not of the expected size."""


def usable_cpus() -> int:
    """The CPUs this process may run on, as torch's DataLoader counts them for its worker warning."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_stats_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tgate" / "fid_stats"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Zero-shot FID on MS-COCO val2014 captions, as in the paper's table (10K images). "
        "Resumable: rerun the same command after a crash and only missing images are generated. "
        "Multi-GPU / multi-node: `accelerate launch eval/fid.py ...` or `torchrun --nproc_per_node N eval/fid.py "
        "...` (each process generates its share of the same images; --out must be on a filesystem every process "
        "sees; process 0 computes the FID).",
    )
    parser.add_argument("--model", choices=list(MODELS), default="sd15", help="model of the paper's table (default: sd15)")
    add_schedule_args(parser, gate_help="; the stock pipeline, run and labelled as --baseline")
    parser.add_argument("--baseline", action="store_true", help="the stock pipeline without TGATE (the paper's "
                        "baseline rows; with --deepcache-interval, DeepCache alone); cannot be combined with --gate")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the paper's for --model, e.g. 25)")
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale (default: the model's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the caption sample and of the per-image noise "
                        "(image i uses numpy SeedSequence([seed, i])); default 0")
    parser.add_argument("--n", "--num-images", dest="n", type=int, help=f"number of captions and images (default: {PAPER_N}; with --captions, "
                        "the whole list, or its first N). Under torchrun, write --num-images: torchrun reads --n "
                        "as one of its own options")
    parser.add_argument("--batch-size", type=int, default=8, help="images per pipeline call (default 8). The noise "
                        "of each image does not depend on it, but float rounding in the denoiser may: compare runs "
                        "at the same batch size (and device type, CPU thread count, software); the number of "
                        "processes does not change the images")
    parser.add_argument("--resolution", type=int, help="image size, also the evaluation size of the reference "
                        "images (centre crop, bicubic resize); default: the model's (512 for sd15; the tiny "
                        "pipeline's own size with --tiny)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="weights dtype; auto (default) = float16 on CUDA, float32 on CPU")
    parser.add_argument("--coco-root", type=Path, help="COCO in its standard layout: "
                        "DIR/annotations/captions_val2014.json and DIR/val2014/*.jpg (required, except for "
                        f"--model {TOY_MODEL}, whose captions and references are scikit-learn's 1,797 real digits "
                        "and whose distance is toy-FD on the digit classifier's features, with its accuracy)")
    parser.add_argument("--captions", type=Path, help="use this caption list instead of sampling one: the "
                        "captions.json an earlier run wrote, or a JSON list of {image_id, caption} objects")
    parser.add_argument("--out", type=Path, help="output folder: captions.json, images/, result.json "
                        "(default: results/fid/<model>_gate<G> (TGATE-V2: _gate<G>_sp<S>_fi<F>_wu<W>) or _baseline, "
                        "_tiny with --tiny)")
    parser.add_argument("--checkpoint", help="hub id or local diffusers folder of the weights (default: the "
                        "model's checkpoint)")
    parser.add_argument("--tiny", action="store_true", help="tiny random components built offline, for smoke "
                        "runs: the images are noise and the FID means nothing (the result says so)")
    parser.add_argument("--inception-weights", type=Path, help="pytorch-fid's Inception weights file "
                        f"(default: {default_inception_weights_path()}, downloaded there once if online)")
    parser.add_argument("--dims", type=int, choices=[64, 192, 768, 2048], default=2048,
                        help="Inception feature block (default 2048 = pool3, the standard FID; others are only "
                        "for quick checks and not comparable)")
    parser.add_argument("--stats-dir", type=Path, default=None, help="cache of reference statistics (.npz, "
                        f"keyed by images, size and features; default: {default_stats_dir()})")
    parser.add_argument("--feature-batch-size", type=int, default=50, help="images per Inception call (default 50)")
    parser.add_argument("--workers", type=int, default=min(4, usable_cpus()), help="image-loading processes for the "
                        "features (default 4, or the CPUs this process may use if fewer: more only wait, and torch warns)")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, spec: ModelSpec) -> None:
    """Fill in the model's defaults and stop with a short message on bad input."""
    try:
        if args.baseline and args.gate is not None:
            raise ValueError("--baseline runs the stock pipeline: drop --gate or --baseline")
        if args.baseline and given(args, *V2_FIELDS):
            raise ValueError("--baseline runs the stock pipeline: drop --sp-interval, --fi-interval, --warm-up "
                             "or --baseline")
        if args.tiny and args.checkpoint:
            raise ValueError("--tiny builds random components and ignores weights: drop --checkpoint or --tiny")
        if spec.key == TOY_MODEL and (args.coco_root or args.inception_weights):
            raise ValueError(f"--model {TOY_MODEL} is scored on scikit-learn's digits with the toy digit classifier: "
                             "drop --coco-root and --inception-weights")
        if spec.key != TOY_MODEL and args.coco_root is None:
            raise ValueError("--coco-root DIR is required: COCO's annotations/captions_val2014.json and val2014/")
        args.steps = spec.steps if args.steps is None else args.steps
        schedule = schedule_from_args(args, TgateSchedule(None) if args.baseline else model_schedule(spec), spec,
                                      stock_hint="--baseline")
        if schedule.gate_step is not None and schedule.gate_step >= args.steps >= 1:  # the stock pipeline, bit for bit
            print(f"--gate {schedule.gate_step} >= --steps {args.steps} gates no step: the stock pipeline, run as "
                  "--baseline")
            schedule = replace(schedule, gate_step=None, sp_interval=1, fi_interval=1, warm_up=0)
        args.schedule, args.gate = schedule, schedule.gate_step
        args.guidance = spec.guidance_scale if args.guidance is None else args.guidance
        for flag, value, low in [("--steps", args.steps, 1), ("--n", args.n, 2), ("--batch-size", args.batch_size, 1),
                                 ("--feature-batch-size", args.feature_batch_size, 1), ("--workers", args.workers, 0),
                                 ("--resolution", args.resolution, 8), ("--guidance", args.guidance, 0)]:
            if value is not None and value < low:
                raise ValueError(f"{flag} must be >= {low}, got {value}")
        if args.resolution is not None and args.resolution % 8:
            raise ValueError(f"--resolution must be a multiple of 8, got {args.resolution}")
    except ValueError as error:
        parser.error(str(error))
    run_name = f"{spec.key}_{schedule_suffix(args.schedule)}{'_tiny' if args.tiny else ''}"
    args.out = args.out or Path("results") / "fid" / run_name
    args.stats_dir = args.stats_dir or default_stats_dir()


def recorded_settings(schedule) -> dict:
    """The schedule as run.json and result.json record it: a TGATE run's sp_interval, fi_interval, warm_up, a
    DeepCache run's deepcache_interval, deepcache_branch (the gate is recorded apart)."""
    return {key: value for key, value in call_keywords(schedule).items() if key != "gate_step"}


def describe(args: argparse.Namespace) -> str:
    """'baseline', 'gate 10' or 'gate 10, sp 5, fi 1, warm-up 2'; DeepCache's ', DeepCache interval 3, branch 0'
    after it ('DeepCache interval 3, branch 0' alone for DeepCache without TGATE)."""
    return "baseline" if args.schedule.is_stock else schedule_label(args.schedule)


def caption_list(args: argparse.Namespace, source: CocoCaptions) -> list[CaptionRecord]:
    """The captions of this run: the given list (or its first --n), else a sample of --n (default 10K)."""
    if args.captions is None:
        return source.sample(args.n or (len(source.labels) if args.model == TOY_MODEL else PAPER_N), args.seed)
    records = source.complete(read_captions(args.captions))
    if args.n is not None:
        if args.n > len(records):
            raise CaptionSourceError(f"--n {args.n}: {args.captions} holds only {len(records)} captions")
        records = records[: args.n]
    return records


def records_sha256(records: Sequence[CaptionRecord]) -> str:
    return hashlib.sha256(json.dumps([asdict(r) for r in records]).encode()).hexdigest()


def caption_source(args: argparse.Namespace) -> CocoCaptions | ToyDigitCaptions:
    """Seam 1: where the captions and the reference images come from (MS-COCO val2014; the toy's digits)."""
    return ToyDigitCaptions() if args.model == TOY_MODEL else CocoCaptions(args.coco_root)


def feature_weights(args: argparse.Namespace) -> Path:
    """Seam 2, first half: the feature extractor's weights, found (or fetched) before any generation."""
    return classifier_weights() if args.model == TOY_MODEL else resolve_inception_weights(args.inception_weights)


def feature_extractor(args: argparse.Namespace, weights: Path, device: torch.device) -> InceptionFeatures | DigitFeatures:
    """Seam 2: which features make the statistics (pytorch-fid's Inception; the toy's digit classifier); the
    extractor's ``metric`` names the distance."""
    if args.model == TOY_MODEL:
        return DigitFeatures(weights)
    return InceptionFeatures(weights, dims=args.dims, device=device, batch_size=args.feature_batch_size)


def prepare_run(args: argparse.Namespace) -> Path:
    """Process 0, before any generation: check the dataset and the feature weights, write the caption list."""
    source = caption_source(args)
    weights = feature_weights(args)
    records = caption_list(args, source)
    source.check_images(records)
    path = args.out / "captions.json"
    if path.exists() and read_captions(path) != records:
        raise RunMismatchError(f"{args.out} holds images of a run with another caption list ({path}). "
                               "Use another --out, or delete that folder.")
    sampling = (f"sampled: seed {args.seed}, rule in eval/fid_data.py" if args.captions is None
                else f"given: {args.captions}")
    write_captions(path, records, source=source.name, sampling=sampling, seed=args.seed)
    return weights


def check_run_settings(out: Path, settings: dict) -> None:
    """Images in ``out`` are only reused by a run with the same settings; the first run records them."""
    path = out / "run.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        # a run.json written before TGATE-V2 recorded no intervals: its TGATE runs were v1
        v1 = recorded_settings(TgateSchedule(recorded["gate"])) if recorded.get("gate") is not None else {}
        different = {key: (recorded.get(key, v1.get(key)), value) for key, value in settings.items()
                     if recorded.get(key, v1.get(key)) != value}
        if different:
            listed = ", ".join(f"{key}: {old!r} there, {new!r} now" for key, (old, new) in different.items())
            raise RunMismatchError(f"{out} holds images of a run with other settings ({listed}). "
                                   "Use another --out, or delete that folder.")
    else:
        write_json_atomically(path, settings)


def load_pipeline(spec: ModelSpec, args: argparse.Namespace, dtype: torch.dtype):
    """The TGATE pipeline of the registry (``gate_step=None`` in a call is the stock pipeline)."""
    if args.tiny:
        pipe = spec.tiny_pipeline()  # built in float32
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    return spec.load(args.checkpoint, torch_dtype=dtype)


class ImageDataset(torch.utils.data.Dataset):
    """Items turned into float tensors (3, H, W) in [0, 1] by ``load`` (a picklable callable -> RGB image)."""

    def __init__(self, items: Sequence, load) -> None:
        self.items, self.load = list(items), load

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> torch.Tensor:
        pixels = np.asarray(self.load(self.items[position]).convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255


def reference_image(source: CocoCaptions, size: int, record: CaptionRecord) -> Image.Image:
    return center_crop_resize(source.reference_image(record), size)


def generated_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def check_generated_images(images_dir: Path, n: int, size: int) -> list[Path]:
    """All ``n`` images, each ``size`` x ``size``, before any features are computed."""
    missing = missing_images(images_dir, n)
    if missing:
        raise IncompleteImagesError(f"{len(missing)} images are missing (e.g. #{missing[0]}): a process stopped "
                                    "early; rerun the same command to generate them")
    paths = [image_path(images_dir, index) for index in range(n)]
    for path in paths:
        with Image.open(path) as image:  # reads the header only
            if image.size != (size, size):
                raise IncompleteImagesError(f"{path} is {image.size[0]}x{image.size[1]}, expected {size}x{size}")
    return paths


def dataset_statistics(extractor, dataset: ImageDataset, args: argparse.Namespace, description: str):
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.feature_batch_size, num_workers=args.workers)
    return statistics(extractor(loader, total=len(dataset), description=description))


def reference_statistics(source: CocoCaptions, records: Sequence[CaptionRecord], size: int, extractor,
                         args: argparse.Namespace) -> tuple[tuple[np.ndarray, np.ndarray], Path]:
    """Statistics of the reference images, from the cache when the same images, size and features met before."""
    ordered = sorted(records, key=lambda record: record.file_name)  # any run on these images shares the cache
    key = json.dumps({"source": source.name, "files": [r.file_name for r in ordered], "size": size,
                      "features": extractor.identity}, sort_keys=True)
    path = args.stats_dir / f"reference_{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    if path.exists():
        print(f"reference statistics from the cache: {path}")
        return load_statistics(path), path
    dataset = ImageDataset(ordered, functools.partial(reference_image, source, size))
    mu, sigma = dataset_statistics(extractor, dataset, args, f"reference {source.name}")
    args.stats_dir.mkdir(parents=True, exist_ok=True)
    save_statistics(path, mu, sigma, source=source.name, size=str(size), images=str(len(ordered)))
    return (mu, sigma), path


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def labels_and_warnings(args: argparse.Namespace, extractor, n: int) -> tuple[list[str], list[str]]:
    """Short labels (shown in the results table) and full warnings for anything that is not a real 10K-FID."""
    if extractor.metric != "FID":
        checks = [(args.tiny, "tiny", TINY_WARNING),
                  (True, extractor.metric, f"{extractor.metric}: Frechet distance of {extractor.identity['network']} "
                   "features against the real digits; not an Inception FID and not comparable to one")]
        return [label for bad, label, _ in checks if bad], [warning for bad, _, warning in checks if bad]
    checks = [
        (args.tiny, "tiny", TINY_WARNING),
        (not extractor.official, "unofficial Inception",
         f"the Inception weights {extractor.weights} are not pytorch-fid's official file (sha256 "
         f"{extractor.sha256[:12]}...): not an FID"),
        (args.dims != 2048, f"dims {args.dims}", f"Inception block of {args.dims} features, not pool3: not comparable"),
        (n != PAPER_N, f"n={n}", f"{n} images, not the paper's {PAPER_N}: FID depends on the number of images"),
    ]
    return [label for bad, label, _ in checks if bad], [warning for bad, _, warning in checks if bad]


def compute_result(args, spec: ModelSpec, records, settings: dict, weights: Path, device: torch.device,
                   num_processes: int) -> dict:
    """Process 0, after generation: statistics of both image sets, the distance, and the result record."""
    size = settings["resolution"]
    images = check_generated_images(args.out / "images", len(records), size)
    extractor = feature_extractor(args, weights, device)
    source = caption_source(args)
    reference, stats_path = reference_statistics(source, records, size, extractor, args)
    generated = dataset_statistics(extractor, ImageDataset(images, generated_image), args, "generated")
    labels, warnings = labels_and_warnings(args, extractor, len(records))
    totals = generation_totals(args.out / "timing")
    if totals["flagged"]:
        warnings.append(f"the pipeline's safety checker blacked out {totals['flagged']} images; they are in the FID, "
                        "as the stock pipeline returns them")
    distance = frechet_distance(generated, reference)
    scores = source.scores(records, images) if isinstance(source, ToyDigitCaptions) else {}
    return {
        "metric": extractor.metric,
        **({"fid": distance} if extractor.metric == "FID" else {"distance": distance}),
        **scores,
        "model": spec.key,
        "title": spec.title,
        "checkpoint": "tiny random components" if args.tiny else (args.checkpoint or spec.checkpoint),
        "tiny": args.tiny,
        "tgate": args.gate is not None,
        **{key: settings[key] for key in ("gate", "steps", "guidance_scale", "resolution", "seed", "dtype")},
        **recorded_settings(args.schedule),
        "n": len(records),
        "seconds_per_image": totals["seconds_per_image"],
        "seconds_per_image_note": "generation wall time / images, summed over processes and resumed runs, at "
                                  f"batch size {args.batch_size}: not the paper's single-image latency",
        "batch_size": args.batch_size,
        "safety_checker_flagged": totals["flagged"],
        "device": device_name(device),
        "num_processes": num_processes,
        "captions": str(args.out / "captions.json"),
        "captions_sha256": settings["captions_sha256"],
        "reference": {"source": source.name, "size": size, "statistics": str(stats_path)},
        "features": {**extractor.identity, "weights": str(extractor.weights)},
        "labels": labels,
        "warnings": warnings,
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def fail(error: Exception, code: int = 2) -> int:
    print(f"error: {error}", file=sys.stderr)
    return code


def generate_share(args, spec: ModelSpec, state, device: torch.device, dtype: torch.dtype,
                   records: list[CaptionRecord]) -> dict:
    """Every process: load the pipeline, record (process 0) or check the run settings, generate this share.

    Returns the run settings; raises ``CheckpointNotFoundError`` or ``RunMismatchError``.
    """
    pipe = load_pipeline(spec, args, dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    resolution = args.resolution or (pipe.native_resolution if args.tiny else spec.resolution)
    settings = {"model": spec.key, "checkpoint": "tiny" if args.tiny else args.checkpoint or spec.checkpoint,
                "gate": args.gate, **recorded_settings(args.schedule), "steps": args.steps, "guidance_scale": args.guidance,
                "resolution": resolution, "seed": args.seed, "dtype": str(dtype).removeprefix("torch."),
                "captions_sha256": records_sha256(records)}
    if state.is_main_process:
        check_run_settings(args.out, settings)
    state.wait_for_everyone()

    print(f"{spec.title} | {settings['checkpoint']} | {describe(args) if args.gate is None else f'TGATE {describe(args)}'}"
          f" | {args.steps} steps, guidance {args.guidance}, {resolution}px | {len(records)} captions | "
          f"process {state.process_index}/{state.num_processes} on {device}")
    call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, height=resolution, width=resolution,
                **call_keywords(args.schedule))
    report = generate_images(pipe, records, args.out / "images", seed=args.seed, batch_size=args.batch_size,
                             call=call, rank=state.process_index, world=state.num_processes,
                             timing_path=args.out / "timing" / f"{uuid.uuid4().hex}.json")
    print(f"process {state.process_index}: {report.generated} images generated, {report.skipped} already done")
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    spec = get_model(args.model)
    check_arguments(parser, args, spec)

    from accelerate import PartialState

    # without an accelerator, accelerate only forms a group of CPU processes (torchrun) when told cpu=True
    state = PartialState(cpu=not (torch.cuda.is_available() or torch.backends.mps.is_available()))
    try:
        device, dtype = resolve_device_and_dtype(str(state.device), args.dtype)
    except ValueError as error:
        parser.error(str(error))
    if args.tiny:
        print(TINY_WARNING)
    args.out.mkdir(parents=True, exist_ok=True)

    weights = None
    if state.is_main_process:
        try:
            weights = prepare_run(args)
        except (CaptionSourceError, FeatureWeightsError, RunMismatchError) as error:
            return fail(error)
    state.wait_for_everyone()

    records = read_captions(args.out / "captions.json")
    try:
        settings = generate_share(args, spec, state, device, dtype, records)
    except (CheckpointNotFoundError, RunMismatchError) as error:
        return fail(error)
    if device.type == "cuda":  # the pipeline is gone: give its memory to the feature extractor
        torch.cuda.empty_cache()
    state.wait_for_everyone()
    if not state.is_main_process:
        return 0

    start = time.perf_counter()
    try:
        result = compute_result(args, spec, records, settings, weights, device, state.num_processes)
    except (IncompleteImagesError, CaptionSourceError, FeatureWeightsError) as error:
        return fail(error, code=1)
    write_json_atomically(args.out / "result.json", result)
    scored = "".join(f", {key} {result[key]:.1%}" for key in ("accuracy",) if key in result)
    print(f"{result['metric']} {result.get('fid', result.get('distance')):.3f}{scored} ({spec.title}, "
          f"{describe(args)}, {args.steps} steps, n={len(records)}; "
          f"statistics in {time.perf_counter() - start:.0f} s) -> {args.out / 'result.json'}")
    for warning in result["warnings"]:
        print(f"warning: {warning}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: finished images are kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
