"""TGATE for LTX-Video: diffusers' LTXPipeline plus ``gate_step``.

LTX-Video's transformer sees the text only through ``transformer_blocks[i].attn2`` (self-attention ``attn1`` runs
over the video's packed latent tokens), and its pipeline guides with one batched call (``[negative, positive]``):
TGATE caches every ``attn2`` output at step ``gate_step - 1`` and runs one branch per step afterwards.

>>> pipe = TgateLTXPipeline.from_pretrained("Lightricks/LTX-Video", torch_dtype=torch.bfloat16).to("cuda")
>>> video = pipe("A woman with long brown hair smiles", negative_prompt="worst quality, blurry", width=704,
...              height=480, num_frames=161, num_inference_steps=50, gate_step=20).frames[0]
>>> export_to_video(video, "ltx_tgate.mp4", fps=24)
"""

from diffusers import LTXPipeline

from common.pipeline import TgateMixin


class TgateLTXPipeline(TgateMixin, LTXPipeline):
    """``LTXPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE)."""
