"""Write the config files of the cross-attention DiTs (Wan, LTX-Video, Sana, HunyuanDiT) into this folder.

The weights of these checkpoints cannot be downloaded here, and neither can their config files. Their
architecture is public in diffusers' own conversion scripts (``scripts/convert_*_to_diffusers.py`` of the
diffusers repository, read at commit 58eb52c0, 2026-08-23): each component below is built on the meta device from
the keyword arguments that script passes it, and its full config (the arguments plus diffusers 0.42.1's defaults
for the rest) is saved with ``save_config``. SOURCES.md says which value comes from where. Run from the
repository root: ``python common/model_configs/write_dit_configs.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

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

ROOT = Path(__file__).resolve().parent

# convert_wan_to_diffusers.py, get_transformer_config("Wan-T2V-1.3B") / ("Wan-T2V-14B") / ("Wan2.2-T2V-A14B")
# / ("Wan-I2V-14B-480p"): "diffusers_config".
WAN_COMMON = dict(added_kv_proj_dim=None, attention_head_dim=128, cross_attn_norm=True, eps=1e-6, freq_dim=256,
                  in_channels=16, out_channels=16, patch_size=(1, 2, 2), qk_norm="rms_norm_across_heads",
                  text_dim=4096)
WAN_1_3B = dict(WAN_COMMON, ffn_dim=8960, num_attention_heads=12, num_layers=30)
WAN_14B = dict(WAN_COMMON, ffn_dim=13824, num_attention_heads=40, num_layers=40)
WAN_I2V_14B = dict(WAN_14B, image_dim=1280, added_kv_proj_dim=5120, in_channels=36)


def wan_scheduler(flow_shift: float) -> UniPCMultistepScheduler:
    """convert_wan_to_diffusers.py's scheduler (flow_shift 3.0 for every T2V / I2V model it converts)."""
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000,
                                   flow_shift=flow_shift)


# convert_ltx_to_diffusers.py, version 0.9.0 (Lightricks/LTX-Video's first diffusers release): get_transformer_config
# (the "else" branch), get_vae_config("0.9.0"), the 0.9.0 scheduler.
LTX_TRANSFORMER = dict(in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
                       attention_head_dim=64, cross_attention_dim=2048, num_layers=28,
                       activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads", norm_elementwise_affine=False,
                       norm_eps=1e-6, caption_channels=4096, attention_bias=True, attention_out_bias=True)
LTX_VAE = dict(in_channels=3, out_channels=3, latent_channels=128, block_out_channels=(128, 256, 512, 512),
               down_block_types=("LTXVideoDownBlock3D",) * 4, decoder_block_out_channels=(128, 256, 512, 512),
               layers_per_block=(4, 3, 3, 3, 4), decoder_layers_per_block=(4, 3, 3, 3, 4),
               spatio_temporal_scaling=(True, True, True, False),
               decoder_spatio_temporal_scaling=(True, True, True, False),
               decoder_inject_noise=(False,) * 5, downsample_type=("conv",) * 4, upsample_residual=(False,) * 4,
               upsample_factor=(1, 1, 1, 1), patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6, scaling_factor=1.0,
               encoder_causal=True, decoder_causal=False, timestep_conditioning=False)
LTX_SCHEDULER = dict(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
                     max_image_seq_len=4096, shift_terminal=0.1)

# convert_sana_to_diffusers.py, --model_type SanaMS_1600M_P1_D20 --image_size 1024 (its defaults), flow-dpm_solver.
SANA_TRANSFORMER = dict(in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
                        num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
                        caption_channels=2304, mlp_ratio=2.5, attention_bias=False, sample_size=1024 // 32,
                        patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None)
