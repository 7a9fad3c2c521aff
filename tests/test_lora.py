"""The optional packages of requirements.txt at work: a LoRA scale through TGATE (peft), PixArt's clean_caption
(beautifulsoup4, ftfy)."""

import logging
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from common.tiny import tiny_pixart_components, tiny_sd_components
from PixArt_alpha.pipeline import TgatePixArtAlphaPipeline
from SD_1_5.pipeline import TgateStableDiffusionPipeline
from tgate_checks import quiet

STEPS, GATE = 4, 2
REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


@pytest.fixture(scope="module")
def lora_pipe():
    """The tiny TGATE SD pipeline with a LoRA on every attention projection, built here (no download).

    ``init_lora_weights=False`` gives the LoRA random non-zero weights, so its scale changes the output.
    """
    from peft import LoraConfig

    pipe = quiet(TgateStableDiffusionPipeline(**tiny_sd_components(0)))
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    pipe.unet.add_adapter(config, adapter_name="x")
    return pipe


def latents(pipe, **kwargs):
    return pipe("a red bus", num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                output_type="latent", **kwargs).images


def test_lora_scale_reaches_the_unet_under_tgate(lora_pipe):
    off = latents(lora_pipe, gate_step=GATE, cross_attention_kwargs={"scale": 0.0})
    on = latents(lora_pipe, gate_step=GATE, cross_attention_kwargs={"scale": 1.0})
    assert not torch.allclose(off, on)
    lora_pipe.unet.disable_adapters()
    try:
        without_lora = latents(lora_pipe, gate_step=GATE)
    finally:
        lora_pipe.unet.enable_adapters()
    assert torch.allclose(off, without_lora, atol=1e-6)


def test_gate_at_the_last_step_with_a_lora_is_the_stock_pipeline(lora_pipe):
    stock = quiet(StableDiffusionPipeline(**lora_pipe.components))
    scale = {"scale": 0.5}
    assert torch.equal(latents(lora_pipe, gate_step=STEPS, cross_attention_kwargs=scale),
                       latents(stock, cross_attention_kwargs=scale))


def test_pixart_cleans_captions_without_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("diffusers"), "propagate", True)  # else its own handler bypasses caplog
    pipe = TgatePixArtAlphaPipeline(**tiny_pixart_components(0))
    with caplog.at_level(logging.WARNING):
        cleaned = pipe._text_preprocessing("A <b>red</b> bus https://example.com/x.jpg on a street", clean_caption=True)
    assert cleaned == ["a red bus on a street"]  # without bs4 and ftfy: lowercased only, HTML and URL kept
    assert "clean_caption" not in caplog.text


@pytest.mark.parametrize("package", ["peft", "beautifulsoup4", "ftfy"])
def test_requirements_pin_the_installed_optional_packages(package):
    pins = dict(line.split("==") for line in REQUIREMENTS.read_text().splitlines() if "==" in line)
    assert pins.get(package) == version(package)
