"""What eval/compare.py calls on a real model (Wan2.1-T2V-1.3B, SDXL): the pipeline (checkpoint, random weights
on the real architecture, or tiny components) and one seeded call at the run's size.

There are no toy measures here (no digit classifier): a row has MACs, loop time, peak memory and PSNR/SSIM to
stock. With random weights the images are noise and their PSNR/SSIM only say how far a variant moves a random
network's output: every title and JSON of such a run says "random weights".
"""

from __future__ import annotations

import numpy as np
import torch

WEIGHTS_NOTES = {
    "checkpoint": "real checkpoint weights",
    "random": "RANDOM WEIGHTS on the real architecture: MACs and timings are the model's, the images are noise "
              "(PSNR/SSIM compare noise, not a real model's images)",
    "tiny": "TINY RANDOM COMPONENTS (a smoke run of the code): no number here describes a real model",
}


def load_real(key: str, weights: str, checkpoint: str | None, device: torch.device, dtype: torch.dtype):
    """(pipeline, prompt inputs, notes) of registry model ``key``; ``weights``: checkpoint, random or tiny."""
    from common.builders import cast, random_weights_pipeline
    from common.models import get_model

    spec = get_model(key)
    if weights == "random":
        built = random_weights_pipeline(spec, device, dtype)
        pipe, prompt_inputs, notes = built.pipe, built.prompt_inputs, built.notes
    else:
        pipe = cast(spec.tiny_pipeline(), dtype) if weights == "tiny" else spec.load(checkpoint, torch_dtype=dtype)
        pipe, prompt_inputs, notes = pipe.to(device), {"prompt": spec.prompt}, []
    pipe.set_progress_bar_config(disable=True)
    return pipe, prompt_inputs, notes


class RealRun:
    """One setting of a real model: its prompt inputs, size and call; ``__call__`` runs the pipeline once and
    returns the decoded output as an array ((N, H, W, C) images, or (N, F, H, W, C) videos)."""

    def __init__(self, pipe, prompt_inputs: dict, size: dict, steps: int, guidance: float, seed: int,
                 images: int = 1, call_kwargs: dict | None = None) -> None:
        self.pipe, self.steps, self.guidance, self.seed = pipe, steps, guidance, seed
        self.prompt_inputs, self.size, self.images = dict(prompt_inputs), dict(size), images
        self.call_kwargs = dict(call_kwargs or {})
        self.video = "num_frames" in size
        self.prompts = [prompt_inputs.get("prompt", "<random prompt embeddings>")] * images
        self.denoiser = getattr(pipe, "transformer", None) or pipe.unet

    @property
    def count(self) -> int:
        """Images (or videos) per call: MACs are reported per one of them."""
        return self.images

    def __call__(self, prompts: list[str] | None = None, steps: int | None = None, seed: int | None = None,
                 **kwargs) -> np.ndarray:
        per_prompt = "num_videos_per_prompt" if self.video else "num_images_per_prompt"
        output = self.pipe(**self.prompt_inputs, **self.size, **self.call_kwargs, num_inference_steps=steps or self.steps,
                           guidance_scale=self.guidance, **{per_prompt: self.images},
                           generator=torch.Generator().manual_seed(self.seed if seed is None else seed),
                           output_type="np", **kwargs)
        return np.asarray(output.frames if self.video else output.images, dtype=np.float32)

    def as_images(self, output: np.ndarray) -> np.ndarray:
        """(N, H, W, C): a video's frames stacked on N."""
        return output.reshape(-1, *output.shape[-3:])

    def measures(self, output: np.ndarray) -> dict:
        return {}  # no toy measures on a real model


def size_of(spec, args, weights: str, video: bool) -> dict:
    """The call's size: the flags', else the model's (tiny: its components' own small size)."""
    if video:
        default = dict(spec.tiny_call) if weights == "tiny" else {"height": spec.size[0], "width": spec.size[1],
                                                                   "num_frames": spec.frames}
        size = {"height": args.height or default["height"], "width": args.width or default["width"],
                "num_frames": args.frames or default["num_frames"]}
        if (size["num_frames"] - 1) % 4:
            raise ValueError(f"--frames must be 1 + a multiple of 4 for Wan (4 frames per latent), got {size['num_frames']}")
        if size["height"] % 16 or size["width"] % 16:
            raise ValueError("--height and --width must be multiples of 16 for Wan")
        return size
    side = args.resolution or (32 if weights == "tiny" else spec.resolution)
    if side % 8:
        raise ValueError(f"--resolution must be a multiple of 8, got {side}")
    return {"height": side, "width": side}
