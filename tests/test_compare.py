"""eval/compare.py on tiny random Wan components: every variant listed, stock's executed MACs equal an independent
count, caches that skip work count less; the fidelity measures, the Pareto front and the run meter against
references written here."""

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from common.builders import meta_copy
from common.models import get_model
from eval import compare
from eval.compare_report import pareto_front
from eval.fidelity import psnr, ssim
from eval.run_meter import LiveTensorBytes, run_counted
from eval.wan_toy.model import CALL_DEFAULTS

STEPS = 3


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    code = compare.main(["--tiny", "--steps", str(STEPS), "--per-digit", "1", "--repeats", "1", "--variants",
                         "PAB (fast)", "FasterCache (default)", "TGATE", "TGATE (gate = steps)", "TGATE-V2",
                         "TGATE + FirstBlockCache", "FirstBlockCache (default)", "MagCache (default)",
                         "TaylorSeer (lite)", "--gate", "2",
                         "--json", str(out / "out.json"), "--markdown", str(out / "out.md"),
                         "--plot", str(out / "out.png")])
    assert code == 0
    return out


def test_every_variant_is_listed_with_numbers_or_a_reason(tiny_results):
    results = json.loads((tiny_results / "out.json").read_text())
    rows = {row["name"]: row for row in results["rows"]}
    assert rows["stock"]["status"] == "ran" and rows["stock"]["psnr"] == "inf" and rows["stock"]["ssim"] == 1.0
    assert rows["stock"]["speedup"] == 1.0 and rows["stock"]["macs_fraction"] == 1.0
    assert rows["FasterCache (default)"]["status"] == "does not compose"
    assert "two calls" in rows["FasterCache (default)"]["reason"]
    ran = [row for row in results["rows"] if row["status"] == "ran"]
    assert {"FirstBlockCache", "MagCache", "PyramidAttentionBroadcast", "TaylorSeer", "TGATE", "TGATE-V2"} <= {
        r["method"] for r in ran}
    stack = rows["TGATE + FirstBlockCache"]  # runs, or says that the cache skipped TGATE's caching step
    assert stack["status"] == "ran" or "did not run at step 1, the step before the gate" in stack["reason"]
    # TGATE at gate 2 of 3: the last step is one call without cross-attention (of the stock run's two calls)
    assert rows["TGATE"]["macs_fraction"] < 5 / 6
    assert rows["TGATE (gate = steps)"]["psnr"] == "inf" and rows["TGATE (gate = steps)"]["macs_fraction"] == 1.0
    for row in ran:
        assert row["denoiser_macs"] > 0 and row["loop_seconds"] > 0 and row["peak_mb"] > 0
        assert 0 <= row["accuracy"] <= 1 and row["deterministic"] is True
    assert len(results["mag_ratios"]) == STEPS
    assert results["pareto_front_psnr"] and set(results["pareto_front_psnr"]) <= {row["name"] for row in ran}
    assert "| stock |" in (tiny_results / "out.md").read_text().replace("**", "")
    assert (tiny_results / "out.png").read_bytes()[:4] == b"\x89PNG"


def test_stock_macs_are_one_forward_counted_apart_times_two_calls_per_step(tiny_results):
    """Reference: torch's own FlopCounterMode over a single transformer forward at the run's shapes, times 2 x steps,
    on the meta device, where attention runs as the bmm torch counts (on CPU tensors its fused kernel counts 0:
    the run's counter adds it, common.flop_count.attention_flop_counter)."""
    results = json.loads((tiny_results / "out.json").read_text())
    stock = next(row for row in results["rows"] if row["name"] == "stock")
    transformer = meta_copy(get_model("wan_toy").tiny_pipeline().transformer)
    batch = 10  # one prompt per digit
    with torch.device("meta"):
        latents = torch.empty(batch, 4, 1, 8, 8)
        text = torch.empty(batch, CALL_DEFAULTS["max_sequence_length"], transformer.config.text_dim)
        timestep = torch.full((batch,), 500.0)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        transformer(latents, timestep, text)
    assert stock["denoiser_macs"] == counter.get_total_flops() // 2 * 2 * STEPS


def test_a_skipping_cache_counts_fewer_macs_than_stock(tiny_results):
    rows = {row["name"]: row for row in json.loads((tiny_results / "out.json").read_text())["rows"]}
    assert rows["PAB (fast)"]["macs_fraction"] < 1.0  # cross-attention and self-attention reused within (100, 900)
    assert rows["FirstBlockCache (default)"]["macs_fraction"] <= 1.0


