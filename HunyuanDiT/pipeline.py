"""TGATE for HunyuanDiT: diffusers' HunyuanDiTPipeline plus ``gate_step``.

HunyuanDiT's text (BERT, 77 tokens, and mT5, 256 tokens, concatenated) enters every block through
``blocks[i].attn2``; the pooled mT5 text also enters the timestep embedding, so after the gate the branch that
runs keeps its own text there. Guidance is one batched call. Per-sample inputs of its transformer:
``hidden_states``, ``timestep``, both texts and masks, ``image_meta_size``, ``style``; ``image_rotary_emb`` is a
table per image token, not per sample.

>>> pipe = TgateHunyuanDiTPipeline.from_pretrained("Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers",
...                                                torch_dtype=torch.float16).to("cuda")
>>> image = pipe("An astronaut riding a horse", num_inference_steps=50, gate_step=20).images[0]
"""

from diffusers import HunyuanDiTPipeline

from common.pipeline import TgateMixin


class TgateHunyuanDiTPipeline(TgateMixin, HunyuanDiTPipeline):
    """``HunyuanDiTPipeline`` whose ``__call__`` also takes ``gate_step`` (TGATE)."""
