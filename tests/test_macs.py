"""eval/macs.py: TGATE's MACs counted through the gate on tiny denoisers, the real architectures, the CLI."""

import copy
import json
import re

import pytest
import torch
from calflops import calculate_flops
from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

from common.architectures import build_denoiser, denoiser_inputs
from common.models import CONFIG_ROOT, MODELS, PAPER_MODELS
from common.schedule import TgateSchedule
from common.tiny import tiny_sd_components
from common.gate import gated_sampling
from common.models import get_model
from common import step_macs
from common.step_macs import StepCounter, flop_counter_macs, projections, runs_guidance
from eval import macs, macs_paper, macs_tables

STEPS = 7


def tiny_unet(**extra):
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4, **extra,
    ).eval()


def tiny_sdxl_unet(**extra):
    # text_embeds width = projection_class_embeddings_input_dim - 6 x addition_time_embed_dim = 24
    return tiny_unet(addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=72, **extra)


def tiny_pixart():
    torch.manual_seed(0)
    return PixArtTransformer2DModel(
        num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=24, caption_channels=24, sample_size=8, patch_size=2, use_additional_conditions=True,
    ).eval()


# (denoiser, guided): SD, SDXL, LCM-SDXL (no guidance: batch 1 throughout), PixArt; 8x8 latents.
TINY_CASES = {
    "sd": (lambda: tiny_sd_components()["unet"], True),
    "sdxl": (tiny_sdxl_unet, True),
    "lcm-sdxl": (lambda: tiny_sdxl_unet(time_cond_proj_dim=8), False),
    "pixart": (tiny_pixart, True),
}
RESOLUTION = 64


class WithBoundInputs(torch.nn.Module):
    def __init__(self, denoiser, bound):
        super().__init__()
        self.denoiser, self.bound = denoiser, bound

    def forward(self, **tensors):
        return self.denoiser(**tensors, **self.bound)


def calflops_macs(denoiser, inputs):
    tensors = {k: v for k, v in inputs.items() if torch.is_tensor(v)}
    bound = {k: v for k, v in inputs.items() if not torch.is_tensor(v)}
    _, count, _ = calculate_flops(WithBoundInputs(denoiser, bound), kwargs=tensors, print_results=False,
                                  output_as_string=False)
    return count


class ReturnsZeros(torch.nn.Module):
    """Stands in for a cross-attention module that is not computed: its output has the query's shape."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states)


def attn2_modules(denoiser, kind="attn2"):
    return {name: module for name, module in denoiser.named_modules() if name.endswith(kind)}


def without_attn2(denoiser, kinds=("attn2",)):
    """A copy of ``denoiser`` whose ``attn2`` (or other ``kinds`` of) modules compute nothing."""
    stripped = copy.deepcopy(denoiser)
    for kind in kinds:
        for name in attn2_modules(stripped, kind):
            parent, _, child = name.rpartition(".")
            setattr(stripped.get_submodule(parent), child, ReturnsZeros())
    return stripped


def attn2_parameters(denoiser):
    return sum(p.numel() for module in attn2_modules(denoiser).values() for p in module.parameters())


def has_hooks(denoiser):
    return any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__ for m in denoiser.modules())


@pytest.mark.parametrize("case", TINY_CASES)
def test_tgate_total_is_gate_guided_forwards_plus_gated_forwards(case):
    make, guided = TINY_CASES[case]
    denoiser = make().to("meta")  # shapes are all calflops needs; no CPU threads to wait for
    # Independent: a stock forward (batch 2 under guidance), and batch 1 with cross-attention not computed.
    guided_forward = calflops_macs(denoiser, denoiser_inputs(denoiser, 2 if guided else 1, RESOLUTION))
    gated_forward = calflops_macs(without_attn2(denoiser), denoiser_inputs(denoiser, 1, RESOLUTION))
    assert gated_forward < guided_forward

    counter = StepCounter(denoiser, RESOLUTION, guided)
    for gate in (1, 3, STEPS - 1):
        assert counter.run_macs(STEPS, TgateSchedule(gate)) == (
            STEPS * guided_forward, gate * guided_forward + (STEPS - gate) * gated_forward
        ), gate
    assert not has_hooks(denoiser)  # the gate is removed after counting
    for gate in (STEPS, STEPS + 5):  # no step is gated: the stock run
        assert counter.run_macs(STEPS, TgateSchedule(gate)) == (STEPS * guided_forward,) * 2
        assert macs.parameter_counts(denoiser, STEPS, gate) == (sum(p.numel() for p in denoiser.parameters()),) * 2


def official_v2_step(step, gate, sp_interval, fi_interval, warm_up):
    """(self-attention computed?, before/at/after the gate) of a step: the official tgate_scheduler's rules."""
    if step < gate - 1:
        return step <= warm_up or step % sp_interval == 0, "before"
    if step == gate - 1:
        return True, "at"
    return step % fi_interval == 0, "after"