def test_faster_cache_raises_index_error_on_wan_two_call_guidance_at_batch_one():
    """The claim written in FasterCache's 'does not compose' line."""
    from diffusers import FasterCacheConfig

    pipe = get_model("wan_toy").tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.enable_cache(FasterCacheConfig(current_timestep_callback=lambda: pipe.current_timestep))
    with pytest.raises(IndexError):
        pipe("the digit 3", num_inference_steps=4, **CALL_DEFAULTS)


def test_pab_gives_the_unconditional_call_the_conditional_calls_output_within_its_range():
    """The claim written in PAB's caveat: on WanPipeline's two calls per step, inside PAB's timestep range the
    uncond call's self-attention output is the cond call's of the same step; outside it the two differ."""
    from diffusers import PyramidAttentionBroadcastConfig

    pipe = get_model("wan_toy").tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.enable_cache(PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(100, 800),
        current_timestep_callback=lambda: pipe.current_timestep))
    outputs = []
    pipe.transformer.blocks[1].attn1.register_forward_hook(
        lambda module, args, output: outputs.append((float(pipe.current_timestep), output.clone())))
    pipe("the digit 3", num_inference_steps=8, **CALL_DEFAULTS)
    pairs = [(outputs[i][0], torch.equal(outputs[i][1], outputs[i + 1][1])) for i in range(0, len(outputs), 2)]
    assert len(pairs) == 8
    assert all(same == (100 < timestep < 800) for timestep, same in pairs), pairs


def test_psnr_and_ssim_against_hand_computed_values():
    a = np.full((2, 8, 8, 3), 0.5)
    b = np.full((2, 8, 8, 3), 0.6)
    assert psnr(a, b) == pytest.approx(20.0)  # MSE 0.01
    assert psnr(a, a) == math.inf and ssim(a, a) == pytest.approx(1.0)
    c1 = 0.01**2  # constant images: no variance, SSIM reduces to its luminance term
    assert ssim(a, b) == pytest.approx((2 * 0.5 * 0.6 + c1) / (0.5**2 + 0.6**2 + c1))
    noisy = np.clip(a + np.random.RandomState(0).normal(0, 0.1, a.shape), 0, 1)
    assert 0 < ssim(noisy, a) < 1
    with pytest.raises(ValueError):
        psnr(a, b[:1])


def test_pareto_front_keeps_only_undominated_variants():
    rows = [{"name": name, "status": "ran", "speedup": speed, "psnr": quality}
            for name, speed, quality in [("stock", 1.0, math.inf), ("a", 1.5, 30.0), ("b", 1.4, 25.0),
                                         ("c", 2.0, 20.0), ("d", 2.0, 19.0)]]
    rows.append({"name": "e", "status": "not run"})
    assert pareto_front(rows) == ["stock", "a", "c"]


def test_run_meter_counts_a_linear_layer_and_the_loop_peak():
    layer = torch.nn.Linear(16, 32)

    def call(callback_on_step_end):
        x = torch.randn(4, 16)
        for step in range(3):
            x = layer(x)[:, :16]
            callback_on_step_end(None, step, 0, {})
        return x

    cost = run_counted(call, layer)
    assert cost.denoiser_macs == 3 * 4 * 16 * 32
    assert cost.peak_bytes >= 4 * 32 * 4 and cost.loop_seconds > 0
    with LiveTensorBytes() as memory:
        memory.open_window()
        big = torch.zeros(1000)
        del big
        memory.close_window()
    assert memory.window_peak == 4000 and memory.live == 0


# --- real models: SDXL (a UNet, no CacheMixin) and Wan2.1 on tiny components ---------------------------------


@pytest.fixture(scope="module")
def sdxl_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare_sdxl")
    code = compare.main(["--model", "sdxl", "--tiny", "--steps", "4", "--gate", "2", "--repeats", "1",
                         "--variants", "TGATE", "TGATE (gate = steps)", "DeepCache", "TGATE + DeepCache", "PAB (docs)",
                         "TGATE + PAB (self-attention only)", "FirstBlockCache", "MagCache", "FasterCache",
                         "TaylorSeer", "--json", str(out / "out.json"), "--markdown", str(out / "out.md"),
                         "--plot", str(out / "out.png")])
    assert code == 0
    return out


