"""The DiT folders' generate.py: --tiny runs write their image or video offline; missing weights say what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def generate(folder: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "generate.py", *args], cwd=ROOT / folder, env=ENV, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("folder", ["Sana", pytest.param("HunyuanDiT", marks=pytest.mark.slow)])
def test_image_tiny_run_writes_an_image(folder, tmp_path):
    out = tmp_path / "tiny.png"
    result = generate(folder, "--tiny", "--steps", "3", "--gate", "2", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(out).size == (32, 32) and "[--tiny]" in result.stdout


@pytest.mark.parametrize("folder, args", [
    pytest.param("Wan", ()),
    # each a subprocess of ~10 s: the exhaustive ones run with -m slow
    pytest.param("Wan", ("--model", "wan22"), marks=pytest.mark.slow),
    pytest.param("Wan", ("--image", "IMAGE"), marks=pytest.mark.slow),
    pytest.param("LTX_Video", (), marks=pytest.mark.slow),
])
def test_video_tiny_run_writes_a_video(folder, args, tmp_path):
    import imageio.v3 as iio

    if "IMAGE" in args:
        Image.new("RGB", (16, 16), "red").save(tmp_path / "first.png")
        args = ("--image", str(tmp_path / "first.png"))
    out = tmp_path / "tiny.mp4"
    result = generate(folder, "--tiny", "--steps", "3", "--gate", "2", "--out", str(out), *args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert iio.imread(out).shape[0] == 5  # frames


@pytest.mark.parametrize("folder, args", [("Sana", ()), ("Wan", ("--model", "wan22"))])
def test_missing_weights_say_how_to_get_them(folder, args, tmp_path):
    result = generate(folder, "--checkpoint" if folder == "Wan" else "--model", str(tmp_path / "absent"), *args,
                      "--out", str(tmp_path / ("x.mp4" if folder == "Wan" else "x.png")))
    assert result.returncode == 2
    assert "hf download" in result.stderr and "--tiny" in result.stderr
