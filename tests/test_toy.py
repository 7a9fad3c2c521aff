"""The committed toy digits checkpoint: complete and offline, really text-to-image, stock-equivalent at gate >= steps;
the digits/classifier API other scripts use; train.py end to end on a few steps; generate.py --model toy."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.cli import generate_main
from common.models import get_model
from eval.toy import digits
from eval.toy.evaluate import requested_digits, toy_fd

ROOT = Path(__file__).resolve().parent.parent
QUICK_STEPS = 10


@pytest.fixture(scope="module")
def pipe():
    from SD_1_5.pipeline import TgateStableDiffusionPipeline

    pipe = TgateStableDiffusionPipeline.from_pretrained(digits.CHECKPOINT_DIR)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, prompts, **kwargs):
    return pipe(prompts, num_inference_steps=QUICK_STEPS, guidance_scale=5.0,
                generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images


def test_checkpoint_is_a_complete_stable_diffusion_folder_under_10_mb():
    index = json.loads((digits.CHECKPOINT_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert index[component][0] is not None and (digits.CHECKPOINT_DIR / component).is_dir()
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    size = sum(f.stat().st_size for f in digits.CHECKPOINT_DIR.rglob("*") if f.is_file())
    assert size < 10 * 2**20


def test_checkpoint_loads_offline_with_sd_noise_schedule(pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == digits.IMAGE_SIZE
    for caption in (digits.caption_for(3, "word"), digits.caption_for(3, "numeral")):  # one token per word
        assert len(pipe.tokenizer.tokenize(caption)) == len(caption.split())


def test_quick_sample_shows_the_requested_digits(pipe):
    prompts, labels = requested_digits(4, list(digits.CAPTION_STYLES))  # 2 per digit in each caption style
    images = sample(pipe, prompts)
    assert images.shape == (40, digits.IMAGE_SIZE, digits.IMAGE_SIZE, 3)
    assert digits.accuracy(images, labels) >= 0.9


def test_gate_at_or_after_the_last_step_equals_stock_on_the_trained_model(pipe):
    prompts = [digits.caption_for(label) for label in (0, 7)]
    stock = sample(pipe, prompts)
    assert np.array_equal(sample(pipe, prompts, gate_step=QUICK_STEPS), stock)
    assert np.array_equal(sample(pipe, prompts, gate_step=QUICK_STEPS + 3), stock)
    assert not np.array_equal(sample(pipe, prompts, gate_step=2), stock)


def test_reference_digits_and_classifier_api():
    images, labels = digits.load_reference_digits(50, seed=1)
    assert images.shape == (50, 16, 16, 3) and images.dtype == np.float32 and labels.shape == (50,)
    assert 0 <= images.min() and images.max() <= 1 and images[:, 0, 0].mean() > 0.9  # white paper, dark ink
    assert np.array_equal(digits.load_reference_digits(50, seed=1)[1], labels)
    assert len(digits.load_reference_digits()[1]) == 1797
    assert digits.features(images).shape == (50, digits.FEATURE_DIM)
    pil = [Image.fromarray((image * 255).round().astype(np.uint8)) for image in images]
    assert np.array_equal(digits.predict(pil), digits.predict(images))
    held_out, held_out_labels = digits.load_reference_digits(split="held_out")
    assert digits.accuracy(held_out, held_out_labels) >= 0.95  # digits the classifier never saw
    assert set(digits.split_indices("train")).isdisjoint(digits.split_indices("held_out"))
    assert (digits.caption_for(7), digits.caption_for(7, "numeral")) == ("a handwritten digit seven", "the digit 7")
    with pytest.raises(ValueError):
        digits.caption_for(10)
    with pytest.raises(ValueError):
        digits.load_reference_digits(5000)


def test_toy_fd_is_small_between_real_digit_sets_and_large_against_noise():
    real_a, _ = digits.load_reference_digits(300, seed=0, split="train")
    real_b, _ = digits.load_reference_digits(300, seed=0, split="held_out")
    noise = np.random.RandomState(0).rand(300, 16, 16, 3).astype(np.float32)
    same = toy_fd(digits.features(real_a), digits.features(real_b))
    assert same < 0.1 * toy_fd(digits.features(noise), digits.features(real_b))


def test_train_script_runs_a_few_steps_and_writes_a_loadable_folder(tmp_path):
    out, classifier = tmp_path / "toy", tmp_path / "classifier.safetensors"
    result = subprocess.run(
        [sys.executable, "eval/toy/train.py", "--unet-steps", "2", "--vae-steps", "2", "--classifier-steps", "2",
         "--batch-size", "8", "--check-per-digit", "1", "--out", str(out), "--classifier-out", str(classifier)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "not the reproduced toy model" in result.stdout
    summary = json.loads((out / "training.json").read_text())
    assert summary["defaults"] is False and summary["settings"]["unet_steps"] == 2
    assert 0 <= summary["check_accuracy_20_steps_guidance_5"] <= 1
    assert digits.load_classifier(classifier).predict(digits.load_reference_digits(4)[0]).shape == (4,)


def test_train_script_refuses_to_overwrite_the_committed_checkpoint_with_other_settings(capsys):
    from eval.toy.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--unet-steps", "2"])
    assert exit_info.value.code == 2
    assert "would overwrite the committed checkpoint" in capsys.readouterr().err


def test_generate_accepts_model_toy(tmp_path, capsys):
    out = tmp_path / "toy.png"
    assert generate_main("sd15", ["--model", "toy", "--steps", "6", "--gate", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "not a paper model" in printed and get_model("toy").title in printed
    assert Image.open(out).size == (digits.IMAGE_SIZE, digits.IMAGE_SIZE)


def test_toy_is_registered_with_its_committed_checkpoint():
    spec = get_model("toy")
    assert Path(spec.checkpoint) == digits.CHECKPOINT_DIR and spec.config_dir == digits.CHECKPOINT_DIR
    assert (spec.config_dir / spec.denoiser / "config.json").is_file()
    assert spec.paper_row(tgate=True) is None


def test_evaluation_rows_carry_the_macs_eval_macs_counts(pipe):
    from eval.macs import macs_row
    from eval.toy.evaluate import evaluate_gates

    rows = evaluate_gates(pipe, [None, 2], per_digit=1, steps=4, guidance=5.0, seed=0, styles=["word"])
    row = macs_row(get_model("toy"), steps=4, gate=2)
    assert [r["macs_per_image"] for r in rows] == [row["macs_baseline"], row["macs_tgate"]]
    assert rows[1]["macs_per_image"] < rows[0]["macs_per_image"]
