"""The inputs the cross-attention DiT pipelines hand their transformer, at a given size (no weights needed).

``dit_denoiser_inputs`` makes the keyword arguments of one transformer call of each family, with the shapes its
diffusers 0.42 pipeline uses (``architectures.denoiser_inputs`` dispatches here for these classes):

- Wan 2.1 / 2.2 (``WanTransformer3DModel``): latents ``(B, 16, (F - 1) // 4 + 1, H / 8, W / 8)`` (the VAE
  compresses 4x in time, 8x in space; patches 1x2x2), the UMT5 text padded to 512 tokens of ``text_dim``; I2V
  also 36 input channels (latents, the first frame's latents and its mask) and 257 CLIP ViT-H/14 image tokens of
  ``image_dim`` (``encoder_hidden_states_image``). Guidance is two calls of batch B, not one of 2B.
- LTX-Video (``LTXVideoTransformer3DModel``): latents packed to ``(B, F' * H' * W', 128)`` with ``F' = (F - 1) // 8
  + 1``, ``H' = H / 32``; the T5 text padded to 128 tokens with its mask; the latent grid and the RoPE scale
  ``(8 / frame_rate, 32, 32)`` (frame rate 25).
- Sana (``SanaTransformer2DModel``): DC-AE latents ``(B, 32, H / 32, W / 32)``; the Gemma-2 text padded to 300
  tokens with its mask.
- HunyuanDiT (``HunyuanDiT2DModel``): latents ``(B, 4, H / 8, W / 8)``; the BERT text (77 tokens, mask) and the
  mT5 text (256 tokens, mask); ``image_meta_size`` (6 numbers), ``style`` and the 2-D RoPE table of the latent
  grid (one row per image token, batch-independent).

These are each family's released VAE and pipeline default. Another checkpoint of a family (the Wan toy: a 2x VAE,
16 text tokens) passes its own: ``vae=(space, time)`` and ``text_tokens`` (``flop_count.model_sampling_macs``
reads them from the registry model's configs: ``architectures.vae_factors`` and ``text_tokens``).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    HunyuanDiT2DModel,
    LTXVideoTransformer3DModel,
    SanaTransformer2DModel,
    WanTransformer3DModel,
)
from diffusers.models.embeddings import get_2d_rotary_pos_embed
from diffusers.pipelines.hunyuandit.pipeline_hunyuandit import get_resize_crop_region_for_grid

# config "_class_name" -> class, merged into architectures.DENOISER_CLASSES
DIT_CLASSES = {
    "WanTransformer3DModel": WanTransformer3DModel,
    "LTXVideoTransformer3DModel": LTXVideoTransformer3DModel,
    "SanaTransformer2DModel": SanaTransformer2DModel,
    "HunyuanDiT2DModel": HunyuanDiT2DModel,
}
DIT_TYPES = tuple(DIT_CLASSES.values())

# Pixels per latent (space, time) of each family's VAE, as the pipelines compute them.
WAN_VAE = (8, 4)  # AutoencoderKLWan (2.1): 8x in space, 4x in time
LTX_VAE = (32, 8)  # AutoencoderKLLTXVideo 0.9.0
SANA_VAE = 32  # DC-AE f32c32
HUNYUANDIT_VAE = 8  # SDXL's AutoencoderKL (sdxl-vae-fp16-fix)
# Text tokens each pipeline pads its prompts to (its ``max_sequence_length`` / tokenizer lengths).
WAN_TEXT_TOKENS = 512
WAN_IMAGE_TOKENS = 257  # CLIP ViT-H/14 at 224 px: 16 x 16 patches + the class token (penultimate hidden states)
LTX_TEXT_TOKENS = 128
LTX_FRAME_RATE = 25
SANA_TEXT_TOKENS = 300
HUNYUANDIT_TEXT_TOKENS = (77, 256)  # BERT (CLIP-like), mT5
HUNYUANDIT_BASE_SIZE = 512  # the RoPE grid's crop region is relative to a 512-px image


def is_dit(denoiser: torch.nn.Module) -> bool:
    return isinstance(denoiser, DIT_TYPES)


def is_video(denoiser: torch.nn.Module) -> bool:
    return isinstance(denoiser, (WanTransformer3DModel, LTXVideoTransformer3DModel))


def family_vae(denoiser: torch.nn.Module, vae: tuple[int, int] | None = None) -> tuple[int, int]:
    """(space, time) pixels and frames per latent: ``vae`` where given, else the family's released VAE's
    (time 1 for the image models)."""
    if vae is not None:
        return vae
    if isinstance(denoiser, WanTransformer3DModel):
        return WAN_VAE
    if isinstance(denoiser, LTXVideoTransformer3DModel):
        return LTX_VAE
    if isinstance(denoiser, SanaTransformer2DModel):
        return SANA_VAE, 1
    return HUNYUANDIT_VAE, 1


def size_multiple(denoiser: torch.nn.Module, vae: tuple[int, int] | None = None) -> int:
    """Heights and widths must be multiples of this: the VAE's spatial factor times the patch size."""
    config = denoiser.config
    patch = config.patch_size[1] if isinstance(denoiser, WanTransformer3DModel) else config.patch_size
    return family_vae(denoiser, vae)[0] * patch


