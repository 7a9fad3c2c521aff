"""eval/observation.py on tiny random components: output shapes, text switching, x0, convergence, gate sweep."""

import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from common.architectures import VAE_SCALE_FACTOR, denoiser_inputs
from common.gate import cross_attention_modules
from common.models import MODELS
from common.schedule import TgateSchedule
from common.step_macs import calflops_macs
from eval import observation
from eval.observation_probes import (
    clean_latents_from_prediction,
    level_of,
    predicted_clean_latents,
    watch_scheduler_steps,
)
ROOT = Path(__file__).resolve().parent.parent
STEPS = 5


def settings(key, *argv):
    return observation.parse_args(["--tiny", "--model", key, "--steps", str(STEPS), *argv])


def tiny_pipe(key):
    pipe = MODELS[key].tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pixels(image):
    return np.asarray(image).astype(int)


def stock_image(pipe, run_settings, **change):
    return pipe(generator=observation.generator(run_settings.seed), **{**run_settings.call(), **change}).images[0]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- The command: every output, with the expected shape ------------------------------------------------------


def test_tiny_run_writes_every_output_with_its_shape(tmp_path, capsys, monkeypatch):
    figures = {}

    def keep_figure(name):  # keep the figures main saves, to read their grids
        draw = getattr(observation, name)

        def drawn(*args, **kwargs):
            figures[name] = draw(*args, **kwargs)
            return figures[name]

        monkeypatch.setattr(observation, name, drawn)

    keep_figure("observation_figure")
    keep_figure("gate_sweep_figure")
    argv = ["--split", "2", "--show-steps", "1,3,5", "--gates", "1,2,5", "--out", str(tmp_path)]
    assert observation.main(["--tiny", "--model", "sd15", "--steps", str(STEPS), *argv]) == 0
    printed = capsys.readouterr().out
    assert printed.count("TINY RANDOM WEIGHTS") == 2  # before and after the run

    grid = figures["observation_figure"].axes[0].get_gridspec().get_geometry()
    assert grid == (3, 3 + 1)  # three text schedules x (three steps + the final image)
    assert figures["gate_sweep_figure"].axes[0].get_gridspec().get_geometry() == (1, 3)
    for name in ("observation.png", "convergence.png", "gate_sweep.png"):
        assert (tmp_path / name).stat().st_size > 0

    convergence = read_csv(tmp_path / "convergence.csv")
    # the tiny SD UNet has cross-attention in down block 0, the mid block and up block 1
    levels = ["down 0", "mid", "up 1"]
    assert [(int(row["step"]), row["level"]) for row in convergence] == [
        (step, level) for step in range(2, STEPS + 1) for level in levels]
    assert all(float(row["relative_change"]) > 0 and row["weights"] == "tiny random components"
               for row in convergence)

    sweep = read_csv(tmp_path / "gate_sweep.csv")
    assert [int(row["gate"]) for row in sweep] == [1, 2, 5]
    gate_macs = [int(row["macs"]) for row in sweep]
    assert gate_macs[0] < gate_macs[1] < gate_macs[2] == int(sweep[0]["stock_macs"])  # gate 5 of 5 steps is stock

    report = json.loads((tmp_path / "run.json").read_text())
    assert report["random_weights"] is True and "TINY RANDOM WEIGHTS" in report["warning"]
    assert report["figure_rows"] == ["text in every step", "text only in steps 1-2 (null text after)",
                                     "text only in steps 3-5 (null text before)"]
    assert len(report["convergence"]) == len(convergence) and len(report["gate_sweep"]) == 3


def test_script_runs_from_the_repository_root(tmp_path):
    env = dict(os.environ)
    result = subprocess.run(
        [sys.executable, "eval/observation.py", "--tiny", "--model", "sd21", "--steps", "3", "--parts", "convergence",
         "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(read_csv(tmp_path / "convergence.csv")) == (3 - 1) * 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["convergence.csv", "convergence.png", "run.json"]


def test_a_registry_model_with_a_local_checkpoint_needs_no_code_change(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoint"
    tiny_pipe("sd15").save_pretrained(folder)
    local = dataclasses.replace(MODELS["sd15"], key="local_sd", title="local SD", checkpoint=str(folder), steps=3)
    monkeypatch.setitem(MODELS, "local_sd", local)
    out = tmp_path / "out"
    assert observation.main(["--model", "local_sd", "--parts", "convergence", "--out", str(out)]) == 0
    report = json.loads((out / "run.json").read_text())
    assert report["weights"] == str(folder) and report["random_weights"] is False and report["warning"] is None


# --- Text in some steps only -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sd15", "sdxl", "pixart_alpha", "lcm_sdxl"])
def test_text_only_until_a_split_at_or_beyond_the_last_step_is_the_stock_image(key):
    run_settings = settings(key, "--split", str(STEPS), "--out", "unused")
    pipe = tiny_pipe(key)
    schedule = observation.text_schedules(STEPS, STEPS)[1]
    run = observation.observe(pipe, run_settings, schedule, observation.null_text_for(pipe, run_settings),
                              previews=[1, STEPS])
    assert np.array_equal(pixels(run.image), pixels(stock_image(pipe, run_settings)))


def test_null_text_under_guidance_is_the_unconditional_prediction():
    # SD's unconditional text is the empty prompt: no text in any step = the empty prompt without guidance
    run_settings = settings("sd15", "--split", str(STEPS), "--out", "unused")
    pipe = tiny_pipe("sd15")
    no_text = observation.text_schedules(STEPS, STEPS)[2]
    run = observation.observe(pipe, run_settings, no_text, observation.null_text_for(pipe, run_settings))
    empty = stock_image(pipe, run_settings, prompt="", guidance_scale=1.0)
    assert np.abs(pixels(run.image) - pixels(empty)).max() <= 1  # one batch of two vs one of one: rounding
    assert np.abs(pixels(run.image) - pixels(stock_image(pipe, run_settings))).max() > 10


def test_null_text_of_sdxl_is_its_zeroed_negative_conditioning():
    # SDXL zeroes the negative embeddings of an empty negative prompt (force_zeros_for_empty_prompt)
    run_settings = settings("sdxl", "--split", str(STEPS), "--out", "unused")
    pipe = tiny_pipe("sdxl")
    no_text = observation.text_schedules(STEPS, STEPS)[2]
    run = observation.observe(pipe, run_settings, no_text, observation.null_text_for(pipe, run_settings))
    zeros = dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 64), pooled_prompt_embeds=torch.zeros(1, 32))
    unconditional = stock_image(pipe, run_settings, guidance_scale=1.0, **zeros)
    assert np.abs(pixels(run.image) - pixels(unconditional)).max() <= 1


def test_null_text_without_guidance_is_the_empty_prompt():
    run_settings = settings("lcm_sdxl", "--split", str(STEPS), "--out", "unused")
    pipe = tiny_pipe("lcm_sdxl")
    no_text = observation.text_schedules(STEPS, STEPS)[2]
    run = observation.observe(pipe, run_settings, no_text, observation.null_text_for(pipe, run_settings))
    assert np.array_equal(pixels(run.image), pixels(stock_image(pipe, run_settings, prompt="")))


def test_text_switches_exactly_at_the_split():
    split = 2
    run_settings = settings("sd15", "--out", "unused")
    pipe = tiny_pipe("sd15")
    every, early, late = observation.text_schedules(split, STEPS)
    null_text = observation.null_text_for(pipe, run_settings)
    steps = list(range(1, STEPS + 1))
    runs = {name: observation.observe(pipe, run_settings, schedule, null_text, previews=steps)
            for name, schedule in (("every", every), ("early", early), ("late", late))}
    nowhere = observation.observe(pipe, run_settings, observation.text_schedules(STEPS, STEPS)[2], null_text,
                                  previews=steps)

    def same(a, b, step):
        return np.array_equal(pixels(a.previews[step]), pixels(b.previews[step]))

    # steps 1..split: "early" has the text like "every", "late" has none like "nowhere"; then it diverges
    assert all(same(runs["early"], runs["every"], step) for step in range(1, split + 1))
    assert all(same(runs["late"], nowhere, step) for step in range(1, split + 1))
    assert not same(runs["early"], runs["every"], split + 1)
    assert not same(runs["late"], nowhere, split + 1)


# --- The predicted clean image -----------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_x0_from_the_noise_prediction_equals_dpm_solvers_own(prediction_type):
    scheduler = DPMSolverMultistepScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            prediction_type=prediction_type, steps_offset=1)
    scheduler.set_timesteps(STEPS)
    noise = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=noise)
    derived, own = [], []
    with watch_scheduler_steps(scheduler, lambda record: derived.append(predicted_clean_latents(scheduler, record))):
        for timestep in scheduler.timesteps:
            sample = scheduler.step(torch.randn(1, 4, 8, 8, generator=noise), timestep, sample).prev_sample
            own.append(scheduler.model_outputs[-1])  # DPM-Solver++ keeps its x0 prediction there
    assert len(derived) == STEPS
    for ours, theirs in zip(derived, own):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_x0_is_the_schedulers_own_where_its_output_has_one():
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction", clip_sample=False)
    scheduler.set_timesteps(STEPS)
    sample, prediction = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    timestep = scheduler.timesteps[1]
    records = []
    with watch_scheduler_steps(scheduler, records.append):
        as_tuple = scheduler.step(prediction, timestep, sample, return_dict=False)
    own = predicted_clean_latents(scheduler, records[0])
    assert own is records[0].output.pred_original_sample and torch.equal(as_tuple[1], own)
    torch.testing.assert_close(clean_latents_from_prediction(scheduler, prediction, timestep, sample), own)


def test_x0_under_a_respaced_sigma_schedule_is_refused():
    scheduler = DPMSolverMultistepScheduler(use_karras_sigmas=True)
    scheduler.set_timesteps(STEPS)
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        clean_latents_from_prediction(scheduler, torch.zeros(1), scheduler.timesteps[0], torch.zeros(1))


def test_scheduler_step_is_restored_after_watching():
    scheduler = DDIMScheduler()
    with watch_scheduler_steps(scheduler):
        assert "step" in scheduler.__dict__
    assert "step" not in scheduler.__dict__


# --- Convergence ------------------------------------------------------------------------------------------------


def test_convergence_rows_equal_a_direct_computation():
    run_settings = settings("sd15", "--out", "unused")
    pipe = tiny_pipe("sd15")
    names = {module: name for name, module in pipe.unet.named_modules()}
    outputs = {module: [] for module in cross_attention_modules(pipe.unet)}
    handles = [module.register_forward_hook(lambda m, args, out: outputs[m].append(out.chunk(2)))
               for module in outputs]
    try:
        stock_image(pipe, run_settings)
    finally:
        for handle in handles:
            handle.remove()
    run = observation.observe(pipe, run_settings, observation.text_schedules(2, STEPS)[0], record_change=True)
    rows = observation.convergence_rows(run_settings, run)

    level = {"down_blocks": "down 0", "mid_block": "mid", "up_blocks": "up 1"}
    expected = {}
    for module, halves in outputs.items():
        means = [((uncond + cond) / 2).double() for uncond, cond in halves]
        for step in range(2, STEPS + 1):
            change = (means[step - 1] - means[step - 2]).norm() / means[step - 2].norm()
            expected.setdefault((step, level[names[module].split(".")[0]]), []).append(float(change))
    assert len(rows) == len(expected) == (STEPS - 1) * 3
    for row in rows:
        changes = expected[(row["step"], row["level"])]
        assert row["modules"] == len(changes)
        assert row["relative_change"] == pytest.approx(sum(changes) / len(changes), rel=1e-9)
        assert row["timestep"] == float(pipe.scheduler.timesteps[row["step"] - 1])


def test_levels_of_unet_and_pixart_modules():
    assert level_of("down_blocks.2.attentions.1.transformer_blocks.0.attn2", 0).name == "down 2"
    assert level_of("mid_block.attentions.0.transformer_blocks.3.attn2", 0).name == "mid"
    assert level_of("up_blocks.0.attentions.2.transformer_blocks.9.attn2", 0).name == "up 0"
    ranks = [level_of(name, 0).rank for name in ("down_blocks.1.a", "mid_block.a", "up_blocks.0.a", "up_blocks.2.a")]
    assert ranks == sorted(ranks)
    # PixArt-alpha's 28 blocks in four groups of seven
    groups = [level_of(f"transformer_blocks.{index}.attn2", 28).name for index in range(28)]
    assert list(dict.fromkeys(groups)) == ["blocks 1-7", "blocks 8-14", "blocks 15-21", "blocks 22-28"]
    assert [level_of(f"transformer_blocks.{index}.attn2", 2).name for index in range(2)] == ["block 1", "block 2"]


# --- Gate sweep --------------------------------------------------------------------------------------------------


def test_gate_sweep_counts_macs_like_eval_macs_and_its_last_gate_is_stock():
    run_settings = settings("sd15", "--gates", "2,5", "--out", "unused")
    pipe = tiny_pipe("sd15")
    points = observation.gate_sweep(pipe, run_settings)
    assert [point.gate for point in points] == [2, 5]
    assert np.array_equal(pixels(points[-1].image), pixels(stock_image(pipe, run_settings)))
    assert not np.array_equal(pixels(points[0].image), pixels(points[-1].image))
    # stock: one guided forward (batch 2) per step, counted on the tiny UNet itself at its 16x16 latents
    inputs = denoiser_inputs(pipe.unet, 2, 16 * VAE_SCALE_FACTOR)
    assert points[-1].macs == points[-1].stock_macs == STEPS * calflops_macs(pipe.unet, inputs)
    assert points[0].macs < points[0].stock_macs and all(point.seconds > 0 for point in points)


def test_gate_sweep_runs_tgate_v2_and_counts_its_macs():
    run_settings = settings("sd15", "--gates", "3,5", "--sp-interval", "2", "--out", "unused")
    assert run_settings.schedule == TgateSchedule(10, sp_interval=2)  # the model's gate and intervals, sp given
    assert settings("pixart_sigma").schedule == TgateSchedule(15, sp_interval=3, warm_up=2)  # the registry's V2
    pipe = tiny_pipe("sd15")
    points = observation.gate_sweep(pipe, run_settings)
    v1 = observation.gate_sweep(pipe, settings("sd15", "--gates", "3,5", "--out", "unused"))
    for point, call in zip(points, [dict(gate_step=3, sp_interval=2), dict(gate_step=5, sp_interval=2)]):
        assert np.array_equal(pixels(point.image), pixels(stock_image(pipe, run_settings, **call)))
    # gate 5 of 5 with sp 2 reuses self-attention at steps 1 and 3: fewer MACs than stock, and not the stock image
    assert points[-1].macs < points[-1].stock_macs == v1[-1].macs
    assert all(point.macs < before.macs for point, before in zip(points, v1))
    assert "= stock" not in observation.gate_caption(points[-1], STEPS, run_settings.v1)


# --- Bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--split", "0"], "--split must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--steps", "1", "--parts", "convergence"], "needs --steps >= 2"),
        (["--steps", "4", "--show-steps", "1,9"], "step 9 is beyond --steps 4"),
        (["--show-steps", "0,3"], "steps are counted from 1"),
        (["--gates", "two"], "expected whole numbers separated by commas"),
        (["--gates", "0"], "steps are counted from 1"),
        (["--guidance", "-1"], "--guidance must be >= 0"),
        (["--resolution", "30"], "--resolution must be a positive multiple of 8"),
        (["--checkpoint", "somewhere"], "drop --checkpoint or --tiny"),
        (["--model", "sd3"], "invalid choice: 'sd3'"),
        (["--parts", "everything"], "invalid choice: 'everything'"),
        (["--sp-interval", "0"], "--sp-interval must be an int >= 1"),
        (["--warm-up", "-1"], "--warm-up must be an int >= 0"),
    ],
)
def test_bad_arguments_exit_with_a_short_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        observation.main(["--tiny", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_float16_on_the_cpu_is_accepted():  # torch 2.14 runs it (tests/test_generate_cli.py)
    assert observation.parse_args(["--tiny", "--dtype", "float16", "--device", "cpu"]).dtype == torch.float16


def test_missing_weights_name_the_folder_and_how_to_provide_them(tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    assert observation.main(["--model", "sd15", "--checkpoint", str(missing), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--checkpoint PATH" in err and "--tiny" in err and "Traceback" not in err
