"""TGATE for AnimateDiff: diffusers' AnimateDiffPipeline plus ``gate_step``.

AnimateDiff runs an SD-1.5 UNet with motion modules (``UNetMotionModel``) on every frame of the video at once:
the batch entering the UNet is ``[negative, positive]`` videos, and inside it each frame is a sample whose
cross-attention sees the prompt (repeated per frame). TGATE caches every frame's cross-attention output at the
gate (the mean of the negative and positive halves) and runs the negative branch alone afterwards; the motion
modules' temporal attention is self-attention and keeps running.

>>> adapter = MotionAdapter.from_pretrained("guoyww/animatediff-motion-adapter-v1-5-2")
>>> pipe = TgateAnimateDiffPipeline.from_pretrained("SG161222/Realistic_Vision_V5.1_noVAE", motion_adapter=adapter)
>>> frames = pipe("a boat at sunset", num_frames=16, num_inference_steps=25, gate_step=10).frames[0]
"""

from diffusers import AnimateDiffPipeline, AnimateDiffVideoToVideoPipeline

from common.pipeline import TgateMixin


class TgateAnimateDiffPipeline(TgateMixin, AnimateDiffPipeline):
    """``AnimateDiffPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE); with FreeInit, every
    FreeInit iteration is a sampling run of its own with its own gate."""


class TgateAnimateDiffVideoToVideoPipeline(TgateMixin, AnimateDiffVideoToVideoPipeline):
    """``AnimateDiffVideoToVideoPipeline`` with TGATE: ``gate_step`` counts the steps run after ``strength``."""
