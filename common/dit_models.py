"""Registry entries of today's cross-attention DiTs: Wan 2.1 / 2.2, LTX-Video, Sana, HunyuanDiT (not in the paper).

Settings are each checkpoint's model card / diffusers pipeline example (size, frames, steps, guidance, scheduler);
architecture configs are in ``model_configs/<key>/`` (see SOURCES.md there). ``models.py`` merges
:data:`DIT_MODELS` into ``MODELS``.
"""

from __future__ import annotations

from .models import ModelSpec

# The default gate: 40% of the steps, the paper's 10 of 25 carried over to these models. It stays until
# eval/observation.py on real weights (where cross-attention's output converges) says better for each model.
GATE_FRACTION = 0.4


def default_gate(steps: int) -> int:
    return round(GATE_FRACTION * steps)


# diffusers' WanPipeline docstring example (the model card's), prompt and negative prompt
WAN_PROMPT = ("A cat and a dog baking a cake together in a kitchen. The cat is carefully measuring flour, while the "
              "dog is stirring the batter with a wooden spoon. The kitchen is cozy, with sunlight streaming through "
              "the window.")
WAN_NEGATIVE = ("Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, "
                "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, extra "
                "fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, fused "
                "fingers, still picture, messy background, three legs, many people in the background, walking "
                "backwards")
WAN_I2V_PROMPT = ("An astronaut hatching from an egg, on the surface of the moon, the darkness and depth of space "
                  "realised in the background. High quality, ultrarealistic detail and breath-taking movie-like "
                  "camera shot.")
# diffusers' LTXPipeline docstring example (Lightricks/LTX-Video's model card)
LTX_PROMPT = ("A woman with long brown hair and light skin smiles at another woman with long blonde hair. The woman "
              "with brown hair wears a black jacket and has a small, barely noticeable mole on her right cheek. The "
              "camera angle is a close-up, focused on the woman with brown hair's face. The lighting is warm and "
              "natural, likely from the setting sun, casting a soft glow on the scene. The scene appears to be "
              "real-life footage")
LTX_NEGATIVE = "worst quality, inconsistent motion, blurry, jittery, distorted"


def _wan(key: str, title: str, checkpoint: str, steps: int, guidance: float, height: int, width: int, **more):
    settings = dict(pipeline="Wan.pipeline:TgateWanPipeline", prompt=WAN_PROMPT,
                    tiny="common.tiny_dit:tiny_wan_components",
                    tiny_call=(("height", 16), ("width", 16), ("num_frames", 5)))
    settings.update(more)
    return ModelSpec(
        key=key, title=title, checkpoint=checkpoint, steps=steps, gate_step=default_gate(steps),
        guidance_scale=guidance, resolution=height, height=height, width=width, frames=81, seed=42,
        denoiser="transformer", loader="Wan.pipeline:load_wan", **settings,
    )


