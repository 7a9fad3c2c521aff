"""generate.py's image tasks: image-to-image (``--image``), inpainting (``--mask``) and ControlNet
(``--control-image``, ``--controlnet``) on the family's TGATE pipelines. Kept apart from ``cli.py``, which
calls these three functions."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from .models import CheckpointNotFoundError


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """Image-to-image, inpainting and ControlNet: the flags that pick the family's TGATE pipeline for the task."""
    tasks = parser.add_argument_group("image-to-image, inpainting, ControlNet (the gate counts the steps run "
                                      "after --strength)")
    tasks.add_argument("--image", type=Path, help="start from this image: image-to-image (inpainting with --mask)")
    tasks.add_argument("--mask", type=Path, help="inpainting mask, white = repaint (needs --image)")
    tasks.add_argument("--strength", type=float, help="how much of --image is noised away, 0-1; of --steps, "
                       "int(steps x strength) are run (default: the pipeline's own)")
    tasks.add_argument("--control-image", type=Path, help="ControlNet conditioning image (edges, depth, pose, ...)")
    tasks.add_argument("--controlnet", help="hub id or folder of a ControlNetModel for this base model, e.g. "
                       "lllyasviel/sd-controlnet-canny (needs --control-image; --tiny builds a random one)")


def check_task_arguments(args: argparse.Namespace) -> None:
    """A ``ValueError`` for task flags that do not go together."""
    if args.mask and not args.image:
        raise ValueError("--mask needs --image (the picture to inpaint)")
    if args.strength is not None and not args.image:
        raise ValueError("--strength needs --image")
    if args.strength is not None and not 0 < args.strength <= 1:
        raise ValueError(f"--strength must be in (0, 1], got {args.strength}")
    if args.controlnet and not args.control_image:
        raise ValueError("--controlnet needs --control-image")
    if args.control_image and not (args.controlnet or args.tiny):
        raise ValueError("--control-image needs --controlnet HUB_ID_OR_FOLDER (a ControlNetModel for this base model)")
    for flag in ("image", "mask", "control_image"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            raise ValueError(f"--{flag.replace('_', '-')}: no such file: {path}")


def task_pipeline(pipe, args: argparse.Namespace, dtype: torch.dtype):
    """The family's TGATE pipeline for the task the flags ask for, sharing ``pipe``'s components, and the call's
    image arguments. diffusers' AutoPipelines map each TGATE class to its TGATE image-to-image, inpainting and
    ControlNet classes (common/pipeline.py registers them)."""
    if not (args.image or args.control_image):
        return pipe, {}
    from diffusers import (AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image,
                           ControlNetModel)

    extra = {}
    if args.control_image:
        if getattr(pipe, "unet", None) is None:
            raise ValueError(f"diffusers has no ControlNet pipeline for {type(pipe).__name__}")
        if args.tiny:
            from .tiny_pipelines import tiny_controlnet

            controlnet = tiny_controlnet(pipe.unet)
        else:
            try:
                controlnet = ControlNetModel.from_pretrained(args.controlnet, torch_dtype=dtype)
            except (OSError, ValueError) as error:
                raise CheckpointNotFoundError(f"Could not load the ControlNet '{args.controlnet}': {error}") from error
        extra["controlnet"] = controlnet.to(device=pipe.device, dtype=dtype)
    auto, task = ((AutoPipelineForInpainting, "inpainting") if args.mask else
                  (AutoPipelineForImage2Image, "image-to-image") if args.image else
                  (AutoPipelineForText2Image, "text-to-image"))
    task = f"ControlNet {task}" if args.control_image else task
    try:
        pipe = auto.from_pipe(pipe, **extra)
    except ValueError as error:
        raise ValueError(f"diffusers has no {task} pipeline for {type(pipe).__name__}") from error
    call = {}
    if args.image:
        call["image"] = Image.open(args.image).convert("RGB")
    if args.mask:
        call["mask_image"] = Image.open(args.mask).convert("L")
    if args.control_image:
        call["control_image" if args.image else "image"] = Image.open(args.control_image).convert("RGB")
    if args.strength is not None:
        call["strength"] = args.strength
    return pipe, call