@pytest.mark.parametrize("case", TINY_CASES)
def test_v2_total_sums_the_official_step_kinds_counted_independently(case):
    make, guided = TINY_CASES[case]
    denoiser = make().to("meta")
    batch = 2 if guided else 1
    # Independent of the gate's hooks: whole forwards, and copies whose attn1 and/or attn2 compute nothing.
    guided_inputs, single_inputs = (denoiser_inputs(denoiser, size, RESOLUTION) for size in (batch, 1))
    forwards = {
        (True, "before"): calflops_macs(denoiser, guided_inputs),
        (False, "before"): calflops_macs(without_attn2(denoiser, ["attn1"]), guided_inputs),
        (True, "after"): calflops_macs(without_attn2(denoiser), single_inputs),
        (False, "after"): calflops_macs(without_attn2(denoiser, ["attn1", "attn2"]), single_inputs),
    }
    forwards[True, "at"] = forwards[True, "before"]
    assert forwards[False, "before"] < forwards[True, "before"] and forwards[False, "after"] < forwards[True, "after"]

    counter = StepCounter(denoiser, RESOLUTION, guided)
    for setting in [(3, 2, 2, 1), (5, 3, 1, 2), (1, 2, 3, 0), (STEPS, 2, 1, 0), (4, 1, 1, 0)]:
        expected = sum(forwards[official_v2_step(step, *setting)] for step in range(STEPS))
        assert counter.run_macs(STEPS, TgateSchedule(*setting)) == (STEPS * forwards[True, "before"], expected), setting
    assert not has_hooks(denoiser)  # the gate is removed after counting


