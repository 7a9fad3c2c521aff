"""generate.py: smoke runs on tiny components, clear errors for bad input and missing weights."""

import dataclasses
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common.cli import generate_main, resolve_device_and_dtype
from common.models import MODELS, CheckpointNotFoundError, looks_like_local_path

ROOT = Path(__file__).resolve().parent.parent


def test_generate_script_runs_from_its_folder_and_writes_a_png(tmp_path):
    out = tmp_path / "sd15.png"
    result = subprocess.run(
        [sys.executable, "generate.py", "--tiny", "--steps", "3", "--gate", "2", "--out", str(out)],
        cwd=ROOT / "SD_1_5", capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "the image is noise" in result.stdout
    assert Image.open(out).size == (32, 32)
    assert "kept in float32" not in result.stderr  # diffusers' warning on casting the tiny components


@pytest.mark.parametrize("model", ["sd15", "sd21"])
def test_compare_writes_both_images_side_by_side_with_times(tmp_path, capsys, model):
    out = tmp_path / "img.png"
    assert generate_main(model, ["--tiny", "--steps", "4", "--gate", "2", "--compare", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "TGATE" in printed and "stock" in printed and "speedup" in printed
    tgate, stock = Image.open(out), Image.open(tmp_path / "img_stock.png")
    compare = Image.open(tmp_path / "img_compare.png")
    assert tgate.size == stock.size and compare.width >= 2 * tgate.width
    assert not np.array_equal(np.asarray(tgate), np.asarray(stock))  # gate 2 of 4 steps changes the image


def test_gate_at_steps_gives_the_stock_image(tmp_path):
    out = tmp_path / "img.png"
    assert generate_main("sd15", ["--tiny", "--steps", "3", "--gate", "3", "--compare", "--out", str(out)]) == 0
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "img_stock.png")))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--gate", "0"], "--gate must be >= 1 (the guided steps before the gate), got 0; for the stock pipeline "
         "use --gate >= --steps"),
        (["--gate", "-2"], "--gate must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--guidance", "-1"], "--guidance must be >= 0"),
        (["--model", "somewhere"], "drop --model or --tiny"),
        (["--sp-interval", "0"], "--sp-interval must be an int >= 1"),
        (["--fi-interval", "0"], "--fi-interval must be an int >= 1"),
        (["--warm-up", "-1"], "--warm-up must be an int >= 0"),
    ],
)
def test_bad_arguments_exit_with_a_short_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        generate_main("sd15", ["--tiny", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_non_integer_gate_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        generate_main("sd15", ["--tiny", "--gate", "2.5"])
    assert "invalid int value" in capsys.readouterr().err


def unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    return Path("/proc/self")  # root writes through permission bits; procfs takes no new files


@pytest.mark.parametrize(
    "name, message",
    [
        (".", "is a folder; give an image file"),
        ("img.txt", "the file name must end in .png, .jpg, .jpeg, .webp"),
        ("img", "the file name must end in"),
        ("a/b/img.png", "is not an existing folder; only a missing last folder (b) is created"),
        ("file.png/img.png", "is a file, not a folder"),
        ("unwritable/img.png", "cannot write in"),
    ],
)
def test_out_is_checked_before_any_work(tmp_path, capsys, name, message):
    (tmp_path / "file.png").write_bytes(b"")
    out = tmp_path / name if not name.startswith("unwritable") else unwritable_folder(tmp_path) / "img.png"
    with pytest.raises(SystemExit) as exit_info:
        generate_main("sd15", ["--tiny", "--steps", "2", "--gate", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and message in captured.err
    assert captured.out == ""  # stopped before building the pipeline


def test_out_creates_a_missing_last_folder_and_writes_jpeg(tmp_path):
    out = tmp_path / "new" / "img.jpg"
    assert generate_main("sd15", ["--tiny", "--steps", "2", "--gate", "1", "--out", str(out)]) == 0
    assert Image.open(out).format == "JPEG"


def test_empty_prompt_is_sent_as_is(monkeypatch, tmp_path):
    import common.cli as cli

    prompts = []

    def recording(pipe, device, seed, **call):
        prompts.append(call["prompt"])
        return timed_generation(pipe, device, seed, **call)

    timed_generation = cli.timed_generation
    monkeypatch.setattr(cli, "timed_generation", recording)
    argv = ["--tiny", "--steps", "2", "--gate", "1", "--prompt", "", "--out", str(tmp_path / "a.png")]
    assert generate_main("sd15", argv) == 0
    assert prompts == [""]


def test_float16_runs_on_the_cpu_quietly(tmp_path, capfd):
    assert resolve_device_and_dtype("cpu", "float16")[1] == torch.float16
    out = tmp_path / "img.png"
    assert generate_main("sd15", ["--tiny", "--steps", "2", "--gate", "1", "--dtype", "float16", "--device", "cpu",
                                  "--out", str(out)]) == 0
    captured = capfd.readouterr()
    assert "cpu float16" in captured.out and Image.open(out).size == (32, 32)
    assert "kept in float32" not in captured.err and "cannot run with `cpu`" not in captured.err


@pytest.mark.parametrize("folder", ["/no/such/folder", "./no-such-folder", "../no-such-folder", "~/no-such-folder",
                                    "models/sd/no-such"])
def test_missing_local_looking_model_says_the_folder_does_not_exist(tmp_path, capsys, folder):
    assert generate_main("sd15", ["--model", folder, "--out", str(tmp_path / "img.png")]) == 2
    err = capsys.readouterr().err
    assert f"the folder {folder} does not exist" in err and "Repo id" not in err and "Traceback" not in err


def test_hub_ids_do_not_look_local():
    assert not looks_like_local_path("stabilityai/stable-diffusion-2-1") and not looks_like_local_path("gpt2")
    assert looks_like_local_path("~/weights") and looks_like_local_path("a/b/c")


def test_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device_and_dtype("cuda", "auto")


def test_auto_dtype_on_cpu_is_float32():
    device, dtype = resolve_device_and_dtype("cpu", "auto")
    assert (device.type, str(dtype)) == ("cpu", "torch.float32")


def test_missing_local_weights_name_the_folder_and_how_to_provide_them(tmp_path, capsys):
    missing = tmp_path / "no-such-checkpoint"
    assert generate_main("sd15", ["--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--model PATH" in err and "--tiny" in err
    assert "Traceback" not in err


def test_missing_hub_weights_offline_name_the_checkpoint(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "SD_2_1/generate.py"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert MODELS["sd21"].checkpoint in result.stderr and "hf download" in result.stderr
    assert "Traceback" not in result.stderr


# SDXL, PixArt-Alpha and the two LCMs: every folder's generate.py on the same shared CLI.

FOLDER_SCRIPTS = [  # folder, arguments, what it runs, image size of the tiny components
    ("SDXL", ["--steps", "3", "--gate", "2"], "SDXL | tiny random | 3 steps, gate 2, guidance 5.0", (32, 32)),
    # PixArt bins sizes to 1024 px
    ("PixArt_alpha", ["--steps", "3", "--gate", "2"], "PixArt-Alpha | tiny random | 3 steps, gate 2, guidance 4.5",
     (1024, 1024)),
    # the paper's LCM settings: 4 steps, gate 1; guidance is an embedding (SDXL) or off (PixArt)
    ("LCM", ["--base", "sdxl"], "LCM (SDXL) | tiny random | 4 steps, gate 1, guidance 5.0, seed 0", (32, 32)),
    ("LCM", ["--base", "pixart"], "LCM (PixArt-Alpha) | tiny random | 4 steps, gate 1, guidance 0.0, seed 0",
     (1024, 1024)),
]


def run_folder_script(monkeypatch, folder, argv):
    """Run ``<folder>/generate.py`` as `cd <folder> && python generate.py ...` does, in this process."""
    monkeypatch.chdir(ROOT / folder)
    monkeypatch.setattr(sys, "argv", ["generate.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("generate.py", run_name="__main__")
    return exit_info.value.code


@pytest.mark.parametrize("folder, argv, header, size", FOLDER_SCRIPTS, ids=["sdxl", "pixart", "lcm-sdxl", "lcm-pixart"])
def test_folder_script_runs_tiny_end_to_end(monkeypatch, capsys, tmp_path, folder, argv, header, size):
    out = tmp_path / "img.png"
    assert run_folder_script(monkeypatch, folder, ["--tiny", *argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert header in printed and "the image is noise" in printed
    assert Image.open(out).size == size


def test_sdxl_compare_writes_both_images(monkeypatch, tmp_path):
    out = tmp_path / "img.png"
    argv = ["--tiny", "--steps", "3", "--gate", "1", "--compare", "--out", str(out)]
    assert run_folder_script(monkeypatch, "SDXL", argv) == 0
    tgate, stock = np.asarray(Image.open(out)), np.asarray(Image.open(tmp_path / "img_stock.png"))
    assert Image.open(tmp_path / "img_compare.png").width >= 2 * tgate.shape[1]
    assert not np.array_equal(tgate, stock)


def test_unknown_lcm_base_exits_with_a_short_message(monkeypatch, capsys):
    assert run_folder_script(monkeypatch, "LCM", ["--tiny", "--base", "sd15"]) == 2
    assert "invalid choice: 'sd15'" in capsys.readouterr().err


@pytest.mark.parametrize("base", ["sdxl", "pixart"])
def test_missing_lcm_weights_name_the_folder_and_how_to_provide_them(monkeypatch, capsys, tmp_path, base):
    missing = tmp_path / "no-such-checkpoint"
    assert run_folder_script(monkeypatch, "LCM", ["--base", base, "--model", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--model PATH" in err and "--tiny" in err
    assert "Traceback" not in err


def saved_tiny_pipeline(key, folder):
    pipe = MODELS[key].tiny_pipeline()
    pipe.save_pretrained(folder)
    return pipe


def test_lcm_sdxl_loads_its_unet_into_sdxl_base(monkeypatch, tmp_path):
    base = saved_tiny_pipeline("sdxl", tmp_path / "sdxl-base")
    lcm = saved_tiny_pipeline("lcm_sdxl", tmp_path / "lcm-full")
    monkeypatch.setitem(MODELS, "sdxl", dataclasses.replace(MODELS["sdxl"], checkpoint=str(tmp_path / "sdxl-base")))
    lcm.unet.save_pretrained(tmp_path / "lcm-unet")

    from_unet = MODELS["lcm_sdxl"].load(str(tmp_path / "lcm-unet"))
    assert type(from_unet.scheduler).__name__ == "LCMScheduler"
    assert from_unet.unet.config.time_cond_proj_dim == lcm.unet.config.time_cond_proj_dim
    assert torch.equal(from_unet.unet.conv_in.weight, lcm.unet.conv_in.weight)
    assert torch.equal(from_unet.text_encoder_2.text_projection.weight, base.text_encoder_2.text_projection.weight)
    from_folder = MODELS["lcm_sdxl"].load(str(tmp_path / "lcm-full"))  # a whole pipeline folder works too
    assert torch.equal(from_folder.unet.conv_in.weight, lcm.unet.conv_in.weight)


def test_lcm_sdxl_without_sdxl_base_names_the_base(monkeypatch, tmp_path):
    lcm = MODELS["lcm_sdxl"].tiny_pipeline()
    lcm.unet.save_pretrained(tmp_path / "lcm-unet")
    missing_base = str(tmp_path / "no-sdxl-base")
    monkeypatch.setitem(MODELS, "sdxl", dataclasses.replace(MODELS["sdxl"], checkpoint=missing_base))
    with pytest.raises(CheckpointNotFoundError, match="SDXL base") as error:
        MODELS["lcm_sdxl"].load(str(tmp_path / "lcm-unet"))
    assert missing_base in str(error.value)


# TGATE-V2 settings: the registry model's by default (PixArt-Sigma's are the V2 README's), the flags override them.


def spy_on_generation(monkeypatch):
    """Record the keyword arguments of each timed generation instead of running the pipeline."""
    import common.cli

    calls = []

    def record(pipe, device, seed, **call):
        calls.append(call)
        return Image.new("RGB", (8, 8)), 1.0

    monkeypatch.setattr(common.cli, "timed_generation", record)
    return calls


@pytest.mark.parametrize("model, argv, intervals, shown", [
    ("sd15", [], (1, 1, 0), None),  # v1: nothing printed
    ("pixart_sigma", [], (3, 1, 2), "V2: sp 3, fi 1, warm-up 2"),  # the V2 README's example
    ("sdxl", ["--sp-interval", "5", "--warm-up", "2"], (5, 1, 2), "V2: sp 5, fi 1, warm-up 2"),
    ("pixart_sigma", ["--sp-interval", "1", "--fi-interval", "1", "--warm-up", "0"], (1, 1, 0), None),
])
def test_v2_settings_reach_the_pipeline(monkeypatch, capsys, tmp_path, model, argv, intervals, shown):
    calls = spy_on_generation(monkeypatch)
    assert generate_main(model, ["--tiny", "--steps", "3", "--gate", "2", *argv, "--out", str(tmp_path / "i.png")]) == 0
    (call,) = calls
    assert (call["sp_interval"], call["fi_interval"], call["warm_up"], call["gate_step"]) == (*intervals, 2)
    printed = capsys.readouterr().out
    assert (shown in printed) if shown else ("V2:" not in printed)


def test_deepcache_flags_reach_the_pipeline_call(monkeypatch, tmp_path, capsys):
    import common.cli as cli

    calls = []

    def recording(pipe, device, seed, **call):
        calls.append((call.get("deepcache_interval"), call.get("deepcache_branch"), call["gate_step"]))
        return timed_generation(pipe, device, seed, **call)

    timed_generation = cli.timed_generation
    monkeypatch.setattr(cli, "timed_generation", recording)
    argv = ["--tiny", "--steps", "4", "--gate", "2", "--deepcache-interval", "2", "--deepcache-branch", "1",
            "--out", str(tmp_path / "a.png")]
    assert generate_main("sdxl", argv) == 0
    assert calls == [(2, 1, 2)]
    assert "DeepCache: interval 2, branch 1" in capsys.readouterr().out
    calls.clear()
    assert generate_main("sd15", ["--tiny", "--steps", "2", "--gate", "1", "--out", str(tmp_path / "b.png")]) == 0
    assert calls == [(None, None, 1)]  # without the flags, nothing is passed: TGATE alone


@pytest.mark.parametrize(
    "model, argv, message",
    [
        ("pixart_alpha", ["--deepcache-interval", "3"], "DeepCache caches a UNet's deep blocks and PixArt"),
        ("sd15", ["--deepcache-branch", "1"], "--deepcache-branch needs --deepcache-interval"),
        ("sd15", ["--deepcache-interval", "0"], "--deepcache-interval must be an int >= 1"),
        ("sd15", ["--deepcache-interval", "3", "--deepcache-branch", "-1"], "--deepcache-branch must be an int >= 0"),
    ],
)
def test_bad_deepcache_flags_exit_with_a_short_message(capsys, model, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        generate_main(model, ["--tiny", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
