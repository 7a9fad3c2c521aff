"""MACs with attention of the cross-attention DiTs (common/flop_count.py) against an independent count.

The independent count: calflops (linear layers and explicit matmuls; it skips ``scaled_dot_product_attention``)
plus ``2 x N x M x d`` per scaled-dot-product attention (``Q K^T`` and ``A V``: N queries, M keys, width d),
written here per architecture from its config. The real architectures are built on the meta device from
common/model_configs/ (no weights) at each model card's size.
"""

from __future__ import annotations

import json
import pytest
import torch

from common.architectures import build_denoiser, denoiser_config
from common.dit_architectures import dit_denoiser_inputs, image_tokens
from common.flop_count import (
    CONVENTION,
    count_macs,
    expert_switch_step,
    forward_macs,
    model_sampling_macs,
)
from common.models import get_model
from common.step_macs import calflops_macs  # calflops' own count of the linear layers (no gate rule)

T = 1e12


def sdpa_macs(key: str, denoiser, tokens: int, cross: bool = True) -> int:
    """The MACs of every scaled-dot-product attention of one forward (batch 1), named per architecture."""
    config = denoiser.config

    def attention(n: int, m: int, d: int) -> int:
        return 2 * n * m * d  # Q K^T and A V

    if key.startswith("wan"):  # blocks.*.attn1 over the video tokens; attn2 over 512 UMT5 tokens (+257 CLIP)
        width = config.num_attention_heads * config.attention_head_dim
        text = 512 + (257 if config.image_dim else 0)
        return config.num_layers * (attention(tokens, tokens, width) + cross * attention(tokens, text, width))
    if key == "ltx":  # transformer_blocks.*.attn1 over the video tokens; attn2 over 128 T5 tokens
        width = config.num_attention_heads * config.attention_head_dim
        return config.num_layers * (attention(tokens, tokens, width) + cross * attention(tokens, 128, width))
    if key == "sana":  # attn1 is linear attention (torch.matmul, which calflops counts); attn2 over 300 Gemma tokens
        width = config.num_cross_attention_heads * config.cross_attention_head_dim
        return config.num_layers * cross * attention(tokens, 300, width)
    if key == "hunyuandit":  # blocks.*.attn1; attn2 over 77 BERT + 256 mT5 tokens, concatenated
        width = config.num_attention_heads * config.attention_head_dim
        return config.num_layers * (attention(tokens, tokens, width) + cross * attention(tokens, 77 + 256, width))
    raise KeyError(key)


CROSS_ATTENTION_MODULES = {  # what TGATE caches, per architecture
    "wan": "blocks", "wan-i2v": "blocks", "ltx": "transformer_blocks", "sana": "transformer_blocks",
    "hunyuandit": "blocks",
}


def without_cross_attention(denoiser, key: str):
    """Make every cross-attention module return zeros (as if cached): the rest of the forward is unchanged."""
    blocks = getattr(denoiser, CROSS_ATTENTION_MODULES[key])
    for block in blocks:
        block.attn2.forward = lambda *args, **kwargs: torch.zeros_like(
            args[0] if args else kwargs["hidden_states"])


@pytest.mark.parametrize("key", ["wan", pytest.param("wan-i2v", marks=pytest.mark.slow), "ltx", "sana", "hunyuandit"])
def test_forward_macs_equal_calflops_plus_attention(key):
    spec = get_model(key)
    denoiser = build_denoiser(spec)
    height, width = spec.size
    frames = spec.frames or 1
    inputs = dit_denoiser_inputs(denoiser, 1, height, width, frames)
    tokens = image_tokens(denoiser, height, width, frames)
    counted = forward_macs(denoiser, inputs)

    independent = calflops_macs(denoiser, inputs) + sdpa_macs(key, denoiser, tokens)
    assert counted.total == pytest.approx(independent, rel=0.005)

    without_cross_attention(denoiser, key)
    independent_gated = calflops_macs(denoiser, inputs) + sdpa_macs(key, denoiser, tokens, cross=False)
    assert counted.without_cross_attention == pytest.approx(independent_gated, rel=0.005)
    assert 0 < counted.cross_attention < counted.total


def test_wan_run_matches_the_design_figures():
    """Wan2.1-T2V-1.3B, 832x480, 81 frames (32,760 tokens), 50 steps guided by two batch-1 calls, gate 20."""
    run = model_sampling_macs("wan")
    assert (run["height"], run["width"], run["frames"], run["steps"], run["gate_step"]) == (480, 832, 81, 50, 20)
    assert run["forward"] / T == pytest.approx(141.5, rel=0.005)
    assert run["forward_without_cross_attention"] / T == pytest.approx(135.2, rel=0.005)
    assert run["stock"] / T == pytest.approx(14150, rel=0.005)
    assert run["tgate"] / T == pytest.approx(9717, rel=0.005)
    # two calls of batch 1 per guided step, one call without cross-attention per gated step
    assert run["stock"] == 50 * 2 * run["forward"]
    assert run["tgate"] == 20 * 2 * run["forward"] + 30 * run["forward_without_cross_attention"]
    assert "attention" in run["convention"] and run["convention"] == CONVENTION