def test_pixart_alpha_reproduces_the_v1_and_v2_tables_at_their_settings(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert macs.main(["--model", "pixart_alpha", "--json", str(out)]) == 0
    v1, v2 = json.loads(out.read_text())
    assert [tuple(row) for row in (v1, v2)] == [macs.ROW_KEYS] * 2
    assert (v1["gate"], v1["sp_interval"], v1["fi_interval"], v1["warm_up"]) == (8, 1, 1, 0)
    assert (v2["steps"], v2["gate"], v2["sp_interval"], v2["fi_interval"], v2["warm_up"]) == (25, 15, 3, 1, 2)
    paper = macs_paper.v2_paper_counts(MODELS["pixart_alpha"])
    assert paper == {"macs_baseline": 107.031e12, "macs_tgate": 73.971e12}
    for metric, value in paper.items():
        assert abs(macs_paper.deviation(v2[metric], value)) <= macs_paper.TOLERANCE, metric
    assert macs_tables.format_count(v2["macs_tgate"], "macs_tgate") == "73.972T"
    assert v2["macs_baseline"] == v1["macs_baseline"] and v2["macs_tgate"] > v1["macs_tgate"]  # gate 15 vs 8
    printed = capsys.readouterr().out
    assert "TGATE-V2 (official V2 README table" in printed
    assert "V2 README's setting (gate 15, sp 3, fi 1, warm-up 2); both within 0.1% of the V2 table" in printed


def test_v2_flags_count_the_requested_setting_only(tmp_path, capsys):
    out = tmp_path / "rows.json"
    common = ["--model", "sd15", "--steps", "6", "--gate", "5", "--resolution", "64"]
    assert macs.main([*common, "--sp-interval", "2", "--warm-up", "1", "--json", str(out), "--markdown"]) == 0
    (row,) = json.loads(out.read_text())
    assert (row["steps"], row["gate"], row["sp_interval"], row["fi_interval"], row["warm_up"]) == (6, 5, 2, 1, 1)
    printed = capsys.readouterr().out
    assert "| model | steps | gate | sp | fi | warm-up | MACs | MACs w/ TGATE | note |" in printed
    assert "requested setting (sp 2, fi 1, warm-up 1); no paper figure at this setting" in printed
    assert macs.main([*common, "--json", str(out)]) == 0  # the same gate, v1: self-attention at every step
    (v1,) = json.loads(out.read_text())
    assert (v1["sp_interval"], v1["fi_interval"], v1["warm_up"]) == (1, 1, 0)
    assert v1["macs_baseline"] == row["macs_baseline"] and v1["macs_tgate"] > row["macs_tgate"]


def documented_parameter_counts():
    """The parameter counts listed in common/model_configs/SOURCES.md, by model key."""
    text = (CONFIG_ROOT / "SOURCES.md").read_text()
    pixart = "PixArt-alpha / PixArt-LCM transformer"
    labels = {"sd15": "SD-1.5 UNet", "sd21": "SD-2.1 UNet", "sdxl": "SDXL UNet", "lcm_sdxl": "LCM-SDXL UNet",
              "pixart_alpha": pixart, "lcm_pixart": pixart}
    return {key: int(re.search(rf"^\| {re.escape(label)} \| ([\d,]+)", text, re.M).group(1).replace(",", ""))
            for key, label in labels.items()}


@pytest.fixture(scope="module")
def real_denoisers():
    return {key: build_denoiser(spec) for key, spec in PAPER_MODELS.items()}


def test_real_architectures_build_on_meta_with_the_documented_parameter_counts(real_denoisers):
    for key, count in documented_parameter_counts().items():
        denoiser = real_denoisers[key]
        assert next(denoiser.parameters()).device.type == "meta"
        assert sum(p.numel() for p in denoiser.parameters()) == count, key


def test_tgate_parameters_leave_out_exactly_the_attn2_modules(real_denoisers):
    for key, denoiser in real_denoisers.items():
        baseline, tgate = macs.parameter_counts(denoiser, MODELS[key].steps, MODELS[key].gate_step)
        assert attn2_modules(denoiser) and baseline - tgate == attn2_parameters(denoiser), key


def test_guidance_follows_the_pipelines_rule(real_denoisers):
    guided = {key: runs_guidance(MODELS[key], denoiser) for key, denoiser in real_denoisers.items()}
    assert guided == {"sd15": True, "sd21": True, "sdxl": True, "pixart_alpha": True,
                      "lcm_sdxl": False, "lcm_pixart": False}


def test_sd15_reproduces_the_paper_at_gate_5_not_at_the_example_gate_10(tmp_path, capsys):
    out = tmp_path / "sub" / "rows.json"
    assert macs.main(["--model", "sd15", "--json", str(out), "--markdown"]) == 0
    rows = json.loads(out.read_text())
    assert [tuple(row) for row in rows] == [macs.ROW_KEYS] * 2
    assert macs.ROW_KEYS == ("model", "steps", "gate", "sp_interval", "fi_interval", "warm_up", "macs_baseline",
                             "macs_tgate", "params_baseline", "params_tgate")
    assert all((row["sp_interval"], row["fi_interval"], row["warm_up"]) == (1, 1, 0) for row in rows)  # v1
    assert all(isinstance(row[key], int) for row in rows for key in macs.ROW_KEYS[1:])
    assert [(row["model"], row["steps"], row["gate"]) for row in rows] == [("sd15", 25, 10), ("sd15", 25, 5)]

    paper = macs_paper.paper_counts(MODELS["sd15"])
    assert paper["macs_tgate"] == 9.875e12 and paper["params_baseline"] == 859.520e6
    example, matching = rows
    assert abs(macs_paper.deviation(example["macs_tgate"], paper["macs_tgate"])) > 0.1
    for metric in macs_paper.METRICS:
        assert abs(macs_paper.deviation(matching[metric], paper[metric])) <= macs_paper.TOLERANCE, metric
    assert example["macs_baseline"] == matching["macs_baseline"]
    assert example["params_baseline"] == documented_parameter_counts()["sd15"]
    assert example["params_tgate"] == matching["params_tgate"] < example["params_baseline"]

    printed = capsys.readouterr().out
    assert printed.startswith("| model | steps | gate |")
    assert "gate 5: 5 guided steps (the last caching) + 20 gated steps; all four within 0.1% of the paper" in printed
    assert "(paper 9.875T, " in printed


@pytest.mark.parametrize("gate, macs_tgate_difference", [("5", "-0.021%"), ("10", "-"), ("20", "-"), ("25", "-")])
def test_macs_w_tgate_is_compared_with_the_paper_at_the_paper_gate_only(capsys, gate, macs_tgate_difference):
    # the paper's 9.875T is SD-1.5 at gate 5; other gates are other settings, not errors (gate 25 was "+71%")
    assert macs.main(["--model", "sd15", "--gate", gate]) == 0
    row, paper, difference = capsys.readouterr().out.splitlines()[1:4]
    paper_macs_tgate = "9.875T" if gate == "5" else "-"
    assert paper.split()[1:3] == ["16.938T", paper_macs_tgate] and difference.split()[2] == macs_tgate_difference
    assert "off the paper" not in row
    assert ("not compared: the paper's is at gate 5" in row) == (gate in ("10", "20"))


def test_a_config_folder_builds_another_checkpoint_of_the_family():
    # LCM-SDXL's UNet folder holds config.json at its root, like the latent-consistency/lcm-sdxl repository.
    denoiser = build_denoiser(MODELS["sdxl"], source=str(CONFIG_ROOT / "lcm_sdxl" / "unet"))
    assert sum(p.numel() for p in denoiser.parameters()) == documented_parameter_counts()["lcm_sdxl"]
    # A pipeline folder: the config in its unet/ subfolder.
    denoiser = build_denoiser(MODELS["sd15"], source=str(CONFIG_ROOT / "sd21"))
    assert denoiser.config.cross_attention_dim == 1024


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "sd3"], "unknown model 'sd3'"),
        (["--model", ""], "unknown model ''"),
        (["--gate", "0"], "--gate must be >= 1"),
        (["--gate", "-2"], "--gate must be >= 1"),
        (["--gate", "2.5"], "invalid int value: '2.5'"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--resolution", "-8"], "--resolution must be a positive number"),
        (["--config", "some/folder"], "--config needs --model"),
        (["--sp-interval", "0"], "--sp-interval must be an int >= 1"),
        (["--fi-interval", "0"], "--fi-interval must be an int >= 1"),
        (["--warm-up", "-1"], "--warm-up must be an int >= 0"),
    ],
)
def test_bad_arguments_exit_with_a_short_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        macs.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "sd15", "--resolution", "100"], "resolution must be a positive multiple of 8"),
        (["--model", "sd15", "--config", "/nonexistent/folder"], "no unet config in '/nonexistent/folder'"),
    ],
)
def test_inputs_the_architecture_cannot_take_return_2_with_a_message(capsys, monkeypatch, argv, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert macs.main(argv) == 2
    assert message in capsys.readouterr().err


def test_toy_is_counted_at_its_own_latent_size():
    # The toy's VAE has two levels (2x), not the table's 8x: 16 px images are 8x8 latents.
    from common.architectures import vae_scale_factor
    from common.models import get_model

    toy = get_model("toy")
    assert vae_scale_factor(toy) == 2 and vae_scale_factor(get_model("lcm_sdxl")) == 8
    unet = UNet2DConditionModel.from_pretrained(toy.checkpoint, subfolder="unet").eval()
    guided = calflops_macs(unet, denoiser_inputs(unet, 2, toy.resolution, vae_factor=2))
    assert denoiser_inputs(unet, 2, toy.resolution, vae_factor=2)["sample"].shape[-1] == 8
    row = macs.macs_row(toy)
    assert row["macs_baseline"] == toy.steps * guided


# --- DeepCache ----------------------------------------------------------------------------------------


def test_deepcache_runs_sum_full_and_partial_forwards_counted_through_the_hooks():
    denoiser = tiny_sdxl_unet().to("meta")
    counter = StepCounter(denoiser, RESOLUTION, True)
    full = counter.stock_step()
    for branch in (0, 1, 3):
        alone = TgateSchedule(None, deepcache_interval=3, deepcache_branch=branch)
        steps = counter.step_macs(alone, STEPS)
        partial = {steps[i] for i in range(STEPS) if i % 3}
        assert [steps[i] for i in range(0, STEPS, 3)] == [full] * 3 and len(partial) == 1, branch
        assert partial.pop() < full  # a partial step reuses the deep blocks: it costs less than a full one
    # with a gate: DeepCache reset at gate - 1 and gate, batch halved from the gate on
    schedule = TgateSchedule(4, deepcache_interval=2, deepcache_branch=1)
    steps = counter.step_macs(schedule, STEPS)
    gated_full = counter.step_macs(TgateSchedule(4), STEPS)[4]
    assert steps[0] == steps[2] == steps[3] == full and steps[4] == steps[6] == gated_full
    assert steps[1] < full and steps[5] < gated_full
    baseline, tgate = counter.run_macs(STEPS, schedule)
    assert baseline == sum(counter.step_macs(TgateSchedule(None, deepcache_interval=2, deepcache_branch=1), STEPS))
    assert tgate == sum(steps) < baseline
    assert not has_hooks(denoiser)


def test_a_partial_step_without_deep_features_to_reuse_is_refused():
    counter = StepCounter(tiny_sdxl_unet().to("meta"), RESOLUTION, True)
    with gated_sampling(counter.denoiser, TgateSchedule(None, deepcache_interval=2), True) as call, \
            projections(counter.denoiser) as ran:
        call.follows_loop, call.step = True, 1  # a partial step with no full step before it
        with pytest.raises(RuntimeError, match="deep blocks computed at a step planned to reuse"):
            counter._count(TgateSchedule(None, deepcache_interval=2).plan(1), ran)


@pytest.mark.slow  # the real SDXL architecture counted on the meta device (about 45 s); eval/macs.py prints it
def test_sdxl_deepcache_reproduces_the_papers_rows_at_branch_1_and_gate_13(tmp_path, capsys):
    path = tmp_path / "macs.json"
    assert macs.main(["--model", "sdxl", "--deepcache-interval", "3", "--deepcache-branch", "1",
                      "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert [tuple(row) for row in rows] == [macs.DEEPCACHE_ROW_KEYS] * 2
    assert [(row["gate"], row["deepcache_interval"], row["deepcache_branch"]) for row in rows] == [(10, 3, 1), (13, 3, 1)]
    matching = rows[1]
    assert abs(matching["macs_baseline"] / 57.888e12 - 1) < 1e-3  # DeepCache alone
    assert abs(matching["macs_tgate"] / 43.868e12 - 1) < 1e-3  # DeepCache w/ TGATE
    assert rows[0]["macs_baseline"] == matching["macs_baseline"] and rows[0]["macs_tgate"] < matching["macs_tgate"]
    out = capsys.readouterr().out
    assert "gate 13, the gate that gives the paper's DeepCache w/ TGATE (no documented setting says it)" in out
    assert "official defaults are cache_branch_id 0 and gate 10" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--deepcache-branch", "1"], "--deepcache-branch needs --deepcache-interval"),
        (["--deepcache-interval", "1"], "--deepcache-interval must be an int >= 2"),
        (["--deepcache-interval", "3", "--deepcache-branch", "-1"], "--deepcache-branch must be an int >= 0"),
        (["--model", "pixart_alpha", "--deepcache-interval", "3"], "pixart_alpha has no UNet"),
    ],
)
def test_bad_deepcache_flags_exit_with_a_short_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        macs.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_deepcache_rows_are_sdxls_at_the_matching_setting_and_the_official_defaults():
    counted = macs.Counted(get_model("lcm_sdxl"), None, None, 1024)  # not the paper's DeepCache model
    assert macs_paper.deepcache_paper_counts(counted.spec) is None
    assert macs_paper.deepcache_setting(macs_paper.DEEPCACHE_PAPER["matching_settings"]) == macs_paper.TableSetting(
        25, TgateSchedule(13, deepcache_interval=3, deepcache_branch=1))
    assert macs_paper.deepcache_setting(macs_paper.DEEPCACHE_PAPER["settings"]) == macs_paper.TableSetting(
        25, TgateSchedule(10, deepcache_interval=3, deepcache_branch=0))
    assert macs_paper.deepcache_paper_counts(get_model("sdxl")) == {"macs_baseline": 57.888e12,
                                                                  "macs_tgate": 43.868e12}


# --- The counter of one forward, per model ---------------------------------------------------------------


def test_flop_counter_macs_counts_a_linear_layer_and_goes_through_the_gate(monkeypatch):
    linear = torch.nn.Linear(8, 4, bias=False)
    assert flop_counter_macs(linear, {"input": torch.zeros(3, 8)}) == 3 * 8 * 4  # batch x in x out
    denoiser = TINY_CASES["sd"][0]().to("meta")
    counter = StepCounter(denoiser, RESOLUTION, True, count=flop_counter_macs)
    stock, tgate = counter.run_macs(STEPS, TgateSchedule(2))
    assert stock == STEPS * flop_counter_macs(denoiser, denoiser_inputs(denoiser, 2, RESOLUTION)) and tgate < stock
    # a model is counted with calflops unless the registry of counters names another one for it
    assert step_macs.macs_count_for(MODELS["sd15"]) is step_macs.calflops_macs
    monkeypatch.setitem(step_macs.MACS_COUNTERS, "sd15", flop_counter_macs)
    assert step_macs.macs_count_for(MODELS["sd15"]) is flop_counter_macs
