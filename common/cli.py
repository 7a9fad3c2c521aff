"""The command line every model folder's ``generate.py`` runs: one TGATE image, optionally beside stock."""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch
from diffusers.utils import logging as diffusers_logging
from PIL import Image, ImageDraw

from .models import TOY_MODEL, CheckpointNotFoundError, ModelSpec, get_model
from .tasks import add_task_arguments, check_task_arguments, task_pipeline
from .settings import add_schedule_args, call_keywords, intervals_label, model_schedule, schedule_from_args

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
TINY_WARNING = "[--tiny] tiny random components, not the real model: the image is noise, only the code path runs."
TOY_NOTE = ("[--model toy] the toy checkpoint trained here on scikit-learn's 8x8 digits (16x16 images), "
            "not a paper model")


def runs_toy(spec: ModelSpec) -> bool:
    """Whether ``spec``'s generate.py can run the toy checkpoint (a Stable Diffusion pipeline)."""
    return spec.pipeline_class is get_model(TOY_MODEL).pipeline_class


def build_parser(specs: dict[str, ModelSpec], variant_flag: str | None) -> argparse.ArgumentParser:
    default = next(iter(specs.values()))
    parser = argparse.ArgumentParser(
        description=f"Generate an image with TGATE ({', '.join(s.title for s in specs.values())}). Defaults "
        "reproduce the paper's example: its checkpoint, caption, steps, gate step, scheduler and seed.",
    )
    if variant_flag:
        parser.add_argument(variant_flag, choices=list(specs), default=next(iter(specs)),
                            help=f"which model to run (default: {next(iter(specs))}): " + ", ".join(f"{k} = {s.title}" for k, s in specs.items()))
    parser.add_argument("--prompt", help=f"the caption (default: the paper's, e.g. {default.prompt!r})")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (the unconditional branch)")
    parser.add_argument("--steps", type=int, help=f"denoising steps (default: the paper's, {default.steps})")
    add_schedule_args(parser, default)
    parser.add_argument("--guidance", type=float, help="classifier-free guidance scale; <= 1 turns guidance off "
                        f"(default: the paper's, {default.guidance_scale})")
    parser.add_argument("--seed", type=int, help=f"seed of the initial noise (default: the paper's, {default.seed})")
    toy = get_model(TOY_MODEL)
    toy_help = (f"; '{TOY_MODEL}' runs the toy digits checkpoint committed in eval/toy/checkpoint/, offline, with its "
                f"own defaults ({toy.resolution}x{toy.resolution}, {toy.steps} steps, gate {toy.gate_step}, guidance "
                f"{toy.guidance_scale}, prompt {toy.prompt!r})") if runs_toy(default) else ""
    parser.add_argument("--model", help="hub id or local diffusers folder of the weights "
                        f"(default: the paper's checkpoint, e.g. {default.checkpoint}){toy_help}")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="weights dtype; auto (default) = float16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default="auto", help="torch device: cuda, cuda:1, cpu, mps; auto (default) = cuda if available")
    parser.add_argument("--out", type=Path, help="output image, " + "/".join(IMAGE_SUFFIXES) + " (default: "
                        "<model>_tgate.png in the current folder); a missing folder is created only when its parent "
                        "exists")
    parser.add_argument("--compare", action="store_true", help="also render the stock pipeline with the same seed "
                        "and save both side by side, each with its time (<out>_stock.png, <out>_compare.png)")
    parser.add_argument("--tiny", action="store_true", help="tiny random components built offline, for smoke runs "
                        "without weights: the image is noise")
    add_task_arguments(parser)
    return parser


