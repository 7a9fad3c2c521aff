"""The committed Wan toy: a complete WanPipeline folder that loads offline with the stock class, runs Wan's
two-call guidance on single frames, reproducibly; training's pad-count bias is exactly Wan's padded text;
the frame measures; train.py end to end on a few steps. (Accuracy is recorded by the training run itself, in
eval/wan_toy/checkpoint/training.json: a 20-step check is too slow for this suite.)"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.models import get_model
from eval.toy import digits
from eval.wan_toy.model import CALL_DEFAULTS, CHECKPOINT_DIR, frame_measures, frames_as_images, load_pipeline

ROOT = Path(__file__).resolve().parent.parent
QUICK_STEPS = 3


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline()


def sample(pipe, prompts, seed=0, **kwargs):
    settings = {**CALL_DEFAULTS, "guidance_scale": 5.0, **kwargs}
    return pipe(prompts, num_inference_steps=QUICK_STEPS, generator=torch.Generator().manual_seed(seed),
                output_type="np", **settings).frames


def test_checkpoint_is_a_complete_wan_folder_under_10_mb_with_its_training_record():
    index = json.loads((CHECKPOINT_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["scheduler"] == ["diffusers", "UniPCMultistepScheduler"]
    size = sum(f.stat().st_size for f in CHECKPOINT_DIR.rglob("*") if f.is_file())
    assert size < 10 * 2**20
    record = json.loads((CHECKPOINT_DIR / "training.json").read_text())
    assert record["defaults"] is True and record["settings"]["seed"] == 0
    assert record["check_20_steps_guidance_5_text_16"]["accuracy"] >= 0.9
    assert record["check_20_steps_guidance_5_text_512"]["accuracy"] >= 0.9


def test_stock_wan_pipeline_loads_it_offline(monkeypatch):
    from diffusers import WanPipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = WanPipeline.from_pretrained(CHECKPOINT_DIR)
    assert pipe.scheduler.config.prediction_type == "flow_prediction" and pipe.scheduler.config.use_flow_sigmas
    assert pipe.vae_scale_factor_spatial == 2 and pipe.vae_scale_factor_temporal == 2
    assert len(pipe.vae.config.latents_mean) == pipe.transformer.config.in_channels
    for caption in (digits.caption_for(3, "word"), digits.caption_for(3, "numeral")):  # one token per word
        assert len(pipe.tokenizer.tokenize(caption)) == len(caption.split())
    assert type(get_model("wan_toy").load().transformer).__name__ == "WanTransformer3DModel"


def test_quick_run_shape_range_and_reproducibility(pipe):
    prompts = [digits.caption_for(label) for label in (0, 7)]
    frames = sample(pipe, prompts)
    assert frames.shape == (2, 1, digits.IMAGE_SIZE, digits.IMAGE_SIZE, 3)
    assert frames.min() >= 0 and frames.max() <= 1
    assert np.array_equal(sample(pipe, prompts), frames)
    assert not np.array_equal(sample(pipe, prompts, seed=1), frames)
    assert not np.array_equal(sample(pipe, prompts, guidance_scale=1.0), frames)  # guidance changes the frames


def test_three_frames_decode_to_three_frames(pipe):
    assert sample(pipe, [digits.caption_for(5)], num_frames=3).shape == (1, 3, 16, 16, 3)


def test_training_pad_bias_is_exactly_wan_padded_text(pipe):
    """16 tokens with the log(pad count) bias on the pads == WanPipeline's 512-token text with the stock processor."""
    from eval.wan_toy.train import install_padded_text

    prompts = [digits.caption_for(7), "", digits.caption_for(2, "numeral")]
    short, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=16)
    long, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False, max_sequence_length=512)
    lengths = pipe.tokenizer(prompts, return_tensors="pt", padding=True).attention_mask.sum(dim=1)
    latents = torch.randn(3, 4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    timesteps = torch.tensor([900.0, 500.0, 100.0])
    transformer = pipe.transformer
    stock_processor = transformer.blocks[0].attn2.processor
    with torch.no_grad():
        reference = transformer(latents, timesteps, long, return_dict=False)[0]
        unbiased = transformer(latents, timesteps, short, return_dict=False)[0]
        try:
            install_padded_text(transformer).set_pads(lengths, 512 - lengths, 16)
            biased = transformer(latents, timesteps, short, return_dict=False)[0]
        finally:
            for block in transformer.blocks:
                block.attn2.set_processor(stock_processor)
    assert torch.allclose(biased, reference, atol=1e-4)
    assert not torch.allclose(unbiased, reference, atol=1e-2)  # the bias is what makes them equal


def test_frame_measures_on_real_digits_shaped_as_videos():
    images, labels = digits.load_reference_digits(200, seed=0, split="held_out")
    video = images[:, None]  # (N, 1, H, W, 3)
    assert np.array_equal(frames_as_images(video), images)
    measures = frame_measures(video, labels)
    assert measures["accuracy"] >= 0.95
    noise = np.random.RandomState(0).rand(200, 1, 16, 16, 3).astype(np.float32)
    assert frame_measures(noise, labels)["toy_fd"] > 10 * measures["toy_fd"]
    with pytest.raises(ValueError):
        frames_as_images(images)  # a batch of images is not a batch of videos
    with pytest.raises(ValueError):
        frame_measures(video, labels[:5])


def test_train_script_runs_a_few_steps_and_writes_a_loadable_folder(tmp_path):
    out = tmp_path / "wan_toy"
    result = subprocess.run(
        [sys.executable, "eval/wan_toy/train.py", "--transformer-steps", "2", "--vae-steps", "2", "--batch-size", "8",
         "--vae-batch-size", "8", "--check-per-digit", "0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "not the reproduced Wan toy" in result.stdout
    summary = json.loads((out / "training.json").read_text())
    assert summary["defaults"] is False and summary["settings"]["transformer_steps"] == 2
    frames = sample(load_pipeline(out), ["the digit 1"])
    assert frames.shape == (1, 1, 16, 16, 3)


def test_train_script_refuses_to_overwrite_the_committed_checkpoint_with_other_settings(capsys):
    from eval.wan_toy.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--transformer-steps", "2"])
    assert exit_info.value.code == 2
    assert "would overwrite the committed checkpoint" in capsys.readouterr().err
