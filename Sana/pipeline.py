"""TGATE for Sana: diffusers' SanaPipeline plus ``gate_step``.

Sana's self-attention (``transformer_blocks[i].attn1``) is linear attention over the DC-AE latents (32x smaller
than the image); its text (Gemma-2, 300 tokens) enters only through ``transformer_blocks[i].attn2``, which TGATE
caches at step ``gate_step - 1``. Guidance is one batched call, dropped after the gate.

>>> pipe = TgateSanaPipeline.from_pretrained("Efficient-Large-Model/Sana_1600M_1024px_diffusers",
...                                          torch_dtype=torch.bfloat16).to("cuda")
>>> image = pipe('a cyberpunk cat with a neon sign that says "Sana"', num_inference_steps=20, gate_step=8).images[0]
"""

from diffusers import SanaPipeline

from common.pipeline import TgateMixin


class TgateSanaPipeline(TgateMixin, SanaPipeline):
    """``SanaPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE)."""