def latent_frames(denoiser: torch.nn.Module, frames: int, vae: tuple[int, int] | None = None) -> int:
    """Latent frames of a ``frames``-frame video (1 for the image models)."""
    if is_video(denoiser):
        return (frames - 1) // family_vae(denoiser, vae)[1] + 1
    return 1


def image_tokens(denoiser: torch.nn.Module, height: int, width: int, frames: int = 1,
                 vae: tuple[int, int] | None = None) -> int:
    """Tokens the transformer's self-attention sees at this size (Wan 2.1-1.3B, 832x480x81: 32,760)."""
    multiple = size_multiple(denoiser, vae)
    return latent_frames(denoiser, frames, vae) * (height // multiple) * (width // multiple)


def dit_denoiser_inputs(
    denoiser: torch.nn.Module,
    batch: int,
    height: int,
    width: int,
    frames: int = 1,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    vae: tuple[int, int] | None = None,
    text_tokens: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments of one call of a DiT at ``height`` x ``width`` pixels (and ``frames`` frames for Wan and
    LTX-Video) for ``batch`` samples, shaped as its pipeline makes them (module docstring). Values are random
    (none on the ``meta`` device); device and dtype default to the transformer's. ``vae`` (space, time) and
    ``text_tokens`` replace the family's released VAE factors and text length (HunyuanDiT's two fixed text
    lengths stay)."""
    if not is_dit(denoiser):
        raise TypeError(f"not a cross-attention DiT of this module: {type(denoiser).__name__}")
    parameter = next(denoiser.parameters())
    device = parameter.device if device is None else torch.device(device)
    dtype = parameter.dtype if dtype is None else dtype
    multiple = size_multiple(denoiser, vae)
    space = family_vae(denoiser, vae)[0]
    for name, value in (("height", height), ("width", width)):
        if value < multiple or value % multiple:
            raise ValueError(f"the {name} must be a positive multiple of {multiple} pixels, got {value}")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    config = denoiser.config

    def random(*shape: int) -> torch.Tensor:
        if device.type == "meta":
            return torch.empty(shape, device=device, dtype=dtype)
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)

    def ones(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.ones(shape, device=device, dtype=dtype)

    timestep = torch.full((batch,), 999, device=device)
    if isinstance(denoiser, WanTransformer3DModel):
        inputs = {
            "hidden_states": random(batch, config.in_channels, latent_frames(denoiser, frames, vae), height // space,
                                    width // space),
            "timestep": timestep,
            "encoder_hidden_states": random(batch, text_tokens or WAN_TEXT_TOKENS, config.text_dim),
            "return_dict": False,
        }
        if config.image_dim is not None:  # I2V: the CLIP image tokens enter attn2 through add_k_proj / add_v_proj
            inputs["encoder_hidden_states_image"] = random(batch, WAN_IMAGE_TOKENS, config.image_dim)
        return inputs
    if isinstance(denoiser, LTXVideoTransformer3DModel):
        grid = (latent_frames(denoiser, frames, vae), height // space, width // space)
        tokens = text_tokens or LTX_TEXT_TOKENS
        return {
            "hidden_states": random(batch, grid[0] * grid[1] * grid[2], config.in_channels),
            "encoder_hidden_states": random(batch, tokens, config.caption_channels),
            "timestep": timestep,
            "encoder_attention_mask": ones(batch, tokens),
            "num_frames": grid[0],
            "height": grid[1],
            "width": grid[2],
            "rope_interpolation_scale": (family_vae(denoiser, vae)[1] / LTX_FRAME_RATE, space, space),
            "return_dict": False,
        }
    if isinstance(denoiser, SanaTransformer2DModel):
        tokens = text_tokens or SANA_TEXT_TOKENS
        return {
            "hidden_states": random(batch, config.in_channels, height // space, width // space),
            "encoder_hidden_states": random(batch, tokens, config.caption_channels),
            "encoder_attention_mask": ones(batch, tokens),
            "timestep": timestep,
            "return_dict": False,
        }
    # HunyuanDiT, as HunyuanDiTPipeline.__call__ builds its inputs
    grid = (height // space // config.patch_size, width // space // config.patch_size)
    base = HUNYUANDIT_BASE_SIZE // space // config.patch_size
    rotary = get_2d_rotary_pos_embed(denoiser.inner_dim // denoiser.num_heads,
                                     get_resize_crop_region_for_grid(grid, base), grid, output_type="pt")
    bert, t5 = HUNYUANDIT_TEXT_TOKENS
    return {
        "hidden_states": random(batch, config.in_channels, height // space, width // space),
        "timestep": timestep,
        "encoder_hidden_states": random(batch, bert, config.cross_attention_dim),
        "text_embedding_mask": ones(batch, bert, dtype=torch.long),
        "encoder_hidden_states_t5": random(batch, t5, config.cross_attention_dim_t5),
        "text_embedding_mask_t5": ones(batch, t5, dtype=torch.long),
        "image_meta_size": torch.tensor([[height, width, height, width, 0, 0]], dtype=dtype).to(device).repeat(batch, 1),
        "style": torch.zeros(batch, dtype=torch.long, device=device),
        "image_rotary_emb": tuple(table.to(device=device, dtype=dtype) for table in rotary),
        "return_dict": False,
    }
