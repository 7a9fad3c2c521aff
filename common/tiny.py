"""Tiny random components for offline smoke runs and tests: real diffusers/transformers classes, few weights.

They exercise every code path of a pipeline in well under a second per step on a CPU; the images they
make are noise.
"""

from __future__ import annotations

import string

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    LCMScheduler,
    PixArtTransformer2DModel,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from .models import get_model

TINY_CROSS_ATTENTION_DIM = 32
# the UNet shape every tiny UNet shares: 16x16 latents with SD's 4 channels, two levels
TINY_UNET = dict(sample_size=16, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                 norm_num_groups=4)
TINY_CHARACTERS = string.ascii_lowercase + string.digits + ".,!?'-:;()"


def tiny_clip_tokenizer(max_length: int = 77) -> CLIPTokenizer:
    """A character-level CLIP tokenizer: every lowercase letter, digit and common punctuation is a token."""
    characters = list(TINY_CHARACTERS)
    vocab = {character: index for index, character in enumerate(characters)}
    vocab.update({character + "</w>": len(characters) + index for index, character in enumerate(characters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_clip_text_encoder(tokenizer: CLIPTokenizer, hidden_size: int = TINY_CROSS_ATTENTION_DIM, **config):
    """A 2-layer CLIP text encoder matching ``tokenizer``; extra ``config`` goes to ``CLIPTextConfig``."""
    return CLIPTextModel(tiny_clip_text_config(tokenizer, hidden_size, **config)).eval()


def tiny_clip_text_config(tokenizer: CLIPTokenizer, hidden_size: int, **config) -> CLIPTextConfig:
    return CLIPTextConfig(
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


def tiny_vae(block_out_channels: tuple[int, ...] = (8, 16), mid_block_attention: bool = True) -> AutoencoderKL:
    """A VAE with SD's 4 latent channels; each level after the first halves the resolution (default: 2x).

    Without ``mid_block_attention`` large latents decode fast (no self-attention over every latent pixel).
    """
    levels = len(block_out_channels)
    return AutoencoderKL(
        block_out_channels=block_out_channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        mid_block_add_attention=mid_block_attention,
    ).eval()


def tiny_sd_components(seed: int = 0) -> dict:
    """Components of a StableDiffusionPipeline: 16x16 latents (32x32 images), cross-attention at two levels."""
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    unet = UNet2DConditionModel(
        **TINY_UNET,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=4,
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


def checkpoint_scheduler(key: str, scheduler_class: type):
    """``scheduler_class`` configured from the real checkpoint's scheduler config (``model_configs/<key>``, or
    the folder of the registry model it shares its scheduler with)."""
    return scheduler_class.from_config(scheduler_class.load_config(get_model(key).component_config_dir("scheduler")))


def tiny_sdxl_components(
    seed: int = 0, time_cond_proj_dim: int | None = None, scheduler_class: type = DPMSolverMultistepScheduler
) -> dict:
    """Components of a StableDiffusionXLPipeline: two CLIP encoders (the second pooled), pooled-text and
    size micro-conditioning (``text_time``), 16x16 latents (32x32 images), cross-attention in the second
    level (as SDXL, not in the first) and in the mid block. ``time_cond_proj_dim`` adds LCM's
    guidance-scale embedding. The scheduler is configured from SDXL base's scheduler config."""
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = tiny_clip_tokenizer(), tiny_clip_tokenizer()
    text_encoder = tiny_clip_text_encoder(tokenizer)
    text_encoder_2 = CLIPTextModelWithProjection(
        tiny_clip_text_config(tokenizer_2, TINY_CROSS_ATTENTION_DIM, projection_dim=TINY_CROSS_ATTENTION_DIM)
    ).eval()
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        **TINY_UNET,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        # SDXL concatenates the penultimate hidden states of both encoders
        cross_attention_dim=2 * TINY_CROSS_ATTENTION_DIM,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        # six size numbers (original size, crop corner, target size), then the pooled text embedding
        projection_class_embeddings_input_dim=6 * time_embed_dim + TINY_CROSS_ATTENTION_DIM,
        time_cond_proj_dim=time_cond_proj_dim,
    ).eval()
    return {
        "unet": unet,
        "vae": tiny_vae(),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": checkpoint_scheduler("sdxl", scheduler_class),
        "image_encoder": None,
        "feature_extractor": None,
        "add_watermarker": False,
    }


def tiny_lcm_sdxl_components(seed: int = 0) -> dict:
    """LCM-SDXL: the tiny SDXL components with a guidance-scale embedding and the LCMScheduler."""
    return tiny_sdxl_components(seed, time_cond_proj_dim=8, scheduler_class=LCMScheduler)


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A character-level T5 tokenizer built in code (no sentencepiece model is needed): T5's special tokens
    (<pad> 0, </s> 1, <unk> 2), then every character and every word-initial letter."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(character, -3.0) for character in TINY_CHARACTERS]
    pieces += [("\u2581" + letter, -2.5) for letter in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def tiny_t5_encoder(tokenizer: T5Tokenizer, hidden_size: int = TINY_CROSS_ATTENTION_DIM) -> T5EncoderModel:
    """A 2-layer T5 v1.1-style encoder (gated GELU) matching ``tokenizer``."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=hidden_size,
        d_kv=8,
        d_ff=2 * hidden_size,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config).eval()


def tiny_pixart_components(
    seed: int = 0,
    scheduler_key: str = "pixart_alpha",
    scheduler_class: type = DPMSolverMultistepScheduler,
    additional_conditions: bool = True,
) -> dict:
    """Components of a PixArtAlphaPipeline in the 1024-px family: a T5 encoder with attention masks, a
    transformer with learned sigma (8 output channels for 4 latent channels) and resolution/aspect-ratio
    conditioning (``sample_size`` 128; ``additional_conditions=False`` leaves it out, as PixArt-Sigma).
    Patches of 16 keep it tiny: 128x128 latents are 64 tokens. The pipeline bins sizes to 1024 px, so the
    VAE has PixArt's 8x scale factor."""
    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    heads, head_dim = 2, 12  # the resolution and aspect-ratio embeddings take a third of the width each
    transformer = PixArtTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=heads * head_dim,
        caption_channels=TINY_CROSS_ATTENTION_DIM,
        sample_size=128,
        patch_size=16,
        use_additional_conditions=additional_conditions,
    ).eval()
    return {
        "tokenizer": tokenizer,
        "text_encoder": tiny_t5_encoder(tokenizer),
        "transformer": transformer,
        "vae": tiny_vae(block_out_channels=(4, 4, 4, 4), mid_block_attention=False),
        "scheduler": checkpoint_scheduler(scheduler_key, scheduler_class),
    }


def tiny_lcm_pixart_components(seed: int = 0) -> dict:
    """PixArt-LCM: the tiny PixArt components with the checkpoint's LCMScheduler."""
    return tiny_pixart_components(seed, scheduler_key="lcm_pixart", scheduler_class=LCMScheduler)


def tiny_pixart_sigma_components(seed: int = 0) -> dict:
    """Components of a PixArtSigmaPipeline: the tiny PixArt ones without resolution/aspect-ratio conditioning
    (Sigma's transformer has none), with the checkpoint's DPMSolverMultistepScheduler. The real pipeline pads
    prompts to 300 T5 tokens (``max_sequence_length``); the tiny T5 takes any length."""
    return tiny_pixart_components(seed, scheduler_key="pixart_sigma", additional_conditions=False)