def test_sdxl_tiny_comparison_lists_tgate_deepcache_and_their_stack_with_macs_and_psnr(sdxl_results):
    results = json.loads((sdxl_results / "out.json").read_text())
    rows = {row["name"]: row for row in results["rows"]}
    for name in ("stock", "TGATE", "DeepCache", "TGATE + DeepCache", "PAB (docs)"):
        assert rows[name]["status"] == "ran" and rows[name]["denoiser_macs"] > 0 and "psnr" in rows[name]
        assert "accuracy" not in rows[name]  # no toy measures on a real model
    assert rows["TGATE (gate = steps)"]["psnr"] == "inf" and rows["TGATE (gate = steps)"]["macs_fraction"] == 1.0
    assert rows["TGATE"]["macs_fraction"] < 1 and rows["DeepCache"]["macs_fraction"] < 1
    assert rows["TGATE + DeepCache"]["macs_fraction"] < rows["TGATE"]["macs_fraction"]
    assert rows["PAB (docs)"]["macs_fraction"] < 1  # PAB hooked the UNet's self-attention (apply_*, no CacheMixin)
    stack = rows["TGATE + PAB (self-attention only)"]
    assert stack["status"] == "ran" or "across TGATE's gate" in stack["reason"]
    for name in ("FirstBlockCache", "MagCache", "FasterCache", "TaylorSeer"):
        assert rows[name]["status"] == "not applicable" and rows[name]["reason"]
    assert results["weights"] == "tiny" and "tiny random weights" in results["title"]
    table = (sdxl_results / "out.md").read_text()
    assert "TINY RANDOM COMPONENTS" in table and "toy-FD" not in table and "| TGATE + DeepCache |" in table.replace(
        "**", "")
    assert (sdxl_results / "out.png").read_bytes()[:4] == b"\x89PNG"


def test_the_not_applicable_reasons_are_what_the_hook_functions_do_on_the_unet():
    """The claims of eval/compare_unet.py's lines: FirstBlockCache fails, MagCache and TaylorSeer hook nothing."""
    from diffusers.hooks import (FirstBlockCacheConfig, HookRegistry, MagCacheConfig, TaylorSeerCacheConfig,
                                 apply_first_block_cache, apply_mag_cache, apply_taylorseer_cache)

    unet = get_model("sdxl").tiny_pipeline().unet
    with pytest.raises(IndexError):
        apply_first_block_cache(unet, FirstBlockCacheConfig())
    apply_mag_cache(unet, MagCacheConfig(num_inference_steps=4, mag_ratios=[1.0] * 4))
    apply_taylorseer_cache(unet, TaylorSeerCacheConfig())
    hooked = [name for name, module in unet.named_modules()
              if isinstance(getattr(module, "_diffusers_hook", None), HookRegistry) and module._diffusers_hook.hooks]
    assert hooked == []


def test_random_weight_runs_say_so_in_title_and_table():
    from eval.compare_report import markdown_table

    results = {"rows": [], "weights": "random", "weights_note": compare.WEIGHTS_NOTES["random"],
               "conventions": {"loop_seconds": "x", "fidelity": "images"}}
    assert "RANDOM WEIGHTS" in markdown_table(results)


def test_wan_tiny_real_model_path_runs(tmp_path):
    out = tmp_path / "wan.json"
    code = compare.main(["--model", "wan", "--tiny", "--steps", "3", "--gate", "2", "--repeats", "1", "--variants",
                         "TGATE", "FasterCache (default)", "FirstBlockCache (fast)", "--json", str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    rows = {row["name"]: row for row in results["rows"]}
    assert rows["TGATE"]["status"] == "ran" and rows["TGATE"]["macs_fraction"] < 1
    assert rows["FirstBlockCache (fast)"]["status"] == "ran"  # through WanTransformer3DModel.enable_cache
    assert rows["FasterCache (default)"]["status"] == "does not compose"
    assert "Wan2.1-T2V-1.3B (tiny random weights" in results["title"] and "16x16x5" in results["title"]


def test_gpu_bench_tiny_runs_the_comparison_on_the_cpu(tmp_path):
    from eval import gpu_bench

    out = tmp_path / "gpu.json"
    assert gpu_bench.main(["--tiny", "--device", "cpu", "--compare-only", "--models", "sdxl", "--steps", "3",
                           "--gate", "2", "--repeats", "1", "--warmup", "0", "--out", str(out)]) == 0
    results = json.loads((tmp_path / "gpu_compare_sdxl.json").read_text())
    assert {"stock", "TGATE", "DeepCache", "TGATE + DeepCache"} <= {r["name"] for r in results["rows"]
                                                                    if r["status"] == "ran"}
    assert (tmp_path / "gpu_compare_sdxl.md").is_file() and not out.exists()  # no latency part was asked for
