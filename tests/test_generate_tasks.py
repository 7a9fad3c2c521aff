"""generate.py's image tasks (--image, --mask, --control-image) and the video folders' generate.py, on tiny components."""

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import common.cli as cli
from common.cli import generate_main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def pictures(tmp_path):
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("init", "control"):
        paths[name] = tmp_path / f"{name}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(paths[name])
    paths["mask"] = tmp_path / "mask.png"
    Image.fromarray(np.where(np.arange(32)[:, None] < 16, 255, 0).repeat(32, 1).astype(np.uint8)).save(paths["mask"])
    return paths


@pytest.fixture
def pipeline_classes(monkeypatch):
    """Record the class of the pipeline each run uses."""
    used = []

    def spy(pipe, args, dtype):
        pipe, call = task_pipeline(pipe, args, dtype)
        used.append(type(pipe).__name__)
        return pipe, call

    task_pipeline = cli.task_pipeline
    monkeypatch.setattr(cli, "task_pipeline", spy)
    return used


@pytest.mark.parametrize("model, flags, expected", [
    ("sd15", ["--image", "init"], "TgateStableDiffusionImg2ImgPipeline"),
    ("sd15", ["--image", "init", "--mask", "mask"], "TgateStableDiffusionInpaintPipeline"),
    ("sd15", ["--control-image", "control"], "TgateStableDiffusionControlNetPipeline"),
    ("sd15", ["--image", "init", "--control-image", "control"], "TgateStableDiffusionControlNetImg2ImgPipeline"),
    ("sd15", ["--image", "init", "--mask", "mask", "--control-image", "control"],
     "TgateStableDiffusionControlNetInpaintPipeline"),
    ("sdxl", ["--image", "init", "--strength", "0.75"], "TgateStableDiffusionXLImg2ImgPipeline"),
    ("sdxl", ["--control-image", "control"], "TgateStableDiffusionXLControlNetPipeline"),
], ids=["img2img", "inpaint", "controlnet", "controlnet-img2img", "controlnet-inpaint", "sdxl-img2img",
        "sdxl-controlnet"])
def test_task_flags_run_the_familys_tgate_pipeline(tmp_path, capsys, pictures, pipeline_classes, model, flags,
                                                    expected):
    argv = [pictures[flag] if flag in pictures else flag for flag in flags]
    out = tmp_path / "img.png"
    assert generate_main(model, ["--tiny", "--steps", "4", "--gate", "2", *map(str, argv), "--out", str(out)]) == 0
    assert pipeline_classes == [expected]
    assert Image.open(out).size == (32, 32)
    assert "the image is noise" in capsys.readouterr().out


@pytest.mark.parametrize("model, flags, message", [
    ("sd15", ["--mask", "mask"], "--mask needs --image"),
    ("sd15", ["--strength", "0.5"], "--strength needs --image"),
    ("sd15", ["--image", "init", "--strength", "1.5"], "--strength must be in"),
    ("sd15", ["--controlnet", "x"], "--controlnet needs --control-image"),
    ("sd15", ["--image", "missing"], "no such file"),
    ("pixart_alpha", ["--image", "init"], "diffusers has no image-to-image pipeline for TgatePixArtAlphaPipeline"),
    ("pixart_alpha", ["--control-image", "control"], "diffusers has no ControlNet pipeline"),
])
def test_task_flags_that_cannot_work_exit_with_a_short_message(capsys, pictures, model, flags, message):
    argv = [str(pictures.get(flag, flag)) for flag in flags]
    with pytest.raises(SystemExit) as exit_info:
        generate_main(model, ["--tiny", "--steps", "2", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_control_image_without_controlnet_weights_is_refused_before_loading(capsys, pictures):
    with pytest.raises(SystemExit):
        generate_main("sd15", ["--control-image", str(pictures["control"])])
    assert "--control-image needs --controlnet" in capsys.readouterr().err


def run_folder_script(monkeypatch, folder, argv):
    monkeypatch.chdir(ROOT / folder)
    monkeypatch.setattr(sys, "argv", ["generate.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("generate.py", run_name="__main__")
    return exit_info.value.code


@pytest.mark.parametrize("folder, flags, header, frames", [
    ("AnimateDiff", [], "AnimateDiff | tiny random | 3 steps, gate 2, guidance 7.5, 3 frames", 3),
    ("SVD", [], "Stable Video Diffusion | tiny random | 3 steps, gate 2, guidance 3.0, 3 frames", 3),
    ("SVD", ["--image", "init", "--frames", "2"], "Stable Video Diffusion | tiny random | 3 steps, gate 2", 2),
], ids=["animatediff", "svd", "svd-image"])
def test_video_scripts_run_tiny_end_to_end(monkeypatch, capsys, tmp_path, pictures, folder, flags, header, frames):
    out = tmp_path / "video.gif"
    argv = [str(pictures.get(flag, flag)) for flag in flags]
    assert run_folder_script(monkeypatch, folder, ["--tiny", "--steps", "3", "--gate", "2", *argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert header in printed and "the video is noise" in printed
    gif = Image.open(out)
    assert gif.size == (32, 32) and gif.n_frames == frames


def test_svd_without_an_image_or_weights_says_what_is_missing(monkeypatch, capsys, tmp_path):
    assert run_folder_script(monkeypatch, "SVD", ["--steps", "2"]) == 2
    assert "--image is required" in capsys.readouterr().err
    missing = tmp_path / "no-such-checkpoint"
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    assert run_folder_script(monkeypatch, "SVD", ["--image", str(image), "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--tiny" in err and "Traceback" not in err
