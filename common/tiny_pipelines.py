"""Tiny random components for the pipelines beyond the paper's families: ControlNet, IP-Adapter, AnimateDiff
and Stable Video Diffusion. Built in code, no download; the images and videos they make are noise.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLTemporalDecoder,
    ControlNetModel,
    EulerDiscreteScheduler,
    MotionAdapter,
    UNetMotionModel,
    UNetSpatioTemporalConditionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from .tiny import TINY_CROSS_ATTENTION_DIM, tiny_sd_components

TINY_IP_EMBED_DIM = 16  # the width of the tiny IP-Adapter's image embedding (CLIP's image_embeds)


def tiny_controlnet(unet: torch.nn.Module, seed: int = 0) -> ControlNetModel:
    """A ControlNet made from ``unet`` (diffusers' ``from_unet``), with random instead of zero output convolutions.

    ``from_unet`` zero-initialises the convolutions that feed the UNet, so a fresh ControlNet adds nothing and a
    test could not see it; here they are random, so every residual it hands the UNet matters.
    """
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    generator = torch.Generator().manual_seed(seed)
    zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                  controlnet.controlnet_cond_embedding.conv_out]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.2)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.05)
    return controlnet.eval()


def tiny_ip_adapter_state_dict(unet: torch.nn.Module, image_embed_dim: int = TINY_IP_EMBED_DIM, seed: int = 0) -> dict:
    """An IP-Adapter for ``unet`` in the layout ``unet._load_ip_adapter_weights`` reads (no download).

    ``image_proj``: the plain IP-Adapter's ``ImageProjection`` (``proj`` to 4 image tokens, ``norm``);
    ``ip_adapter``: ``to_k_ip``/``to_v_ip`` of every cross-attention layer, keyed ``1, 3, 5, ...`` in
    ``unet.attn_processors`` order, as diffusers numbers them.
    """
    generator = torch.Generator().manual_seed(seed)

    def random(*shape, scale=0.2):
        return torch.randn(shape, generator=generator) * scale

    cross_dim = unet.config.cross_attention_dim
    tokens = 4
    image_proj = {
        "proj.weight": random(tokens * cross_dim, image_embed_dim),
        "proj.bias": random(tokens * cross_dim),
        "norm.weight": 1 + random(cross_dim, scale=0.05),
        "norm.bias": random(cross_dim, scale=0.05),
    }
    modules = dict(unet.named_modules())
    ip_adapter, key = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name:
            continue
        hidden = modules[name.removesuffix(".processor")].to_k.out_features
        ip_adapter[f"{key}.to_k_ip.weight"] = random(hidden, cross_dim)
        ip_adapter[f"{key}.to_v_ip.weight"] = random(hidden, cross_dim, scale=1.0)
        key += 2
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def load_tiny_ip_adapter(pipe, seed: int = 0):
    """Load :func:`tiny_ip_adapter_state_dict` into ``pipe.unet``; call with ``ip_adapter_image_embeds=``."""
    pipe.unet._load_ip_adapter_weights([tiny_ip_adapter_state_dict(pipe.unet, seed=seed)])
    return pipe


def tiny_motion_adapter(seed: int = 0) -> MotionAdapter:
    """A MotionAdapter matching the tiny SD UNet (two levels of 16 and 32 channels, one layer each). Its
    temporal layers keep diffusers' random initialisation (no zero output projection): they change the video."""
    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=(16, 32), motion_layers_per_block=1, motion_norm_num_groups=4,
                            motion_num_attention_heads=2, motion_max_seq_length=16)
    return adapter.eval()


def tiny_animatediff_components(seed: int = 0) -> dict:
    """Components of an AnimateDiffPipeline: the tiny SD components (16x16 latents, 32x32 frames) with a
    MotionAdapter, the UNet already a UNetMotionModel (so pipelines built from these share it). Cross-attention
    runs on every frame (the text is repeated per frame); the motion modules attend across frames."""
    components = tiny_sd_components(seed=seed)
    for name in ("safety_checker", "requires_safety_checker"):
        components.pop(name)
    adapter = tiny_motion_adapter(seed)
    components["unet"] = UNetMotionModel.from_unet2d(components["unet"], adapter).eval()
    components["motion_adapter"] = adapter
    return components


def tiny_svd_components(seed: int = 0) -> dict:
    """Components of a StableVideoDiffusionPipeline: a spatio-temporal UNet whose cross-attention (spatial and
    temporal) sees the CLIP image embedding, a temporal-decoder VAE (2x: 32x32 frames, 16x16 latents), a tiny
    CLIP vision encoder (SVD resizes the conditioning image to 224 px) and SVD's Euler/v-prediction scheduler.
    SVD's blocks use 32 normalisation groups, so the channels are 32 and 64."""
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=16,
        in_channels=8,  # noisy latents and the conditioning image's latents
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        num_attention_heads=(2, 4),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=3 * 8,  # fps, motion bucket id, noise augmentation strength
    ).eval()
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    ).eval()
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=TINY_CROSS_ATTENTION_DIM, projection_dim=TINY_CROSS_ATTENTION_DIM, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=37, image_size=224, patch_size=32,
    )).eval()
    scheduler = EulerDiscreteScheduler(  # SVD-XT's scheduler config
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, interpolation_type="linear",
        num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
    )
    return {
        "unet": unet,
        "vae": vae,
        "image_encoder": image_encoder,
        "feature_extractor": CLIPImageProcessor(crop_size=32, size=32),
        "scheduler": scheduler,
    }