def check_out(out: Path) -> None:
    """A ``ValueError`` unless an image can be written at ``out``: checked before any work."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give an image file, e.g. {out / 'image.png'}")
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {out}: the file name must end in {', '.join(IMAGE_SUFFIXES)}")
    folder = out.parent
    if not folder.is_dir():
        if folder.exists():
            raise ValueError(f"--out {out}: {folder} is a file, not a folder")
        if not folder.parent.is_dir():  # more than one missing level is likelier a typo than a wish
            raise ValueError(f"--out {out}: {folder.parent} is not an existing folder; only a missing last folder "
                             f"({folder.name}) is created")
        folder = folder.parent
    try:  # a real probe: permission bits say nothing for root, read-only mounts or full disks
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"--out {out}: cannot write in {folder} ({error.strerror or error})") from None


def cast_quietly(pipe, dtype: torch.dtype):
    """``pipe.to(dtype=dtype)`` without diffusers' warning, which it logs on every dtype cast: the tiny
    components have no module to keep in float32 (the warning lists none)."""
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return pipe.to(dtype=dtype)
    finally:
        diffusers_logging.set_verbosity(verbosity)


def resolve_device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """The device and dtype to run on; a ``ValueError`` for combinations that cannot work."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    if dtype == "auto":
        dtype = "float16" if resolved.type == "cuda" else "float32"
    return resolved, DTYPES[dtype]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model and core count: what a timing was measured on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
        return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"
    return str(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generation(pipe, device: torch.device, seed: int, **call) -> tuple[Image.Image, float]:
    generator = torch.Generator("cpu").manual_seed(seed)
    synchronize(device)
    start = time.perf_counter()
    image = pipe(generator=generator, **call).images[0]
    synchronize(device)
    return image, time.perf_counter() - start


def side_by_side(left: Image.Image, left_label: str, right: Image.Image, right_label: str) -> Image.Image:
    if left.width < 256:  # tiny smoke-run images: enlarge so the labels fit
        scale = -(-256 // left.width)
        left, right = (im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in (left, right))
    band = 24
    canvas = Image.new("RGB", (left.width + right.width, max(left.height, right.height) + band), "white")
    canvas.paste(left, (0, band))
    canvas.paste(right, (left.width, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), left_label, fill="black")
    draw.text((left.width + 4, 4), right_label, fill="black")
    return canvas


def generate_main(models: str | dict[str, str], argv: Sequence[str] | None = None, variant_flag: str | None = None) -> int:
    """Run ``generate.py`` for one model key, or for several chosen with ``variant_flag`` (e.g. ``--base``)."""
    choices = {models: models} if isinstance(models, str) else models
    specs = {choice: get_model(key) for choice, key in choices.items()}
    parser = build_parser(specs, variant_flag)
    args = parser.parse_args(argv)
    spec = specs[getattr(args, variant_flag.lstrip("-").replace("-", "_"))] if variant_flag else next(iter(specs.values()))
    if args.model == TOY_MODEL and not args.tiny and runs_toy(spec):  # the committed toy, with its own settings
        spec, args.model = get_model(TOY_MODEL), None
        print(TOY_NOTE)

    steps = spec.steps if args.steps is None else args.steps
    guidance = spec.guidance_scale if args.guidance is None else args.guidance
    seed = spec.seed if args.seed is None else args.seed
    try:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        schedule = schedule_from_args(args, model_schedule(spec), spec)
        if guidance < 0:
            raise ValueError(f"--guidance must be >= 0, got {guidance}")
        if args.tiny and args.model:
            raise ValueError("--tiny builds random components and ignores weights: drop --model or --tiny")
        check_task_arguments(args)
        device, dtype = resolve_device_and_dtype(args.device, args.dtype)
        out = args.out or Path(f"{spec.key}_tgate.png")
        check_out(out)
    except ValueError as error:
        parser.error(str(error))

    if args.tiny:
        print(TINY_WARNING)
        pipe = cast_quietly(spec.tiny_pipeline(), dtype)
    else:
        try:
            pipe = spec.load(args.model, torch_dtype=dtype)
        except CheckpointNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    # diffusers warns that float16 "will fail" on the CPU; torch 2.14 runs it (tests/test_generate_cli.py)
    pipe = pipe.to(device, silence_dtype_warnings=True)
    try:
        pipe, task_call = task_pipeline(pipe, args, dtype)
    except CheckpointNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        parser.error(str(error))

    prompt = spec.prompt if args.prompt is None else args.prompt  # --prompt "" is an empty prompt
    call = dict(prompt=prompt, num_inference_steps=steps, guidance_scale=guidance, **task_call)
    call.update(spec.call_kwargs)  # the model card's other defaults (dit_models.py)
    if args.tiny:
        call.update(spec.tiny_call)  # sizes the tiny components take (Sana, HunyuanDiT: no resolution binning)
    if args.negative_prompt is not None:  # else the pipeline's own default: PixArt's is "", and None breaks it
        call["negative_prompt"] = args.negative_prompt
    out.parent.mkdir(exist_ok=True)
    gate = schedule.gate_step
    v2_note = "" if schedule.is_v1 else f" | V2: {intervals_label(schedule)}"
    if schedule.deepcache_interval is not None:
        v2_note += f" | DeepCache: interval {schedule.deepcache_interval}, branch {schedule.deepcache_branch}"
    print(f"{spec.title} | {'tiny random' if args.tiny else args.model or spec.checkpoint} | {steps} steps, "
          f"gate {gate}, guidance {guidance}, seed {seed}{v2_note} | {device} {str(dtype).removeprefix('torch.')}")
    if args.compare:  # warm up kernels and caches so neither timed run pays for them
        pipe(**{**call, "num_inference_steps": 2}, output_type="latent")

    image, seconds = timed_generation(pipe, device, seed, **call_keywords(schedule), **call)
    image.save(out)
    print(f"TGATE  {seconds:7.2f} s -> {out}")
    if args.compare:
        stock, stock_seconds = timed_generation(pipe, device, seed, **call)
        stock_out = out.with_name(f"{out.stem}_stock{out.suffix}")
        compare_out = out.with_name(f"{out.stem}_compare{out.suffix}")
        stock.save(stock_out)
        side_by_side(stock, f"stock {stock_seconds:.2f} s", image, f"TGATE gate {gate}: {seconds:.2f} s").save(compare_out)
        print(f"stock  {stock_seconds:7.2f} s -> {stock_out}  (TGATE speedup {stock_seconds / seconds:.2f}x)")
        print(f"side by side -> {compare_out}")
    if args.tiny:
        print(TINY_WARNING)
    return 0
