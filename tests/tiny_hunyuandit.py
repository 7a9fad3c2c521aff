"""Tiny HunyuanDiT components for the batch tests (BERT and T5 text encoders built in code, no downloads)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import DDPMScheduler, HunyuanDiT2DModel
from transformers import BertConfig, BertModel, BertTokenizer

from common.tiny import TINY_CHARACTERS, tiny_t5_encoder, tiny_t5_tokenizer, tiny_vae

DIM = 32


def tiny_bert_tokenizer() -> BertTokenizer:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_CHARACTERS]
    path = Path(tempfile.mkdtemp()) / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return BertTokenizer(str(path), model_max_length=77)


def tiny_hunyuandit_components(seed: int = 0) -> dict:
    """A 2-block HunyuanDiT at 8x VAE (HunyuanDiT sizes its rotary table as height // 8 // patch)."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_bert_tokenizer(), tiny_t5_tokenizer()
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=DIM, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=2 * DIM), add_pooling_layer=False).eval()
    transformer = HunyuanDiT2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, in_channels=4,
        cross_attention_dim=DIM, cross_attention_dim_t5=DIM, pooled_projection_dim=16, hidden_size=24,
        activation_fn="gelu-approximate", text_len=77, text_len_t5=256,
    ).eval()
    return {
        "transformer": transformer,
        "vae": tiny_vae(block_out_channels=(4, 4, 4, 4), mid_block_attention=False),
        "scheduler": DDPMScheduler(),
        "text_encoder": bert,
        "tokenizer": tokenizer,
        "text_encoder_2": tiny_t5_encoder(tokenizer_2),
        "tokenizer_2": tokenizer_2,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
