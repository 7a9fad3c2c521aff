"""Generate a TGATE video with Stable Video Diffusion (image to video): `cd SVD && python generate.py --image IMG`.

Defaults: the diffusers SVD documentation's example (stable-video-diffusion-img2vid-xt, the image resized to
1024x576, 25 frames, 25 steps, guidance rising from 1 to 3 over the frames, decode chunks of 8, seed 42), gate 10.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

from common.video_cli import VideoModel, video_main  # noqa: E402


def load(args, dtype):
    from SVD.pipeline import TgateStableVideoDiffusionPipeline

    return TgateStableVideoDiffusionPipeline.from_pretrained(args.model or MODEL.checkpoint, torch_dtype=dtype)


def tiny():
    from common.tiny_pipelines import tiny_svd_components
    from SVD.pipeline import TgateStableVideoDiffusionPipeline

    return TgateStableVideoDiffusionPipeline(**tiny_svd_components())


MODEL = VideoModel(
    key="svd",
    title="Stable Video Diffusion",
    checkpoint="stabilityai/stable-video-diffusion-img2vid-xt",
    steps=25,
    gate_step=10,
    guidance_scale=3.0,
    frames=25,
    seed=42,
    fps=7,
    load=load,
    tiny=tiny,
    size=(1024, 576),
)

if __name__ == "__main__":
    sys.exit(video_main(MODEL))