def test_an_expert_first_running_after_the_gate_runs_that_step_guided():
    """Wan 2.2 with the gate before its second expert's first step: one more guided step, one gated step less."""
    spec = get_model("wan22")
    switch = expert_switch_step(spec, spec.steps)
    small = dict(height=64, width=64, frames=5)
    before, after = model_sampling_macs("wan22", gate_step=switch + 1, **small), model_sampling_macs(
        "wan22", gate_step=switch, **small)
    gated_step = before["forward_without_cross_attention"]
    assert after["stock"] == before["stock"] == spec.steps * before["guided_step"]
    assert after["tgate"] == before["tgate"] == (switch + 1) * before["guided_step"] + (
        spec.steps - switch - 1) * gated_step


def test_batched_guidance_counts_the_batch_two_forward():
    run = model_sampling_macs("sana")
    assert run["guided_step"] == pytest.approx(2 * run["forward"], rel=1e-3)
    assert run["stock"] == run["steps"] * run["guided_step"]
    assert run["tgate"] == (run["gate_step"] * run["guided_step"]
                            + (run["steps"] - run["gate_step"]) * run["forward_without_cross_attention"])


def test_wan22_expert_switch_from_the_scheduler():
    spec = get_model("wan22")
    switch = expert_switch_step(spec, spec.steps)
    assert 0 < switch < spec.steps
    assert expert_switch_step(get_model("wan"), 50) is None
    # the two experts have the same architecture (conversion script: Wan2.2-T2V-A14B, both stages)
    assert denoiser_config(spec) == dict(
        type(build_denoiser(spec)).load_config(spec.config_dir / "transformer_2"))


def test_per_module_counts_nest():
    spec = get_model("sana")
    denoiser = build_denoiser(spec)
    count = count_macs(denoiser, dit_denoiser_inputs(denoiser, 1, 512, 512))
    block = count.per_module["transformer_blocks.0"]
    parts = ["attn1", "attn2", "ff"]
    assert sum(count.per_module[f"transformer_blocks.0.{part}"] for part in parts) <= block
    assert count.inside(r"transformer_blocks\.\d+\.attn2") == 20 * count.per_module["transformer_blocks.0.attn2"]


def test_eval_macs_counts_a_dit_model_with_attention(tmp_path, capsys):
    from eval import macs

    assert macs.main(["--model", "sana", "--gate", "5", "--json", str(tmp_path / "sana.json")]) == 0
    run = json.loads((tmp_path / "sana.json").read_text())
    assert run == model_sampling_macs("sana", gate_step=5)
    assert "TGATE run" in capsys.readouterr().out and run["tgate"] < run["stock"]


def test_the_attention_counter_counts_the_cpu_fused_kernel_as_the_meta_device_does():
    """torch's FlopCounterMode counts 0 for scaled_dot_product_attention on CPU tensors (a fused kernel with no
    formula); common.flop_count's counter counts it as on the meta device (bmm): 2 x N x M x d per head, twice."""
    from common.flop_count import attention_flop_counter

    counts = {}
    for device in ("cpu", "meta"):
        query = torch.ones(1, 4, 16, 8, device=device)
        with attention_flop_counter() as counter:
            torch.nn.functional.scaled_dot_product_attention(query, query, query)
        counts[device] = counter.get_total_flops()
    assert counts["cpu"] == counts["meta"] == 2 * (2 * 4 * 16 * 16 * 8)


def test_compare_executed_macs_on_the_wan_toy_equal_eval_macs_count(tmp_path):
    """eval/compare.py's counted run of the committed Wan toy (real CPU tensors, the pipeline's own shapes: 10
    prompts, two calls per step) against eval/macs.py's count on the meta device from the toy's configs (its 2x
    AutoencoderKLWan, its 16 text tokens, one 16x16 frame), per prompt, same steps and gate: within 0.5%."""
    from eval import compare, macs
    from eval.wan_toy.model import TEXT_LENGTH

    steps, gate = 4, 2
    assert compare.main(["--steps", str(steps), "--gate", str(gate), "--per-digit", "1", "--repeats", "1",
                         "--variants", "TGATE", "--json", str(tmp_path / "compare.json")]) == 0
    rows = {row["name"]: row for row in json.loads((tmp_path / "compare.json").read_text())["rows"]}
    assert macs.main(["--model", "wan_toy", "--steps", str(steps), "--gate", str(gate),
                      "--json", str(tmp_path / "macs.json")]) == 0
    counted = json.loads((tmp_path / "macs.json").read_text())
    assert rows["stock"]["macs_per_image"] == pytest.approx(counted["stock"], rel=0.005)
    assert rows["TGATE"]["macs_per_image"] == pytest.approx(counted["tgate"], rel=0.005)
    assert (counted["height"], counted["width"], counted["frames"]) == (16, 16, 1)
    assert (counted["text_tokens"], counted["vae_factors"]) == (TEXT_LENGTH, [2, 2])
    assert "attention" in counted["convention"]
    assert counted["stock"] == steps * 2 * counted["forward"]
