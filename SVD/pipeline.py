"""TGATE for Stable Video Diffusion: diffusers' StableVideoDiffusionPipeline plus ``gate_step``.

SVD has no text: its cross-attention (spatial and temporal) sees the CLIP embedding of the conditioning image,
and the negative branch is a zero embedding and zero image latents. Its guidance scale rises per frame
(``min_guidance_scale`` to ``max_guidance_scale``), a tensor, and ``do_classifier_free_guidance`` is read each
step. After the gate the UNet runs the negative branch alone and hands its prediction back for both halves,
so SVD's formula ``uncond + scale * (cond - uncond)`` returns that prediction unchanged for every frame
whatever its scale.

>>> pipe = TgateStableVideoDiffusionPipeline.from_pretrained("stabilityai/stable-video-diffusion-img2vid-xt")
>>> frames = pipe(image, decode_chunk_size=8, num_inference_steps=25, gate_step=10).frames[0]
"""

from diffusers import StableVideoDiffusionPipeline

from common.pipeline import TgateMixin


class TgateStableVideoDiffusionPipeline(TgateMixin, StableVideoDiffusionPipeline):
    """``StableVideoDiffusionPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE)."""