SANA_SCHEDULER = dict(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
# convert_dcae_to_diffusers.py, get_ae_config("dc-ae-f32c32-sana-1.0").
SANA_VAE = dict(latent_channels=32, encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
                encoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                decoder_block_out_channels=(128, 256, 512, 512, 1024, 1024),
                encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)),
                encoder_layers_per_block=(2, 2, 2, 3, 3, 3), decoder_layers_per_block=(3, 3, 3, 3, 3, 3),
                downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
                decoder_act_fns="silu", scaling_factor=0.41407)

# convert_hunyuandit_to_diffusers.py loads Tencent-Hunyuan/HunyuanDiT-Diffusers' transformer config from the Hub and
# sets use_style_cond_and_image_meta_size False for v1.2; the sizes are Tencent's DiT-g/2 (HunyuanDiT repository,
# hydit/modules/models.py, HUNYUAN_DIT_CONFIG: depth 40, hidden 1408, patch 2, 16 heads, mlp_ratio 4.3637), the
# text widths diffusers' defaults (CLIP-like BERT 1024 x 77 tokens, mT5-XL 2048 x 256 tokens).
HUNYUANDIT_TRANSFORMER = dict(num_attention_heads=16, attention_head_dim=88, in_channels=4, patch_size=2,
                              activation_fn="gelu-approximate", sample_size=128, hidden_size=1408, num_layers=40,
                              mlp_ratio=4.3637, learn_sigma=True, cross_attention_dim=1024, norm_type="layer_norm",
                              cross_attention_dim_t5=2048, pooled_projection_dim=1024, text_len=77, text_len_t5=256,
                              use_style_cond_and_image_meta_size=False)
# HunyuanDiT repository, hydit/constants.py SAMPLER_FACTORY["ddpm"] (the pipeline's DDPMScheduler).
HUNYUANDIT_SCHEDULER = dict(steps_offset=1, clip_sample=False, clip_sample_range=1.0, beta_schedule="scaled_linear",
                            beta_start=0.00085, beta_end=0.03, prediction_type="v_prediction")


def save(component, folder: str) -> None:
    path = ROOT / folder
    path.mkdir(parents=True, exist_ok=True)
    component.save_config(path)  # config.json for a model, scheduler_config.json for a scheduler


def build(model_class, **config):
    with torch.device("meta"):
        return model_class(**config)


def main() -> None:
    save(build(WanTransformer3DModel, **WAN_1_3B), "wan/transformer")
    save(build(AutoencoderKLWan), "wan/vae")  # the conversion script's AutoencoderKLWan(): its defaults are Wan 2.1's
    save(wan_scheduler(3.0), "wan/scheduler")
    save(build(WanTransformer3DModel, **WAN_14B), "wan21-14b/transformer")
    save(build(WanTransformer3DModel, **WAN_14B), "wan22/transformer")  # high-noise expert
    save(build(WanTransformer3DModel, **WAN_14B), "wan22/transformer_2")  # low-noise expert, same architecture
    save(wan_scheduler(3.0), "wan22/scheduler")
    (ROOT / "wan22" / "model_index.json").write_text(json.dumps(
        {"_class_name": "WanPipeline", "boundary_ratio": 0.875, "expand_timesteps": False}, indent=2) + "\n")
    save(build(WanTransformer3DModel, **WAN_I2V_14B), "wan-i2v/transformer")
    save(build(LTXVideoTransformer3DModel, **LTX_TRANSFORMER), "ltx/transformer")
    save(build(AutoencoderKLLTXVideo, **LTX_VAE), "ltx/vae")
    save(FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER), "ltx/scheduler")
    save(build(SanaTransformer2DModel, **SANA_TRANSFORMER), "sana/transformer")
    save(build(AutoencoderDC, **SANA_VAE), "sana/vae")
    save(DPMSolverMultistepScheduler(**SANA_SCHEDULER), "sana/scheduler")
    save(build(HunyuanDiT2DModel, **HUNYUANDIT_TRANSFORMER), "hunyuandit/transformer")
    save(DDPMScheduler(**HUNYUANDIT_SCHEDULER), "hunyuandit/scheduler")


if __name__ == "__main__":
    main()
