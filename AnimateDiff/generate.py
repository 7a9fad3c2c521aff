"""Generate a TGATE video with AnimateDiff (SD-1.5 + motion adapter): `cd AnimateDiff && python generate.py --help`.

Defaults: the diffusers AnimateDiff documentation's example (Realistic Vision V5.1 with the
animatediff-motion-adapter-v1-5-2, DDIM with linear betas, 16 frames, 25 steps, guidance 7.5, seed 42), gate 10.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

from common.video_cli import VideoModel, video_main  # noqa: E402

MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"


def load(args, dtype):
    from diffusers import DDIMScheduler, MotionAdapter

    from AnimateDiff.pipeline import TgateAnimateDiffPipeline

    adapter = MotionAdapter.from_pretrained(args.motion_adapter, torch_dtype=dtype)
    pipe = TgateAnimateDiffPipeline.from_pretrained(args.model or MODEL.checkpoint, motion_adapter=adapter,
                                                    torch_dtype=dtype)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, timestep_spacing="linspace",
                                               beta_schedule="linear", steps_offset=1)
    return pipe


def tiny():
    from AnimateDiff.pipeline import TgateAnimateDiffPipeline
    from common.tiny_pipelines import tiny_animatediff_components

    return TgateAnimateDiffPipeline(**tiny_animatediff_components())


def motion_adapter_argument(parser):
    parser.add_argument("--motion-adapter", default=MOTION_ADAPTER,
                        help=f"hub id or folder of the MotionAdapter (default: {MOTION_ADAPTER})")


MODEL = VideoModel(
    key="animatediff",
    title="AnimateDiff",
    checkpoint="SG161222/Realistic_Vision_V5.1_noVAE",
    steps=25,
    gate_step=10,
    guidance_scale=7.5,
    frames=16,
    seed=42,
    fps=8,
    load=load,
    tiny=tiny,
    prompt=("masterpiece, bestquality, highlydetailed, ultradetailed, sunset, orange sky, warm lighting, fishing "
            "boats, ocean waves seagulls, rippling water, wharf, silhouette, serene atmosphere, dusk, evening glow, "
            "golden hour, coastal landscape, seaside scenery"),
    negative_prompt="bad quality, worse quality",
    extra_arguments=motion_adapter_argument,
)

if __name__ == "__main__":
    sys.exit(video_main(MODEL))
