"""Tiny random components for offline smoke runs and tests: real diffusers/transformers classes, few weights.

They exercise every code path of a pipeline in well under a second per step on a CPU; the images they
make are noise.
"""

from __future__ import annotations

import string

import torch
from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_CROSS_ATTENTION_DIM = 32


def tiny_clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A character-level CLIP tokenizer: every lowercase letter, digit and common punctuation is a token."""
    characters = list(string.ascii_lowercase + string.digits + ".,!?'-:;()")
    vocab = {character: index for index, character in enumerate(characters)}
    vocab.update({character + "</w>": len(characters) + index for index, character in enumerate(characters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_clip_text_encoder(tokenizer: CLIPTokenizer, hidden_size: int = TINY_CROSS_ATTENTION_DIM, **config):
    """A 2-layer CLIP text encoder matching ``tokenizer``; extra ``config`` goes to ``CLIPTextConfig``."""
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config,
    )
    return CLIPTextModel(text_config).eval()


def tiny_vae() -> AutoencoderKL:
    """A 2-level VAE (scale factor 2) with SD's 4 latent channels."""
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    ).eval()


def tiny_sd_components(seed: int = 0) -> dict:
    """Components of a StableDiffusionPipeline: 16x16 latents (32x32 images), cross-attention at two levels."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=4,
        norm_num_groups=4,
    ).eval()
    return {
        "unet": unet,
        "vae": tiny_vae(),
        "text_encoder": tiny_clip_text_encoder(tokenizer),
        "tokenizer": tokenizer,
        "scheduler": DPMSolverMultistepScheduler(
            beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
        ),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }
