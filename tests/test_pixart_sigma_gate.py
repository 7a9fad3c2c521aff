"""TGATE on PixArt-Sigma: stock equivalence and an explicit step-by-step loop on tiny random components, the
folder's generate.py, and the MACs of the real architecture.

PixArtSigmaPipeline is PixArt-Alpha's loop with prompts padded to 300 T5 tokens and no resolution or
aspect-ratio conditions (``added_cond_kwargs`` holds two Nones); like PixArtAlphaPipeline it has no
``callback_on_step_end`` and decides guidance once.
"""

import json
import re
import runpy
import sys
from pathlib import Path

import pytest
import torch
from diffusers import PixArtSigmaPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from common.architectures import build_denoiser, denoiser_inputs, text_tokens, vae_scale_factor
from common.models import CONFIG_ROOT, MODELS, PAPER_MODELS
from common.tiny import tiny_pixart_sigma_components
from eval import macs, macs_paper, macs_tables
from PixArt_sigma.pipeline import TgatePixArtSigmaPipeline
from tests.tgate_checks import (
    assert_gated_run,
    pipeline_is_stock,
    quiet,
    record_denoiser_calls,
    reference_cross_attention_gate,
)

ROOT = Path(__file__).resolve().parent.parent
STEPS = 5
PROMPT = "an astronaut sitting in a diner, eating fries"
LATENT = 128  # the tiny transformer is of the 1024-px family: sizes bin to 1024 px, latents 128x128
SIGMA_TOKENS = 300  # PixArtSigmaPipeline's max_sequence_length


@pytest.fixture(scope="module")
def components():
    return tiny_pixart_sigma_components(seed=0)


def run(pipe, seed=0, **kwargs):
    kwargs.setdefault("prompt", PROMPT)
    kwargs.setdefault("num_inference_steps", STEPS)
    # clean_caption needs bs4 and ftfy; without them diffusers falls back to lowercasing, as here
    return pipe(generator=torch.Generator().manual_seed(seed), output_type="latent", clean_caption=False,
                **kwargs).images


@torch.no_grad()  # as the pipeline: the same attention kernels
def explicit_tgate_latents(components, gate, prompt=PROMPT, negative_prompt="", guidance_scale=4.5, seed=0):
    """TGATE on PixArt-Sigma written out step by step, independent of common/: the reference for the pipeline.

    Sigma's transformer gets the 300-token T5 embeddings with their mask and no size conditions.
    """
    encoder = PixArtSigmaPipeline(**components)
    positive, positive_mask, negative, negative_mask = encoder.encode_prompt(
        prompt, True, negative_prompt=negative_prompt, device=torch.device("cpu"), clean_caption=False,
    )
    assert positive.shape[1] == negative.shape[1] == SIGMA_TOKENS
    transformer, scheduler = components["transformer"], components["scheduler"]
    latents = randn_tensor((positive.shape[0], 4, LATENT, LATENT), generator=torch.Generator().manual_seed(seed))
    scheduler.set_timesteps(STEPS)
    latents = latents * scheduler.init_noise_sigma

    def denoise(latent_input, t, context, mask):
        noise = transformer(latent_input, encoder_hidden_states=context, encoder_attention_mask=mask,
                            timestep=t.expand(latent_input.shape[0]),
                            added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        return noise.chunk(2, dim=1)[0]  # learned sigma: the first 4 channels are the noise

    with reference_cross_attention_gate(transformer, gate, guided=True) as step:
        for index, t in enumerate(scheduler.timesteps):
            step.index = index
            model_input = scheduler.scale_model_input(latents, t)
            if index < gate:
                uncond, cond = denoise(torch.cat([model_input, model_input]), t, torch.cat([negative, positive]),
                                       torch.cat([negative_mask, positive_mask])).chunk(2)
                noise = uncond + guidance_scale * (cond - uncond)
            else:  # after the gate: the negative branch alone
                noise = denoise(model_input, t, negative, negative_mask)
            latents = scheduler.step(noise, t, latents).prev_sample
    return latents


def test_tiny_components_are_sigma_shaped(components):
    transformer = components["transformer"]
    assert not transformer.use_additional_conditions and transformer.config.sample_size == 128
    assert type(components["scheduler"]).__name__ == "DPMSolverMultistepScheduler"


@pytest.mark.parametrize("gate_step", [None, STEPS, STEPS + 3])
def test_gate_at_or_after_last_step_is_stock_bit_for_bit(components, gate_step):
    stock = run(quiet(PixArtSigmaPipeline(**components)))
    tgate = run(quiet(TgatePixArtSigmaPipeline(**components)), gate_step=gate_step)
    assert torch.equal(stock, tgate)


@pytest.mark.parametrize("gate_step", [2, STEPS - 1])
@pytest.mark.parametrize(
    "case",
    [dict(prompt=PROMPT), dict(prompt=["an astronaut", "fries in a diner, analog film"], negative_prompt="blurry")],
    ids=["batch-1", "batch-2"],
)
def test_gating_equals_explicit_loop(components, gate_step, case):
    tgate = run(quiet(TgatePixArtSigmaPipeline(**components)), gate_step=gate_step, **case)
    assert tgate.shape[0] == (len(case["prompt"]) if isinstance(case["prompt"], list) else 1)
    assert torch.equal(tgate, explicit_tgate_latents(components, gate_step, **case))


def test_cache_is_the_mean_of_the_guidance_halves_and_after_the_gate_nothing_else_runs(components):
    pipe = quiet(TgatePixArtSigmaPipeline(**components))
    calls = record_denoiser_calls(pipe.transformer, pipe.transformer.pos_embed,
                                  lambda: run(pipe, gate_step=2, prompt=["a", "b"]))
    assert len(calls) == STEPS
    assert_gated_run(calls, pipe.transformer, gate=2, images=2, guided=True)
    assert pipeline_is_stock(pipe)


# --- The registry entry and generate.py -------------------------------------------------------------------


def test_registry_entry_has_the_official_readme_settings():
    spec = MODELS["pixart_sigma"]
    assert spec.checkpoint == "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
    assert (spec.steps, spec.gate_step, spec.guidance_scale, spec.resolution) == (25, 15, 4.5, 1024)
    assert (spec.sp_interval, spec.fi_interval, spec.warm_up) == (3, 1, 2)  # TGATE-V2's: generate.py's defaults
    assert spec.scheduler is None and spec.seed == MODELS["pixart_alpha"].seed
    assert spec.prompt == "an astronaut sitting in a diner, eating fries, cinematic, analog film."
    assert (MODELS["pixart_alpha"].sp_interval, MODELS["pixart_alpha"].fi_interval,
            MODELS["pixart_alpha"].warm_up) == (1, 1, 0)  # the v1 defaults of every other entry
    assert spec.paper_row(tgate=False) is None and spec.paper_v2_row(tgate=False)["macs_T"] == 107.766
    assert "pixart_sigma" not in PAPER_MODELS  # the v1 table's six: Sigma is in the V2 table only


def test_configs_are_the_projects_own_shared_by_reference():
    spec = MODELS["pixart_sigma"]
    assert spec.component_config_dir("transformer") == CONFIG_ROOT / "pixart_sigma" / "transformer"
    assert spec.component_config_dir("vae") == CONFIG_ROOT / "sdxl" / "vae"
    assert spec.component_config_dir("text_encoder") == CONFIG_ROOT / "pixart_alpha" / "text_encoder"
    assert spec.component_config_dir("scheduler") == CONFIG_ROOT / "pixart_alpha" / "scheduler"
    for component in ("transformer", "vae", "text_encoder", "scheduler"):
        assert any(spec.component_config_dir(component).glob("*config.json")), component
    assert vae_scale_factor(spec) == 8


def test_generate_script_runs_tiny_end_to_end(monkeypatch, capsys, tmp_path):
    out = tmp_path / "img.png"
    monkeypatch.chdir(ROOT / "PixArt_sigma")
    monkeypatch.setattr(sys, "argv", ["generate.py", "--tiny", "--steps", "3", "--gate", "2", "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("generate.py", run_name="__main__")
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "PixArt-Sigma | tiny random | 3 steps, gate 2, guidance 4.5, seed 10086" in printed
    assert "the image is noise" in printed
    assert Image.open(out).size == (1024, 1024)  # PixArt bins sizes to 1024 px


# --- MACs of the real architecture --------------------------------------------------------------------------


def documented_parameter_count():
    text = (CONFIG_ROOT / "SOURCES.md").read_text()
    return int(re.search(r"^\| PixArt-Sigma transformer \| ([\d,]+)", text, re.M).group(1).replace(",", ""))


def test_real_transformer_builds_on_meta_with_300_tokens_and_no_size_conditions():
    spec = MODELS["pixart_sigma"]
    transformer = build_denoiser(spec)
    assert next(transformer.parameters()).device.type == "meta"
    assert sum(p.numel() for p in transformer.parameters()) == documented_parameter_count()
    assert not transformer.use_additional_conditions
    assert (text_tokens(spec), text_tokens(MODELS["pixart_alpha"]), text_tokens(MODELS["sd15"])) == (300, 120, None)
    inputs = denoiser_inputs(transformer, 2, spec.resolution, tokens=text_tokens(spec))
    assert inputs["encoder_hidden_states"].shape == (2, 300, 4096)
    assert inputs["added_cond_kwargs"] == {"resolution": None, "aspect_ratio": None}


def test_macs_cli_counts_the_v2_table_row(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert macs.main(["--model", "pixart_sigma", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())  # the V2 table's row only: Sigma is not in the v1 table
    assert (row["model"], row["steps"], row["gate"]) == ("pixart_sigma", 25, 15)
    assert (row["sp_interval"], row["fi_interval"], row["warm_up"]) == (3, 1, 2)
    assert macs_tables.format_count(row["macs_baseline"], "macs_baseline") == "107.759T"
    paper = MODELS["pixart_sigma"].paper_v2_row(tgate=False)["macs_T"] * 1e12  # 107.766T
    assert abs(macs_paper.deviation(row["macs_baseline"], paper)) <= macs_paper.TOLERANCE
    # TGATE-V2 at gate 15 with sp 3, fi 1, warm-up 2 (v1 at gate 15 would be 82.940T)
    assert macs_tables.format_count(row["macs_tgate"], "macs_tgate") == "74.417T"
    paper = MODELS["pixart_sigma"].paper_v2_row(tgate=True)["macs_T"] * 1e12  # 74.420T
    assert abs(macs_paper.deviation(row["macs_tgate"], paper)) <= macs_paper.TOLERANCE
    assert row["params_baseline"] == documented_parameter_count() > row["params_tgate"]
    assert "107.759T" in capsys.readouterr().out