DIT_MODELS: dict[str, ModelSpec] = {
    # The model card: 480p (832x480), 81 frames, guidance 5.0, UniPC with flow_shift 3.0 ("5.0 for 720P, 3.0 for
    # 480P"), the VAE in float32; 50 steps (WanPipeline's default).
    "wan": _wan("wan", "Wan2.1-T2V-1.3B", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 50, 5.0, 480, 832,
                scheduler="UniPCMultistepScheduler", scheduler_kwargs=(("flow_shift", 3.0),),
                call_kwargs=(("negative_prompt", WAN_NEGATIVE),)),
    # Its 720p setting (1280x720, flow_shift 5.0); the architecture is the 14B one of the conversion script.
    "wan21-14b": _wan("wan21-14b", "Wan2.1-T2V-14B", "Wan-AI/Wan2.1-T2V-14B-Diffusers", 50, 5.0, 720, 1280,
                      scheduler="UniPCMultistepScheduler", scheduler_kwargs=(("flow_shift", 5.0),),
                      call_kwargs=(("negative_prompt", WAN_NEGATIVE),),
                      configs_from=(("vae", "wan"), ("scheduler", "wan"))),
    # Two experts: `transformer` (high noise, timesteps >= 0.875 * 1000, guidance 4.0) and `transformer_2` (low
    # noise, guidance_scale_2 3.0); 40 steps, 1280x720, 81 frames (model card). The checkpoint's own scheduler.
    "wan22": _wan("wan22", "Wan2.2-T2V-A14B", "Wan-AI/Wan2.2-T2V-A14B-Diffusers", 40, 4.0, 720, 1280,
                  scheduler=None, tiny="common.tiny_dit:tiny_wan22_components",
                  call_kwargs=(("negative_prompt", WAN_NEGATIVE), ("guidance_scale_2", 3.0)),
                  configs_from=(("vae", "wan"),)),
    # Image-to-video: the CLIP image tokens also enter every attn2 (add_k_proj / add_v_proj). `--image` in Wan/.
    "wan-i2v": _wan("wan-i2v", "Wan2.1-I2V-14B-480P", "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers", 50, 5.0, 480, 832,
                    pipeline="Wan.pipeline:TgateWanImageToVideoPipeline", prompt=WAN_I2V_PROMPT, scheduler=None,
                    tiny="common.tiny_dit:tiny_wan_i2v_components",
                    call_kwargs=(("negative_prompt", WAN_NEGATIVE),), configs_from=(("vae", "wan"),)),
    # The docstring example: 704x480, 161 frames, 50 steps, guidance 3.0 (LTXPipeline's default), fps 24.
    "ltx": ModelSpec(
        key="ltx", title="LTX-Video", pipeline="LTX_Video.pipeline:TgateLTXPipeline", checkpoint="Lightricks/LTX-Video",
        steps=50, gate_step=default_gate(50), guidance_scale=3.0, resolution=480, height=480, width=704, frames=161,
        prompt=LTX_PROMPT, seed=42, scheduler=None, tiny="common.tiny_dit:tiny_ltx_components",
        denoiser="transformer", call_kwargs=(("negative_prompt", LTX_NEGATIVE),),
        tiny_call=(("height", 32), ("width", 32), ("num_frames", 5)),
    ),
    # SanaPipeline's defaults: 1024 px, 20 steps, guidance 4.5; the checkpoint's flow DPM-Solver (flow_shift 3.0).
    "sana": ModelSpec(
        key="sana", title="Sana-1600M-1024px", pipeline="Sana.pipeline:TgateSanaPipeline",
        checkpoint="Efficient-Large-Model/Sana_1600M_1024px_diffusers", steps=20, gate_step=default_gate(20),
        guidance_scale=4.5, resolution=1024, prompt='a cyberpunk cat with a neon sign that says "Sana"', seed=42,
        scheduler=None, tiny="common.tiny_dit:tiny_sana_components", denoiser="transformer",
        tiny_call=(("height", 32), ("width", 32), ("use_resolution_binning", False)),
    ),
    # HunyuanDiTPipeline's defaults: 1024 px (sample_size 128 x 8), 50 steps, guidance 5.0; DDPM, v-prediction.
    "hunyuandit": ModelSpec(
        key="hunyuandit", title="HunyuanDiT-v1.2", pipeline="HunyuanDiT.pipeline:TgateHunyuanDiTPipeline",
        checkpoint="Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers", steps=50, gate_step=default_gate(50),
        guidance_scale=5.0, resolution=1024, prompt="An astronaut riding a horse", seed=42, scheduler=None,
        tiny="common.tiny_dit:tiny_hunyuandit_components", denoiser="transformer",
        configs_from=(("vae", "sdxl"),),  # sdxl-vae-fp16-fix: the SDXL VAE's architecture
        tiny_call=(("height", 32), ("width", 32), ("use_resolution_binning", False)),
    ),
}
