"""The command line of the DiT video folders' ``generate.py`` (Wan/, LTX_Video/): one TGATE video from a registry
model (common/dit_models.py), saved as MP4 (diffusers' ``export_to_video``, through imageio-ffmpeg) or GIF."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers.utils import export_to_gif, export_to_video
from PIL import Image

from .cli import TINY_WARNING, resolve_device_and_dtype, synchronize
from .gate import check_gate_step
from .models import CheckpointNotFoundError, get_model
from .video_cli import gradient_image

VIDEO_TINY_WARNING = TINY_WARNING.replace("the image is", "the video is")


def build_parser(keys: Sequence[str], fps: int, image_key: str | None) -> argparse.ArgumentParser:
    specs = {key: get_model(key) for key in keys}
    default = specs[keys[0]]
    parser = argparse.ArgumentParser(description=f"Generate a video with TGATE ({', '.join(s.title for s in specs.values())}). "
                                     "Defaults: the model card's; gate at 40%% of the steps.")
    parser.add_argument("--model", choices=list(specs), default=keys[0], help="which model (default: "
                        f"{keys[0]}): " + ", ".join(f"{key} = {spec.title}" for key, spec in specs.items()))
    parser.add_argument("--checkpoint", help="hub id or local diffusers folder (default: the model's checkpoint)")
    if image_key:
        parser.add_argument("--image", type=Path, help=f"image-to-video from this first frame ({get_model(image_key).title})")
    parser.add_argument("--prompt", help=f"the caption (default: the model card's, e.g. {default.prompt[:40]!r}...)")
    parser.add_argument("--negative-prompt", help="negative prompt (default: the model card's)")
    parser.add_argument("--steps", type=int, help=f"denoising steps (default: the model's, {default.steps})")
    parser.add_argument("--gate", type=int, help="gate step: guided steps before cross-attention is cached and "
                        f"guidance dropped; >= --steps is stock (default: 40%% of the steps, {default.gate_step})")
    parser.add_argument("--guidance", type=float, help=f"guidance scale (default: the model's, {default.guidance_scale})")
    parser.add_argument("--height", type=int, help=f"pixels (default: the model's, {default.size[0]}; --tiny: small)")
    parser.add_argument("--width", type=int, help=f"pixels (default: the model's, {default.size[1]})")
    parser.add_argument("--frames", type=int, help=f"frames (default: the model's, {default.frames})")
    parser.add_argument("--seed", type=int, help=f"seed (default: {default.seed})")
    parser.add_argument("--fps", type=int, default=fps, help=f"frames per second of the file (default: {fps})")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="weights dtype; auto (default) = float16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default="auto", help="torch device; auto (default) = cuda if available")
    parser.add_argument("--out", type=Path, help="output .mp4 or .gif (default: <model>_tgate.mp4)")
    parser.add_argument("--tiny", action="store_true", help="tiny random components built offline, for smoke runs "
                        "without weights: the video is noise")
    return parser


def save_video(frames: list, out: Path, fps: int) -> None:
    if out.suffix.lower() == ".gif":
        export_to_gif(frames, str(out), fps=fps)
    else:  # diffusers writes MP4 through imageio + imageio-ffmpeg (requirements.txt)
        export_to_video(frames, str(out), fps=fps)


def dit_video_main(keys: Sequence[str], fps: int, image_key: str | None = None,
                   argv: Sequence[str] | None = None) -> int:
    parser = build_parser(keys, fps, image_key)
    args = parser.parse_args(argv)
    image = getattr(args, "image", None)
    spec = get_model(image_key if image is not None else args.model)
    if image is not None and args.model != keys[0]:
        parser.error(f"--image runs {image_key} ({spec.title}); drop --model")
    steps = spec.steps if args.steps is None else args.steps
    gate = spec.gate_step if args.gate is None else args.gate
    seed = spec.seed if args.seed is None else args.seed
    out = args.out or Path(f"{spec.key}_tgate.mp4")
    try:
        if steps < 1:
            raise ValueError(f"--steps must be >= 1, got {steps}")
        check_gate_step(gate)
        if args.tiny and args.checkpoint:
            raise ValueError("--tiny builds random components and ignores weights: drop --checkpoint or --tiny")
        if image is not None and not image.is_file():
            raise ValueError(f"--image: no such file: {image}")
        if out.suffix.lower() not in (".mp4", ".gif"):
            raise ValueError(f"--out must end in .mp4 or .gif, got {out}")
        device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    except ValueError as error:
        parser.error(str(error))

    if args.tiny:
        print(VIDEO_TINY_WARNING)
        pipe = spec.tiny_pipeline().to(dtype=dtype)
    else:
        try:
            pipe = spec.load(args.checkpoint, torch_dtype=dtype)
        except CheckpointNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    pipe = pipe.to(device)

    call: dict[str, Any] = dict(spec.call_kwargs)
    height, width = spec.size
    call.update(prompt=spec.prompt if args.prompt is None else args.prompt, num_inference_steps=steps,
                guidance_scale=spec.guidance_scale if args.guidance is None else args.guidance,
                height=height, width=width, num_frames=spec.frames)
    if args.tiny:
        call.update(spec.tiny_call)
    for name in ("height", "width", "frames"):
        if getattr(args, name) is not None:
            call["num_frames" if name == "frames" else name] = getattr(args, name)
    if args.negative_prompt is not None:
        call["negative_prompt"] = args.negative_prompt
    if image is not None or spec.key == image_key:
        picture = gradient_image() if image is None else Image.open(image).convert("RGB")
        call["image"] = picture.resize((call["width"], call["height"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{spec.title} | {'tiny random' if args.tiny else args.checkpoint or spec.checkpoint} | {steps} steps, gate "
          f"{gate}, guidance {call['guidance_scale']}, {call['width']}x{call['height']}, {call['num_frames']} frames, "
          f"seed {seed} | {device} {str(dtype).removeprefix('torch.')}")
    synchronize(device)
    start = time.perf_counter()
    video = pipe(generator=torch.Generator("cpu").manual_seed(seed), gate_step=gate, **call).frames[0]
    synchronize(device)
    seconds = time.perf_counter() - start
    save_video(list(video), out, args.fps)
    print(f"TGATE  {seconds:7.2f} s -> {out} ({len(video)} frames)")
    if args.tiny:
        print(VIDEO_TINY_WARNING)
    return 0
