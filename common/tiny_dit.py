"""Tiny random components of the cross-attention DiT pipelines (Wan 2.1 / 2.2 T2V and I2V, LTX-Video, Sana,
HunyuanDiT), built in code with no download; each runs stock end to end on a CPU in about a second at 1-2 steps.

Tokenizers are character-level and built from a vocabulary in code (T5 / UMT5: ``tiny.tiny_t5_tokenizer``;
Gemma and BERT below). Schedulers are the real checkpoints' (``model_configs/<key>``). The videos and images they
make are noise. Sizes the pipelines accept at these components (their VAE factors differ from the real ones'):

- Wan: 16x16-pixel multiples, frames ``4k + 1`` (VAE 8x in space, 4x in time, like the real one); try 16x16x5.
- LTX-Video: multiples of 32 px (the pipeline's check), frames ``4k + 1`` (this VAE is 4x / 4x); try 32x32x5.
- Sana: multiples of 32 px with ``use_resolution_binning=False`` (binning maps every size to >= 512 px).
- HunyuanDiT: multiples of 16 px with ``use_resolution_binning=False`` (binning maps sizes to >= 768 px).
"""

from __future__ import annotations

import json
import string

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    HunyuanDiT2DModel,
    LTXVideoTransformer3DModel,
    SanaTransformer2DModel,
    UniPCMultistepScheduler,
    WanTransformer3DModel,
)
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

from .models import get_model
from .tiny import TINY_CHARACTERS, checkpoint_scheduler, tiny_t5_encoder, tiny_t5_tokenizer, tiny_vae

TEXT_WIDTH = 32  # hidden size of every tiny text encoder


def tiny_umt5_encoder(tokenizer, hidden_size: int = TEXT_WIDTH) -> UMT5EncoderModel:
    """A 2-layer UMT5 encoder (Wan's text encoder class) matching ``tokenizer``."""
    config = UMT5Config(vocab_size=len(tokenizer), d_model=hidden_size, d_kv=8, d_ff=2 * hidden_size, num_layers=2,
                        num_heads=4, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return UMT5EncoderModel(config).eval()


def tiny_gemma_tokenizer() -> GemmaTokenizer:
    """A character-level Gemma tokenizer (Sana's), built from a vocabulary: Gemma's special tokens, the
    word-boundary piece and every character."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "\u2581": 4}
    for character in TINY_CHARACTERS + string.ascii_uppercase + '"\n':
        vocab.setdefault(character, len(vocab))
    return GemmaTokenizer(vocab=vocab, merges=[])


def tiny_bert_tokenizer() -> BertTokenizer:
    """A character-level BERT WordPiece tokenizer (HunyuanDiT's first): every character, alone or continuing."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    for character in TINY_CHARACTERS:
        vocab.setdefault(character, len(vocab))
        vocab.setdefault("##" + character, len(vocab))
    return BertTokenizer(vocab=vocab, model_max_length=77)


def tiny_wan_transformer(in_channels: int = 16, image_dim: int | None = None) -> WanTransformer3DModel:
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=in_channels, out_channels=16,
        text_dim=TEXT_WIDTH, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, image_dim=image_dim,
        added_kv_proj_dim=None if image_dim is None else 24,
    ).eval()


def tiny_wan_vae() -> AutoencoderKLWan:
    """Wan 2.1's VAE layout with 3 base channels: 8x in space, 4x in time, 16 latent channels."""
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def tiny_wan_components(seed: int = 0, key: str = "wan") -> dict:
    """Components of a WanPipeline (Wan 2.1 T2V: one transformer), the scheduler from ``model_configs/<key>``."""
    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    return {
        "tokenizer": tokenizer,
        "text_encoder": tiny_umt5_encoder(tokenizer),
        "vae": tiny_wan_vae(),
        "scheduler": checkpoint_scheduler(key, UniPCMultistepScheduler),
        "transformer": tiny_wan_transformer(),
        "transformer_2": None,
        "boundary_ratio": None,
    }


def tiny_wan22_components(seed: int = 0) -> dict:
    """Wan 2.2 T2V: two experts, ``transformer`` for timesteps >= ``boundary_ratio * 1000`` (high noise) and
    ``transformer_2`` below, with the checkpoint's ``boundary_ratio`` (0.875)."""
    components = tiny_wan_components(seed, key="wan22")
    components["transformer_2"] = tiny_wan_transformer()  # its own random weights
    index = get_model("wan22").config_dir / "model_index.json"
    components["boundary_ratio"] = json.loads(index.read_text())["boundary_ratio"]
    return components


def tiny_wan_i2v_components(seed: int = 0) -> dict:
    """Components of a WanImageToVideoPipeline (Wan 2.1 I2V): 36 input channels (noise latents, the first frame's
    latents and mask), a CLIP vision encoder whose penultimate hidden states (5 tokens at 32 px) enter every attn2
    through ``add_k_proj`` / ``add_v_proj``."""
    components = tiny_wan_components(seed, key="wan")
    vision = CLIPVisionConfig(hidden_size=8, projection_dim=8, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, intermediate_size=16, patch_size=16)
    components.update(
        transformer=tiny_wan_transformer(in_channels=36, image_dim=vision.hidden_size),
        image_encoder=CLIPVisionModel(vision).eval(),
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
    )
    return components


def tiny_ltx_components(seed: int = 0) -> dict:
    """Components of an LTXPipeline: a 1-patch transformer on 8 latent channels, a VAE of 4x in space and time
    (the real one: 32x / 8x), the T5 encoder, and the checkpoint's dynamic-shift flow-matching Euler scheduler."""
    torch.manual_seed(seed)
    tokenizer = tiny_t5_tokenizer()
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=2, caption_channels=TEXT_WIDTH,
    ).eval()
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    return {
        "tokenizer": tokenizer,
        "text_encoder": tiny_t5_encoder(tokenizer),
        "vae": vae,
        "scheduler": checkpoint_scheduler("ltx", FlowMatchEulerDiscreteScheduler),
        "transformer": transformer,
    }


