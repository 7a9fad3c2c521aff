"""The demo page (demo/app.py) driven through gradio_client against a server started here (toy model, CPU)."""

from __future__ import annotations

import concurrent.futures
import re

import numpy as np
import pytest
from PIL import Image

from tests.demo_server import require_modules

STEPS = 6


@pytest.fixture(scope="module")
def client(demo_url):
    from gradio_client import Client

    return Client(demo_url, verbose=False)


def compare(client, prompt="a handwritten digit seven", gate=3, steps=STEPS, seed=0, model="toy", **options):
    """The page's /compare endpoint: (stock, TGATE, difference) as (pixels, label) and the summary text."""
    settings = dict(negative_prompt="", guidance=5.0, sp_interval=1, fi_interval=1, warm_up=0, deepcache_interval=1,
                    deepcache_branch=0) | options
    *images, summary = client.predict(model, gate, prompt, settings["negative_prompt"], steps, seed,
                                      settings["guidance"], settings["sp_interval"], settings["fi_interval"],
                                      settings["warm_up"], settings["deepcache_interval"],
                                      settings["deepcache_branch"], api_name="/compare")
    return [(np.asarray(Image.open(image["value"]).convert("RGB")), image["label"]) for image in images], summary


def seconds_and_macs(label: str) -> tuple[float, float]:
    """'TGATE gate 3: 0.12 s, 98.5M MACs' -> (0.12, 98.5e6)."""
    match = re.search(r": ([\d.]+) s, ([\d.]+)([KMGT]?) MACs$", label)
    assert match, label
    return float(match[1]), float(match[2]) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[match[3]]


def test_one_click_gives_stock_and_tgate_side_by_side_with_seconds_macs_and_speedup(client):
    [(stock, stock_label), (tgate, tgate_label), (diff, _)], summary = compare(client, gate=3)
    assert stock.shape == tgate.shape == diff.shape and stock.shape[0] >= 256  # the 16x16 toy, enlarged
    assert stock_label.startswith("stock: ") and tgate_label.startswith("TGATE gate 3: ")
    (_, stock_macs), (_, tgate_macs) = seconds_and_macs(stock_label), seconds_and_macs(tgate_label)
    assert tgate_macs < stock_macs  # 3 of 6 steps gated: one branch, no cross-attention
    assert re.search(r"TGATE speedup: [\d.]+x", summary)
    assert not np.array_equal(stock, tgate)
    assert np.array_equal(diff, np.abs(stock.astype(int) - tgate.astype(int)))


def test_a_gate_at_the_last_step_gives_the_stock_image_bit_for_bit(client):
    [(stock, stock_label), (tgate, tgate_label), (diff, _)], summary = compare(client, gate=STEPS)
    assert np.array_equal(stock, tgate) and not diff.any()
    assert "bit for bit" in summary
    assert seconds_and_macs(tgate_label)[1] == seconds_and_macs(stock_label)[1]  # no step gated


def test_tgate_v2_and_deepcache_settings_reach_the_pipeline(client):
    def tgate_run(**options):
        images, _ = compare(client, gate=4, **options)
        pixels, label = images[1]
        return pixels, seconds_and_macs(label)[1]

    v1, v1_macs = tgate_run()
    v2, v2_macs = tgate_run(sp_interval=2, fi_interval=2)  # self-attention cached every other step
    deep, deep_macs = tgate_run(deepcache_interval=2)  # every other step only the UNet's shallow branch
    assert v2_macs < v1_macs and deep_macs < v1_macs
    assert not np.array_equal(v1, v2) and not np.array_equal(v1, deep)


def test_concurrent_visitors_share_the_pipeline_and_get_their_sequential_images(client):
    requests = [dict(gate=2, seed=1), dict(gate=STEPS, seed=2), dict(gate=3, seed=3, sp_interval=2)]
    sequential = [compare(client, **request)[0] for request in requests]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        concurrent_runs = list(pool.map(lambda request: compare(client, **request)[0], requests))
    for alone, together in zip(sequential, concurrent_runs):
        for (expected, _), (got, _) in zip(alone, together):
            assert np.array_equal(expected, got)


def test_the_sweep_shows_stock_then_each_gate_with_its_time(client):
    strip, table = client.predict("toy", "1, 3, 6", "the digit 4", "", STEPS, 0, 5.0, 1, 1, 0, 1, 0,
                                  api_name="/sweep")
    captions = [item["caption"] for item in strip]
    assert [caption.split(":")[0] for caption in captions] == ["stock", "TGATE gate 1", "TGATE gate 3", "TGATE gate 6"]
    macs = [seconds_and_macs(caption)[1] for caption in captions]
    assert macs[1] < macs[2] < macs[3] == macs[0]  # an earlier gate gates more steps; gate 6 of 6 gates none
    images = [np.asarray(Image.open(item["image"]).convert("RGB")) for item in strip]
    assert np.array_equal(images[0], images[3]) and not np.array_equal(images[0], images[1])
    assert table.count("\n| TGATE gate") == 3 and "speedup" in table


@pytest.mark.parametrize(
    "request_, message",
    [
        (dict(prompt="   "), "Enter a prompt"),
        (dict(gate=STEPS + 1), f"The gate must be between 1 and the number of steps ({STEPS})"),
        (dict(gate=0), "Value 0 is less than minimum value 1"),  # gradio's own check of the slider
        (dict(deepcache_interval=2, deepcache_branch=99), "deepcache_branch must be <"),
    ],
    ids=["empty prompt", "gate after the steps", "gate 0", "DeepCache branch"],
)
def test_bad_input_is_a_message_on_the_page_not_a_traceback(client, request_, message):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=re.escape(message)) as error:
        compare(client, **request_)
    assert "Traceback" not in str(error.value)


def test_a_model_whose_weights_are_not_here_gets_a_message(client, tmp_path, monkeypatch):
    from gradio_client.exceptions import AppError
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache: nothing is downloaded
    with pytest.raises(AppError, match=r"The weights of SD-1.5 .* are not in the Hugging Face cache.*never "
                                       r"downloads.*hf download stable-diffusion-v1-5"):
        compare(client, model="sd15")


def test_the_command_line_refuses_a_model_without_weights_before_serving(tmp_path, monkeypatch, capsys):
    require_modules("gradio")
    from huggingface_hub import constants

    from demo.app import build_parser, main

    assert build_parser().parse_args([]).host == "127.0.0.1"  # this machine only, unless asked
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert main(["--model", "sdxl", "--port", "1"]) == 2
    assert "The weights of SDXL" in capsys.readouterr().err
