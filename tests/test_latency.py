"""eval/latency.py and the GPU benchmark's Python path, offline on tiny components (no timing thresholds)."""

import dataclasses
import importlib.machinery
import json
import subprocess
import sys
import types
from pathlib import Path

import time

import pytest
import torch
from diffusers import StableDiffusionPipeline

import common.models
from common.builders import random_weights_pipeline
from common.models import MODELS
from common.pipeline import TgateMixin
from common.schedule import TgateSchedule
from common.step_macs import pipeline_counter
from eval import gpu_bench, latency, timing
from eval.latency_memory import child_argv
from eval.latency_variants import variant_macs, variant_table
from tests.tgate_checks import assert_gated_run, record_denoiser_calls

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--steps", "4", "--gate", "2", "--repeats", "1", "--warmup", "0"]


def read_record(path):
    return json.loads(Path(path).read_text())


def test_json_has_the_promised_keys_with_positive_numbers(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tgate", None)  # what importlib reports for a package not installed
    out = tmp_path / "latency.json"
    argv = ["--model", "sd15", "--tiny", "--steps", "3", "--gate", "2", "--repeats", "2", "--warmup", "0",
            "--json", str(out)]
    assert latency.main(argv) == 0
    record = read_record(out)
    assert set(latency.JSON_KEYS) <= set(record)
    assert (record["model"], record["steps"], record["gate"], record["resolution"]) == ("sd15", 3, 2, 32)
    for key in ("baseline_s", "tgate_s", "speedup", "macs_speedup"):
        assert isinstance(record[key], float) and record[key] > 0
    assert all(len(timing["runs_s"]) == 2 and min(timing["runs_s"]) > 0 for timing in record["timings"].values())
    assert record["macs_baseline"] > record["macs_tgate"] > 0  # gate 2 of 3 steps: one step on one branch
    assert record["torch_device"] == "cpu" and record["device"]
    assert record["tiny"] is True and record["random_weights"] is False  # what eval/table.py labels cells with
    assert record["overhead_pct"] is None
    assert record["official_tgate"] == "not installed" and "official_tgate_s" not in record
    # a tiny run never passes for a real one, neither in the JSON nor on screen
    assert record["weights"] == "tiny" and "TINY RANDOM COMPONENTS" in record["weights_note"]
    assert "TINY RANDOM COMPONENTS" in capsys.readouterr().out


class FakeClock:
    """Stands in for the benchmark's clock: it moves only when a test says, so every run's seconds are known."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_seconds_speedups_and_overhead_come_from_the_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing, "perf_counter", clock)
    built = latency.benchmarked_pipeline(MODELS["sd15"], "tiny", None, torch.device("cpu"), torch.float32)
    monkeypatch.setattr(latency, "benchmarked_pipeline", lambda *args, **kwargs: built)
    pipe = built.pipe
    # Known costs: a UNet step costs its batch (2 guided, 1 after the gate), the VAE decode 1, prompt encoding 1 in
    # the stock pipeline and 1.5 in the TGATE one (its hooks' overhead, here on the clock).
    pipe.unet.conv_in.register_forward_pre_hook(lambda _module, args: clock.advance(args[0].shape[0]))
    decode = pipe.vae.decode
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: (clock.advance(1), decode(*a, **k))[1])
    stock_encode = StableDiffusionPipeline.encode_prompt
    monkeypatch.setattr(StableDiffusionPipeline, "encode_prompt",
                        lambda self, *a, **k: (clock.advance(1), stock_encode(self, *a, **k))[1])
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: (clock.advance(1.5), stock_encode(pipe, *a, **k))[1])

    args = latency.parse_args(["--model", "sd15", "--tiny", "--steps", "4", "--gate", "2", "--repeats", "2",
                               "--warmup", "1", "--overhead", "--no-official"])
    record = latency.run(args, progress=False)
    timings, variants = record["timings"], record["variants"]
    # stock: 1 + 4 x 2 + 1; TGATE gate 2: 1.5 + (2 + 2 + 1 + 1) + 1; gate 4 = steps, nothing gated: 1.5 + 8 + 1
    assert [timings[name]["runs_s"] for name in ("baseline", "tgate", "no_gate")] == [[10.0] * 2, [8.5] * 2,
                                                                                      [10.5] * 2]
    assert [timings[name]["loop_runs_s"] for name in ("baseline", "tgate", "no_gate")] == [[8.0] * 2, [6.0] * 2,
                                                                                           [8.0] * 2]
    assert (record["baseline_s"], record["tgate_s"]) == (10.0, 8.5)
    assert record["speedup"] == pytest.approx(1.1764706)
    assert record["overhead_pct"] == pytest.approx(5.0)
    assert variants["tgate"]["loop_speedup"] == pytest.approx(1.3333333)
    assert variants["no_gate"]["speedup"] == pytest.approx(0.952381) and variants["no_gate"]["loop_speedup"] == 1.0
    assert variants["tgate"]["loop_vs_macs"] == pytest.approx(1.3333333 / variants["tgate"]["macs_speedup"])


def test_clock_cpu_times_runs_and_loops_on_the_process_cpu_clock_only(monkeypatch):
    wall, cpu = FakeClock(), FakeClock()
    monkeypatch.setattr(timing, "perf_counter", wall)
    monkeypatch.setattr(timing, "process_time", cpu)
    built = latency.benchmarked_pipeline(MODELS["sd15"], "tiny", None, torch.device("cpu"), torch.float32)
    monkeypatch.setattr(latency, "benchmarked_pipeline", lambda *args, **kwargs: built)
    # a UNet step costs 1 CPU second per sample and 100 wall seconds (another job holding the machine)
    built.pipe.unet.conv_in.register_forward_pre_hook(
        lambda _module, args: (cpu.advance(args[0].shape[0]), wall.advance(100), None)[-1])
    args = latency.parse_args(["--model", "sd15", "--tiny", "--steps", "4", "--gate", "2", "--repeats", "1",
                               "--warmup", "0", "--no-official", "--clock", "cpu"])
    record = latency.run(args, progress=False)
    assert record["clock"] == "cpu"
    assert [record["timings"][name]["runs_s"] for name in ("baseline", "tgate")] == [[8.0], [6.0]]
    assert [record["timings"][name]["loop_runs_s"] for name in ("baseline", "tgate")] == [[8.0], [6.0]]
    assert record["speedup"] == pytest.approx(8 / 6)


def test_clock_cpu_is_refused_off_the_cpu(capsys):
    with pytest.raises(SystemExit):
        latency.parse_args(["--model", "sd15", "--tiny", "--device", "meta", "--clock", "cpu"])
    assert "--clock cpu times the CPU's work" in capsys.readouterr().err


def test_tgate_runs_the_gated_path_and_stock_and_no_gate_do_not(monkeypatch):
    args = latency.parse_args(["--model", "sd15", "--tiny", *QUICK, "--overhead", "--no-official"])
    built = latency.benchmarked_pipeline(MODELS["sd15"], "tiny", None, torch.device("cpu"), torch.float32)
    monkeypatch.setattr(latency, "benchmarked_pipeline", lambda *args, **kwargs: built)
    unet = built.pipe.unet
    calls = record_denoiser_calls(unet, unet.conv_in, lambda: latency.run(args, progress=False))
    # one timed round, in order: stock, TGATE gate 2, TGATE gate 4 (= steps: nothing gated); 4 steps each
    assert [call.batch for call in calls] == [2] * 4 + [2, 2, 1, 1] + [2] * 4
    assert_gated_run(calls[4:8], unet, gate=2, images=1, guided=True)
    assert all(call.projections > 0 for call in calls[:4] + calls[8:])


def test_the_stock_variant_is_the_diffusers_class_on_the_same_components():
    pipe = MODELS["sd15"].tiny_pipeline()
    stock = latency.stock_pipeline(pipe)
    assert type(stock) is StableDiffusionPipeline and not isinstance(stock, TgateMixin)
    assert stock.unet is pipe.unet and stock.vae is pipe.vae and stock.scheduler is pipe.scheduler


def test_a_gate_at_the_last_step_reports_the_overhead_of_the_hooks(tmp_path):
    out = tmp_path / "overhead.json"
    argv = ["--model", "sd15", "--tiny", "--steps", "3", "--gate", "3", "--repeats", "1", "--warmup", "0",
            "--no-official", "--json", str(out)]
    assert latency.main(argv) == 0
    record = read_record(out)
    assert set(record["timings"]) == {"baseline", "tgate"}
    assert record["overhead_pct"] is not None and record["macs_speedup"] == 1.0
    assert record["official_tgate"] == "not requested"


def test_every_variant_is_timed_with_its_loop_beside_the_macs_prediction(tmp_path, capsys):
    out = tmp_path / "variants.json"
    argv = ["--model", "sd15", "--tiny", *QUICK, "--sp-interval", "2", "--fi-interval", "2", "--warm-up", "1",
            "--deepcache-interval", "2", "--deepcache-branch", "1", "--no-official", "--json", str(out)]
    assert latency.main(argv) == 0
    record = read_record(out)
    variants = record["variants"]
    assert list(variants) == ["baseline", "tgate", "tgate_v1", "deepcache", "deepcache_tgate"]
    assert variants["deepcache_tgate"]["call"] == {"gate_step": 2, "sp_interval": 1, "fi_interval": 1, "warm_up": 0,
                                                   "deepcache_interval": 2, "deepcache_branch": 1}
    assert variants["deepcache"]["call"] == {"gate_step": None, "deepcache_interval": 2, "deepcache_branch": 1}
    assert variants["tgate"]["call"] == {"gate_step": 2, "sp_interval": 2, "fi_interval": 2, "warm_up": 1}
    for name, entry in variants.items():
        timing = record["timings"][name]
        # the loop alone: shorter than the whole run, every timed run measured
        assert all(0 < loop < whole for loop, whole in zip(timing["loop_runs_s"], timing["runs_s"]))
        assert entry["loop_speedup"] > 0 and entry["loop_vs_macs"] > 0
        assert entry["peak_memory_bytes"] is None  # CPU: only with --batch-sizes, in fresh processes
    # MACs: each variant's own schedule; DeepCache skips deep blocks, TGATE cross-attention and a branch
    macs = {name: entry["macs"] for name, entry in variants.items()}
    assert macs["baseline"] == record["macs_baseline"] and macs["tgate"] == record["macs_tgate"]
    assert macs["baseline"] > macs["tgate_v1"] > macs["tgate"] and macs["baseline"] > macs["deepcache"]
    assert macs["deepcache"] > macs["deepcache_tgate"]
    assert "DeepCache + TGATE (gate 2)" in capsys.readouterr().out


def test_the_loop_clock_times_the_denoiser_steps_and_nothing_else(monkeypatch):
    built = latency.benchmarked_pipeline(MODELS["sd15"], "tiny", None, torch.device("cpu"), torch.float32)
    pipe = built.pipe
    pipe.set_progress_bar_config(disable=True)
    clock = latency.LoopClock(torch.device("cpu"))
    clock.instrument(pipe)
    stamps = []
    unet_forward = pipe.unet.forward
    monkeypatch.setattr(pipe.unet, "forward", lambda *a, **k: (stamps.append(time.perf_counter()),
                                                               unet_forward(*a, **k))[1])
    encode, decode = pipe.encode_prompt, pipe.vae.decode
    outside = []
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: (outside.append(time.perf_counter()),
                                                                encode(*a, **k))[1])
    monkeypatch.setattr(pipe.vae, "decode", lambda *a, **k: (outside.append(time.perf_counter()),
                                                             decode(*a, **k))[1])
    pipe("a cat", num_inference_steps=3, height=32, width=32, gate_step=2)
    assert len(stamps) == 3 and clock.start <= stamps[0] and stamps[-1] <= clock.end
    assert outside[0] < clock.start and outside[1] > clock.end  # prompt encoding before, VAE decode after


def test_compile_times_compiled_stock_and_tgate_after_untimed_warm_up(tmp_path):
    torch._dynamo.reset()
    out = tmp_path / "compiled.json"
    argv = ["--model", "sd15", "--tiny", "--steps", "4", "--gate", "2", "--repeats", "1", "--warmup", "1",
            "--compile", "--compile-backend", "eager", "--json", str(out)]
    from torch._dynamo.utils import counters

    counters.clear()
    assert latency.main(argv) == 0
    record = read_record(out)
    assert record["compile"] == {"mode": "default", "backend": "eager"}
    assert counters["stats"]["unique_graphs"] >= 2  # stock's and TGATE's steps compiled
    assert record["official_tgate"] == "not timed with --compile"
    assert all(len(t["runs_s"]) == 1 for t in record["timings"].values())
    torch._dynamo.reset()
    with pytest.raises(SystemExit):
        latency.parse_args(["--tiny", "--compile", "--warmup", "0"])


def test_cpu_peak_memory_comes_from_a_fresh_process_per_variant_and_batch(tmp_path, capsys):
    out = tmp_path / "memory.json"
    argv = ["--model", "sd15", "--tiny", "--steps", "2", "--gate", "1", "--repeats", "1", "--warmup", "0",
            "--threads", "1", "--no-official", "--batch-sizes", "1", "--json", str(out)]
    assert latency.main(argv) == 0
    record = read_record(out)
    assert record["batch_sizes"] == [1] and set(record["peak_memory"]) == {"baseline", "tgate"}
    for name, per_batch in record["peak_memory"].items():
        probe = per_batch["1"]
        assert probe["variant"] == name and probe["batch"] == 1
        assert probe["peak_rss_bytes"] >= probe["rss_after_build_bytes"] > 0
    assert "peak memory by images per prompt" in capsys.readouterr().out


def test_a_memory_probe_runs_without_the_parent_only_flags():
    args = latency.parse_args(["--tiny", "--gate", "2", "--batch-sizes", "1", "4", "--compile", "--json", "x.json",
                               "--compile-backend", "eager", "--overhead"])
    assert child_argv(args) == ["--tiny", "--gate", "2", "--overhead"]


def test_time_interleaved_rotates_the_order_of_the_variants():
    order = []
    variants = {name: (lambda name=name: order.append(name)) for name in "abc"}
    timings = latency.time_interleaved(variants, repeats=2, warmup=1, device=torch.device("cpu"), progress=False)
    assert order == list("abc" "bca" "cab")  # the warm-up round, then two timed rounds
    assert all(len(timing.runs) == 2 for timing in timings.values())


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--gate", "0"], "--gate must be >= 1 (the guided steps before the gate), got 0; for the stock pipeline "
         "use --gate >= --steps"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--warmup", "-1"], "--warmup must be >= 0"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--resolution", "100"], "multiple of 8"),
        (["--model", "sd3"], "unknown model 'sd3'"),
        (["--random-weights"], "not allowed with argument"),
        (["--gate", "two"], "invalid int value"),
        (["--sp-interval", "0"], "--sp-interval must be an int >= 1"),
        (["--warm-up", "-1"], "--warm-up must be an int >= 0"),
    ],
)
def test_bad_arguments_exit_with_a_short_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        latency.parse_args(["--tiny", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "gate_step" not in err  # the flag's name, never the library's argument


def test_float16_on_the_cpu_is_accepted():
    assert latency.parse_args(["--tiny", "--dtype", "float16", "--device", "cpu"]).dtype_resolved == torch.float16


def test_cuda_without_cuda_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        latency.parse_args(["--tiny", "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err


def test_a_resolution_the_model_cannot_take_is_a_clear_error(capsys):
    # the tiny PixArt transformer has 16-pixel patches: sizes must be multiples of 8 x 16 pixels
    assert latency.main(["--model", "pixart_alpha", "--tiny", *QUICK, "--resolution", "64"]) == 2
    assert "multiple of 128 pixels" in capsys.readouterr().err


def test_missing_weights_say_how_to_get_them_or_to_use_random_weights(tmp_path, capsys):
    assert latency.main(["--model", "sd15", "--checkpoint", str(tmp_path), *QUICK, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Could not load the SD-1.5 weights" in err and "--random-weights" in err


# --- Registry models added without touching the script -----------------------------------------------------


def save_tiny_sd_configs(folder: Path) -> None:
    """The architecture configs of the tiny SD components, laid out as in common/model_configs/<key>/."""
    components = MODELS["sd15"].tiny_components()
    for name in ("unet", "vae", "scheduler"):
        components[name].save_config(folder / name)
    encoder = components["text_encoder"]
    encoder.config.architectures = [type(encoder).__name__]
    encoder.config.save_pretrained(folder / "text_encoder")


def test_random_weights_build_a_registry_model_from_its_config_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(common.models, "CONFIG_ROOT", tmp_path)
    monkeypatch.setitem(MODELS, "tinysd", dataclasses.replace(MODELS["sd15"], key="tinysd"))
    save_tiny_sd_configs(tmp_path / "tinysd")
    out = tmp_path / "random.json"
    assert latency.main(["--model", "tinysd", "--random-weights", *QUICK, "--no-official", "--json", str(out)]) == 0
    record = read_record(out)
    assert record["weights"] == "random" and "RANDOM WEIGHTS" in record["weights_note"] and record["random_weights"]
    assert record["baseline_s"] > 0 and record["tgate_s"] > 0 and record["resolution"] == 32
    assert any("character-level CLIP tokenizer" in note for note in record["setup_notes"])

    built = random_weights_pipeline(MODELS["tinysd"], torch.device("cpu"), torch.float32)
    tiny = MODELS["sd15"].tiny_components()
    for name in ("unet", "vae", "text_encoder"):  # the configured architecture, fresh random weights
        ours, reference = getattr(built.pipe, name), tiny[name]
        assert [p.shape for p in ours.parameters()] == [p.shape for p in reference.parameters()]
        assert not all(torch.equal(a, b) for a, b in zip(ours.parameters(), reference.parameters()))


def test_a_registry_model_with_a_local_checkpoint_folder_needs_no_code_change(tmp_path, monkeypatch):
    MODELS["sd15"].tiny_pipeline().save_pretrained(tmp_path / "checkpoint")
    monkeypatch.setitem(MODELS, "local", dataclasses.replace(MODELS["sd15"], key="local",
                                                             checkpoint=str(tmp_path / "checkpoint")))
    out = tmp_path / "local.json"
    assert latency.main(["--model", "local", "--device", "cpu", *QUICK, "--no-official", "--json", str(out)]) == 0
    record = read_record(out)
    assert record["weights"] == "checkpoint" and record["checkpoint"] == str(tmp_path / "checkpoint")


def test_the_real_architectures_are_built_from_the_project_configs_on_the_meta_device():
    # parameter counts of common/model_configs/SOURCES.md
    sd15 = random_weights_pipeline(MODELS["sd15"], torch.device("meta"), torch.float32)
    assert sum(p.numel() for p in sd15.pipe.unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in sd15.pipe.text_encoder.parameters()) == 123_060_480
    assert sd15.prompt_inputs == {"prompt": MODELS["sd15"].prompt}
    # LCM-SDXL has only its UNet config: the rest is SDXL base's, the scheduler the registry's LCMScheduler
    lcm = random_weights_pipeline(MODELS["lcm_sdxl"], torch.device("meta"), torch.float32)
    assert sum(p.numel() for p in lcm.pipe.unet.parameters()) == 2_567_545_604
    assert sum(p.numel() for p in lcm.pipe.text_encoder_2.parameters()) == 694_659_840
    assert type(lcm.pipe.scheduler).__name__ == "LCMScheduler"
    # PixArt's 4.76B-parameter T5 encoder is replaced by random prompt embeddings of its output shape
    pixart = random_weights_pipeline(MODELS["pixart_alpha"], torch.device("meta"), torch.float32)
    assert pixart.pipe.text_encoder is None and pixart.pipe.tokenizer is None
    assert pixart.prompt_inputs["prompt_embeds"].shape == (1, 120, 4096)
    assert any("4.76B parameters" in note for note in pixart.notes)


# --- The official tgate package ----------------------------------------------------------------------------


def fake_official_package(seen: dict, fail: bool = False) -> types.ModuleType:
    """Stands in for ``tgate``: like the real one, its ``tgate`` call rewrites every attention module's
    ``forward`` and leaves a cache on it, then samples with the stock pipeline (or raises, with ``fail``)."""
    module = types.ModuleType("tgate")
    module.__spec__ = importlib.machinery.ModuleSpec("tgate", None)

    def loader(pipe):
        def tgate(gate_step, sp_interval, fi_interval, warm_up, lcm, **call):
            seen.update(gate_step=gate_step, sp_interval=sp_interval, fi_interval=fi_interval, warm_up=warm_up)
            for attention in (m for m in pipe.unet.modules() if type(m).__name__ == "Attention"):
                attention.forward = attention.forward  # an instance attribute, as the official code leaves
                attention.cache = torch.zeros(1)
            if fail:
                raise TypeError("an argument this diffusers version does not take")
            return pipe(**call)

        pipe.tgate = tgate
        return pipe

    module.TgateSDLoader = loader
    return module


def test_the_official_package_is_timed_when_importable_and_leaves_the_pipeline_stock(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setitem(sys.modules, "tgate", fake_official_package(seen))
    built = latency.benchmarked_pipeline(MODELS["sd15"], "tiny", None, torch.device("cpu"), torch.float32)
    monkeypatch.setattr(latency, "benchmarked_pipeline", lambda *args, **kwargs: built)
    record = latency.run(latency.parse_args(["--model", "sd15", "--tiny", *QUICK]), progress=False)
    assert seen == {"gate_step": 2, "sp_interval": 1, "fi_interval": 1, "warm_up": 0}
    assert record["official_tgate"] == "timed" and record["official_tgate_s"] > 0
    assert not any({"forward", "cache"} & set(module.__dict__) for module in built.pipe.unet.modules())


def test_v2_settings_reach_our_pipeline_the_official_one_the_record_and_the_macs(monkeypatch, capsys):
    seen = {}
    monkeypatch.setitem(sys.modules, "tgate", fake_official_package(seen))
    built = latency.benchmarked_pipeline(MODELS["sd15"], "tiny", None, torch.device("cpu"), torch.float32)
    monkeypatch.setattr(latency, "benchmarked_pipeline", lambda *args, **kwargs: built)
    v2 = ["--steps", "5", "--gate", "4", "--sp-interval", "2", "--warm-up", "0", "--repeats", "1", "--warmup", "0"]
    unet = built.pipe.unet
    attn1 = [m for name, m in unet.named_modules() if name.endswith("attn1")]
    ran = []
    handles = [m.to_q.register_forward_pre_hook(lambda *_: ran.append(1)) for m in attn1]
    try:
        record = latency.run(latency.parse_args(["--model", "sd15", "--tiny", *v2]), progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {"gate_step": 4, "sp_interval": 2, "fi_interval": 1, "warm_up": 0}
    assert (record["sp_interval"], record["fi_interval"], record["warm_up"]) == (2, 1, 0)
    # stock 5 steps + TGATE-V2 (steps 1 reuses: 4 of 5 steps compute self-attention) + TGATE v1 at the same gate
    # (5); the fake official runs stock
    assert len(ran) == len(attn1) * (5 + 4 + 5 + 5)
    assert record["variants"]["tgate_v1"]["call"] == {"gate_step": 4, "sp_interval": 1, "fi_interval": 1, "warm_up": 0}
    v1_baseline, v1_tgate = pipeline_counter(built.pipe, record["resolution"], True).run_macs(5, TgateSchedule(4))
    assert record["macs_baseline"] == v1_baseline and record["macs_tgate"] < v1_tgate
    assert "TGATE-V2 (gate 4, sp 2, fi 1, warm-up 0)" in latency.report(record)
    assert latency.parse_args(["--model", "sd15", "--tiny"]).schedule == TgateSchedule(10)  # the registry's: v1
    assert latency.parse_args(["--model", "pixart_sigma", "--tiny"]).schedule == TgateSchedule(
        15, sp_interval=3, warm_up=2)  # the V2 README's


def test_a_failure_of_the_official_package_is_a_short_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tgate", fake_official_package({}, fail=True))
    assert latency.main(["--model", "sd15", "--tiny", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "the official tgate package failed: TypeError" in err and "--no-official" in err


# --- The GPU benchmark --------------------------------------------------------------------------------------


def test_gpu_bench_writes_one_json_and_a_table_with_both_models_eager_and_compiled(tmp_path):
    torch._dynamo.reset()
    out = tmp_path / "gpu.json"
    argv = ["--tiny", "--device", "cpu", "--steps", "4", "--gate", "2", "--sp-interval", "2", "--fi-interval", "1",
            "--warm-up", "0", "--deepcache-interval", "2", "--repeats", "1", "--warmup", "0",
            "--compile-backend", "eager", "--out", str(out)]
    assert gpu_bench.main(argv) == 0
    summary = read_record(out)
    assert [(run["model"], bool(run["compile"])) for run in summary["rows"]] == [
        ("sd15", False), ("sd15", True), ("sdxl", False), ("sdxl", True), ("wan", False), ("wan", True)]
    variants = ["baseline", "tgate", "tgate_v1", "no_gate", "deepcache", "deepcache_tgate"]
    for run in summary["rows"]:
        expected = variants if run["model"] != "wan" else variants[:4]  # no DeepCache on a DiT
        assert set(latency.JSON_KEYS) <= set(run) and run["speedup"] > 0 and list(run["variants"]) == expected
        assert run["steps"] == 4 and (run["frames"] == 5) == (run["model"] == "wan")  # --tiny: the flags' steps
        assert all(entry["loop_median_s"] > 0 and entry["loop_vs_macs"] > 0 for entry in run["variants"].values())
        assert run["warmup"] == (1 if run["compile"] else 0)  # compiled runs are warmed up, untimed
    assert summary["weights"] == ["tiny"] and "TINY" in summary["weights_note"]
    table = out.with_suffix(".md").read_text()
    assert summary["device"] in table and table.count("DeepCache + TGATE") == 4 and "compiled (eager" in table
    torch._dynamo.reset()


def test_gpu_bench_without_cuda_fails_at_once_with_a_message(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_bench.main(["--random-weights"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_gpu_bench_sh_hands_its_flags_to_the_python_driver():
    # its parser imports common/ (torch, diffusers): seconds, a minute on a loaded 2-core machine
    result = subprocess.run(["bash", str(ROOT / "eval" / "gpu_bench.sh"), "--help"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "--random-weights" in result.stdout
    result = subprocess.run(["bash", str(ROOT / "eval" / "gpu_bench.sh"), "--repeats", "x"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and "invalid int value" in result.stderr


def test_gpu_bench_refuses_the_cpu_for_real_architectures(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_bench.main(["--random-weights", "--device", "cpu"])
    assert exit_info.value.code == 2 and "--device cpu only with --tiny" in capsys.readouterr().err


def test_macs_prediction_counts_the_timed_pipeline_at_its_own_latent_size():
    from eval.macs import macs_row

    toy = MODELS["toy"]  # a 2x VAE: its 16 px images are 8x8 latents
    table = variant_table(TgateSchedule(toy.gate_step), toy.steps)
    prediction = variant_macs(toy.load(), toy.resolution, toy.steps, True, table)
    row = macs_row(toy)
    assert (prediction["baseline"], prediction["tgate"]) == (row["macs_baseline"], row["macs_tgate"])


# --- The cross-attention DiTs (Wan first) -------------------------------------------------------------------


def test_wan_random_weights_time_a_small_video_with_attention_counted_macs(tmp_path, monkeypatch):
    from torch.utils.flop_counter import FlopCounterMode

    from common.dit_architectures import dit_denoiser_inputs

    # Wan's configs, at the tiny components' sizes, laid out as common/model_configs/<key>/ (no text encoder
    # config, as for the real Wan: its UMT5-XXL is replaced by random prompt embeddings)
    tiny = MODELS["wan"].tiny_components()  # its scheduler is the real Wan's config
    monkeypatch.setattr(common.models, "CONFIG_ROOT", tmp_path)
    monkeypatch.setitem(MODELS, "tinywan", dataclasses.replace(MODELS["wan"], key="tinywan"))
    for name in ("transformer", "vae", "scheduler"):
        tiny[name].save_config(tmp_path / "tinywan" / name)
    out = tmp_path / "wan.json"
    argv = ["--model", "tinywan", "--random-weights", "--height", "16", "--width", "32", "--frames", "5", *QUICK,
            "--json", str(out)]
    assert latency.main(argv) == 0
    record = read_record(out)
    assert (record["height"], record["width"], record["frames"]) == (16, 32, 5) and record["random_weights"]
    assert any("random prompt embeddings" in note for note in record["setup_notes"])
    assert "no WanPipeline" in record["official_tgate"] and "FlopCounterMode" in record["macs_convention"]
    # stock: 4 steps of two batch-1 calls, counted here on the guidance batch of two (the same MACs), attention in
    # on the meta device: on real CPU tensors FlopCounterMode sees no flops in the CPU's fused attention kernel
    with torch.device("meta"):
        denoiser = type(tiny["transformer"]).from_config(tiny["transformer"].config).eval()
    with FlopCounterMode(display=False) as mode, torch.no_grad():
        denoiser(**dit_denoiser_inputs(denoiser, 2, 16, 32, 5))
    assert record["macs_baseline"] == 4 * (mode.get_total_flops() // 2)
    assert record["macs_tgate"] < 0.75 * record["macs_baseline"]  # steps 2 and 3: one call, attn2 from its cache
    assert record["baseline_s"] > 0 and record["tgate_s"] > 0


def test_video_sizes_are_checked_against_the_model(tmp_path, capsys):
    assert latency.main(["--model", "wan", "--tiny", "--frames", "6", *QUICK]) == 2
    assert "--frames must be 1 + a multiple of 4" in capsys.readouterr().err
    assert latency.main(["--model", "sd15", "--tiny", "--frames", "5", *QUICK]) == 2
    assert "are for the DiT models" in capsys.readouterr().err