def tiny_sana_components(seed: int = 0) -> dict:
    """Components of a SanaPipeline: a Gemma-2 decoder as text encoder (Sana's), a DC-AE of two levels (2x), a
    transformer with linear self-attention and 2-head cross-attention, the checkpoint's flow DPM-Solver."""
    torch.manual_seed(seed)
    tokenizer = tiny_gemma_tokenizer()
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=8, head_dim=16, intermediate_size=64, num_attention_heads=2,
        num_key_value_heads=2, num_hidden_layers=1, max_position_embeddings=8192, attn_implementation="eager",
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )).eval()
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2, attention_head_dim=4,
        num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8, caption_channels=8,
        sample_size=32,
    ).eval()
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8),
        decoder_block_out_channels=(8, 8), encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)),
        encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), downsample_block_type="conv",
        upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407,
    ).eval()
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "vae": vae,
        "scheduler": checkpoint_scheduler("sana", DPMSolverMultistepScheduler),
        "transformer": transformer,
    }


def tiny_hunyuandit_components(seed: int = 0) -> dict:
    """Components of a HunyuanDiTPipeline: a BERT encoder (77 tokens) and a T5 encoder (256 tokens), a transformer
    with skip connections, 2-D RoPE and the pooled-T5 / size / style embedding, an 8x VAE (the pipeline hard-codes
    8 in its RoPE grid), the checkpoint's DDPM (v-prediction) scheduler."""
    torch.manual_seed(seed)
    tokenizer = tiny_bert_tokenizer()
    text_encoder = BertModel(BertConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
    ), add_pooling_layer=False).eval()
    tokenizer_2 = tiny_t5_tokenizer()
    transformer = HunyuanDiT2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3, in_channels=4,
        cross_attention_dim=TEXT_WIDTH, cross_attention_dim_t5=TEXT_WIDTH, pooled_projection_dim=16, hidden_size=24,
        activation_fn="gelu-approximate", use_style_cond_and_image_meta_size=False,
    ).eval()
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "tokenizer_2": tokenizer_2,
        "text_encoder_2": tiny_t5_encoder(tokenizer_2),
        "vae": tiny_vae(block_out_channels=(4, 4, 4, 4), mid_block_attention=False),
        "scheduler": checkpoint_scheduler("hunyuandit", DDPMScheduler),
        "transformer": transformer,
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }
