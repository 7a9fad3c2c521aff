"""The command line of the video folders' ``generate.py`` (AnimateDiff, SVD): one TGATE video saved as a GIF.

Neither model is in the paper: their defaults are the diffusers documentation's examples (checkpoint, prompt or
image size, frames, steps, guidance, seed) with gate 10 of 25 steps, the SD scripts' gate, our choice.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers.utils import export_to_gif
from PIL import Image

from .cli import TINY_WARNING, resolve_device_and_dtype, synchronize
from .gate import check_gate_step
from .models import CheckpointNotFoundError, missing_weights_message


@dataclass(frozen=True)
class VideoModel:
    key: str
    title: str
    checkpoint: str  # what `from_pretrained` loads by default (hub id)
    steps: int
    gate_step: int
    guidance_scale: float  # AnimateDiff: guidance_scale; SVD: max_guidance_scale (frame 0 has min_guidance_scale 1)
    frames: int
    seed: int
    fps: int
    load: Callable[[argparse.Namespace, torch.dtype], Any]  # (args, dtype) -> TGATE pipeline with real weights
    tiny: Callable[[], Any]  # tiny random TGATE pipeline
    prompt: str | None = None  # text-to-video; None: image-to-video (--image)
    negative_prompt: str | None = None
    size: tuple[int, int] | None = None  # image-to-video: the input image is resized to (width, height)
    extra_arguments: Callable[[argparse.ArgumentParser], None] | None = None


def build_parser(model: VideoModel) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=f"Generate a video with TGATE ({model.title}); saved as a GIF. "
                                     "Defaults: the diffusers documentation's example, gate 10 of 25 steps.")
    if model.prompt is not None:
        parser.add_argument("--prompt", help=f"the caption (default: {model.prompt!r})")
        parser.add_argument("--negative-prompt", help=f"negative prompt (default: {model.negative_prompt!r})")
    else:
        parser.add_argument("--image", type=Path, help="the conditioning image, the video's first frame (required "
                            "except with --tiny, which uses a gradient)")
    parser.add_argument("--steps", type=int, default=model.steps, help=f"denoising steps (default: {model.steps})")
    parser.add_argument("--gate", type=int, default=model.gate_step, help="gate step: guided steps before "
                        f"cross-attention is cached and guidance dropped; >= --steps is stock (default: {model.gate_step})")
    parser.add_argument("--guidance", type=float, default=model.guidance_scale,
                        help=f"classifier-free guidance scale (default: {model.guidance_scale})")
    parser.add_argument("--frames", type=int, help=f"frames (default: {model.frames}; --tiny: 3)")
    parser.add_argument("--seed", type=int, default=model.seed, help=f"seed (default: {model.seed})")
    parser.add_argument("--model", help=f"hub id or local diffusers folder (default: {model.checkpoint})")
    if model.extra_arguments:
        model.extra_arguments(parser)
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="weights dtype; auto (default) = float16 on CUDA, float32 on CPU")
    parser.add_argument("--device", default="auto", help="torch device; auto (default) = cuda if available")
    parser.add_argument("--out", type=Path, help=f"output GIF (default: {model.key}_tgate.gif)")
    parser.add_argument("--tiny", action="store_true", help="tiny random components built offline, for smoke runs "
                        "without weights: the video is noise (32x32 frames)")
    return parser


def gradient_image(size: int = 32) -> Image.Image:
    ramp = torch.linspace(0, 255, size).to(torch.uint8)
    pixels = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                          torch.full((size, size), 128, dtype=torch.uint8)], dim=-1)
    return Image.fromarray(pixels.numpy())


def video_main(model: VideoModel, argv: Sequence[str] | None = None) -> int:
    parser = build_parser(model)
    args = parser.parse_args(argv)
    frames = args.frames if args.frames is not None else 3 if args.tiny else model.frames
    try:
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        check_gate_step(args.gate)
        if frames < 1:
            raise ValueError(f"--frames must be >= 1, got {frames}")
        if args.tiny and args.model:
            raise ValueError("--tiny builds random components and ignores weights: drop --model or --tiny")
        image_to_video = model.prompt is None
        if image_to_video and args.image is None and not args.tiny:
            raise ValueError("--image is required: the picture the video starts from")
        if image_to_video and args.image is not None and not args.image.is_file():
            raise ValueError(f"--image: no such file: {args.image}")
        device, dtype = resolve_device_and_dtype(args.device, args.dtype)
    except ValueError as error:
        parser.error(str(error))

    if args.tiny:
        print(TINY_WARNING.replace("the image is", "the video is"))
        pipe = model.tiny().to(dtype=dtype)
    else:
        try:
            pipe = model.load(args, dtype)
        except (OSError, ValueError) as error:
            message = missing_weights_message(model, args.model or model.checkpoint, error)
            print(f"error: {CheckpointNotFoundError(message)}", file=sys.stderr)
            return 2
    pipe = pipe.to(device)

    call: dict[str, Any] = dict(num_inference_steps=args.steps, num_frames=frames)
    if image_to_video:
        image = gradient_image() if args.image is None else Image.open(args.image).convert("RGB")
        width, height = (32, 32) if args.tiny else model.size
        call.update(image=image.resize((width, height)), height=height, width=width, max_guidance_scale=args.guidance,
                    decode_chunk_size=min(8, frames))
    else:
        call.update(prompt=args.prompt or model.prompt, guidance_scale=args.guidance)
        negative = args.negative_prompt if args.negative_prompt is not None else model.negative_prompt
        if negative is not None:
            call["negative_prompt"] = negative
    out = args.out or Path(f"{model.key}_tgate.gif")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"{model.title} | {'tiny random' if args.tiny else args.model or model.checkpoint} | {args.steps} steps, "
          f"gate {args.gate}, guidance {args.guidance}, {frames} frames, seed {args.seed} | {device} "
          f"{str(dtype).removeprefix('torch.')}")
    synchronize(device)
    start = time.perf_counter()
    video = pipe(generator=torch.Generator("cpu").manual_seed(args.seed), gate_step=args.gate, **call).frames[0]
    synchronize(device)
    seconds = time.perf_counter() - start
    export_to_gif(video, str(out), fps=model.fps)
    print(f"TGATE  {seconds:7.2f} s -> {out} ({len(video)} frames)")
    if args.tiny:
        print(TINY_WARNING.replace("the image is", "the video is"))
    return 0
