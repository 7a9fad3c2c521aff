"""eval/fid.py offline: a tiny COCO made here, the tiny SD pipeline, random Inception weights in a temporary cache.

Random Inception weights and 64-d features keep the Inception part fast on a CPU; the numbers are not FIDs.
"""

import json
import os
import subprocess
import sys
import urllib.error
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import eval.fid as fid
from common.models import get_model
from common.schedule import TgateSchedule
from eval.fid_data import CaptionRecord, CaptionSourceError, CocoCaptions, center_crop_resize, read_captions, write_captions
from eval.fid_features import INCEPTION_FILE, INCEPTION_URL, frechet_distance, statistics
from eval.fid_generate import generate_images, generation_totals, image_path, image_seed, shard_batches

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = {  # image id -> its captions; image 7 has none and must never be sampled
    1: ["a red bus on a street", "a bus parked  by the road"],
    2: ["two dogs on a beach"],
    3: ["a plate of pasta", "dinner on a table", "food on a white plate"],
    4: ["a man riding a horse"],
    5: ["a kitchen with a stove", "an oven in a kitchen"],
    6: ["a cat on a sofa"],
    7: [],
    8: ["a train at a station", "a yellow train"],
    9: ["a boat on a lake"],
}


@pytest.fixture(scope="session")
def coco_root(tmp_path_factory):
    """COCO's layout with nine small non-square JPEGs and their captions."""
    root = tmp_path_factory.mktemp("coco")
    (root / "annotations").mkdir()
    (root / "val2014").mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, captions in CAPTIONS.items():
        file_name = f"COCO_val2014_{image_id:012d}.jpg"
        width, height = (48, 40) if image_id % 2 else (40, 56)
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(root / "val2014" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for caption in captions:
            annotations.append({"id": 100 + len(annotations), "image_id": image_id, "caption": caption})
    annotations.reverse()  # annotation order in the file must not matter
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    return root


@pytest.fixture(scope="session")
def random_inception_home(tmp_path_factory):
    """A torch home whose hub cache holds random weights under pytorch-fid's file name."""
    import pytorch_fid.inception as inception

    home = tmp_path_factory.mktemp("torch_home")
    captured = {}
    with pytest.MonkeyPatch.context() as patch:  # build pytorch-fid's network without its weights, keep its state
        patch.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: None)
        patch.setattr(torchvision.models.inception.Inception3, "load_state_dict",
                      lambda self, state_dict, *args, **kwargs: captured.update(self.state_dict()))
        torch.manual_seed(0)
        inception.InceptionV3([0])
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(captured, home / "hub" / "checkpoints" / INCEPTION_FILE)
    return home


@pytest.fixture
def inception_cache(monkeypatch, random_inception_home):
    monkeypatch.setenv("TORCH_HOME", str(random_inception_home))
    return random_inception_home


class SimulatedCrash(Exception):
    pass


class RecordingPipeline:
    """The tiny pipeline, recording which images each call makes; optionally crashing on call ``crash_on``."""

    def __init__(self, pipe, seed=0, n=64, crash_on=None):
        self.pipe, self.crash_on, self.calls, self.gate_steps, self.v2 = pipe, crash_on, [], [], []
        self.index_of_seed = {image_seed(seed, index): index for index in range(n)}

    def __call__(self, **kwargs):
        self.calls.append([self.index_of_seed[generator.initial_seed()] for generator in kwargs["generator"]])
        self.gate_steps.append(kwargs["gate_step"])
        if "sp_interval" in kwargs:
            self.v2.append((kwargs["sp_interval"], kwargs["fi_interval"], kwargs["warm_up"]))
        if len(self.calls) == self.crash_on:
            raise SimulatedCrash
        return self.pipe(**kwargs)

    def to(self, *args, **kwargs):
        self.pipe.to(*args, **kwargs)
        return self

    def __getattr__(self, name):
        return getattr(self.pipe, name)


@pytest.fixture(scope="module")
def tiny_pipe():
    """One tiny SD pipeline for the module: a call leaves it stock, so tests can share it."""
    pipe = get_model("sd15").tiny_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def fid_argv(coco_root, out, stats_dir, *extra):
    return ["--tiny", "--coco-root", str(coco_root), "--out", str(out), "--stats-dir", str(stats_dir), "--n", "5",
            "--steps", "3", "--gate", "2", "--batch-size", "2", "--dims", "64", "--workers", "0",
            "--feature-batch-size", "4", *extra]


def pixels(path):
    return np.asarray(Image.open(path))


def test_caption_sampling_is_deterministic_with_one_caption_per_distinct_image(coco_root):
    source = CocoCaptions(coco_root)
    first, again = source.sample(6, seed=3), CocoCaptions(coco_root).sample(6, seed=3)
    assert first == again
    assert [record.index for record in first] == list(range(6))
    assert len({record.image_id for record in first}) == 6 and 7 not in {record.image_id for record in first}
    for record in first:
        assert record.caption in [" ".join(c.split()) for c in CAPTIONS[record.image_id]]
        assert record.file_name == f"COCO_val2014_{record.image_id:012d}.jpg"
    assert [r.image_id for r in source.sample(6, seed=4)] != [r.image_id for r in first]
    assert {r.image_id for r in source.sample(8, seed=0)} == set(CAPTIONS) - {7}
    with pytest.raises(CaptionSourceError, match="has 8 captioned images"):
        source.sample(9, seed=0)


def test_caption_list_round_trips_and_accepts_image_ids_only(tmp_path, coco_root):
    source = CocoCaptions(coco_root)
    records = source.sample(4, seed=1)
    write_captions(tmp_path / "captions.json", records, seed=1)
    assert read_captions(tmp_path / "captions.json") == records
    (tmp_path / "ids.json").write_text(json.dumps([{"image_id": 3, "caption": "my caption"}]))
    assert source.complete(read_captions(tmp_path / "ids.json")) == [
        CaptionRecord(0, 3, "COCO_val2014_000000000003.jpg", "my caption")]
    (tmp_path / "bad.json").write_text(json.dumps([{"caption": "no image id"}]))
    with pytest.raises(CaptionSourceError, match="needs an integer 'image_id'"):
        read_captions(tmp_path / "bad.json")
    (tmp_path / "unknown.json").write_text(json.dumps([{"image_id": 999, "caption": "x"}]))
    with pytest.raises(CaptionSourceError, match="image id 999 is not in"):
        source.complete(read_captions(tmp_path / "unknown.json"))


def test_reference_images_are_center_cropped_then_resized():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[:, :10], image[:, 10:50], image[:, 50:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    square = center_crop_resize(Image.fromarray(image), 20)
    assert square.size == (20, 20)
    assert np.array_equal(np.unique(np.asarray(square).reshape(-1, 3), axis=0), [[0, 255, 0]])


@pytest.mark.parametrize("n, batch_size, world", [(5, 2, 2), (10, 3, 3), (7, 1, 4), (3, 4, 2)])
def test_shards_cover_every_global_batch_once(n, batch_size, world):
    shards = [shard_batches(n, batch_size, rank, world) for rank in range(world)]
    batches = sorted(batch for shard in shards for batch in shard)
    assert batches == [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]


def test_two_shards_make_exactly_the_images_of_one_process(tmp_path, tiny_pipe):
    records = [CaptionRecord(i, i, "", caption) for i, caption in enumerate(["a cat", "a dog", "a bus", "a cat", "a sea"])]
    call = dict(num_inference_steps=3, guidance_scale=7.5, gate_step=2, height=32, width=32)
    one = RecordingPipeline(tiny_pipe, seed=7)
    generate_images(one, records, tmp_path / "one", seed=7, batch_size=2, call=call, progress=False)
    shards = RecordingPipeline(tiny_pipe, seed=7)
    for rank in (1, 0):
        generate_images(shards, records, tmp_path / "two", seed=7, batch_size=2, call=call, rank=rank, world=2,
                        progress=False)
    assert one.calls == [[0, 1], [2, 3], [4]]  # each image starts from the generator of its own index
    assert shards.calls == [[2, 3], [0, 1], [4]]
    for index in range(5):
        assert np.array_equal(pixels(image_path(tmp_path / "one", index)), pixels(image_path(tmp_path / "two", index)))
    # same caption, different index: different noise, different image
    assert not np.array_equal(pixels(image_path(tmp_path / "one", 0)), pixels(image_path(tmp_path / "one", 3)))


def test_safety_checker_flags_are_counted_across_batches(tmp_path):
    class FlaggingPipeline:  # returns black images and flags every caption that mentions a knife
        def __call__(self, prompt, generator, **call):
            images = [Image.new("RGB", (8, 8)) for _ in prompt]
            return SimpleNamespace(images=images, nsfw_content_detected=["knife" in caption for caption in prompt])

    records = [CaptionRecord(i, i, "", caption) for i, caption in enumerate(["a knife", "a cat", "a knife", "a dog"])]
    report = generate_images(FlaggingPipeline(), records, tmp_path / "images", seed=0, batch_size=3, call={},
                             timing_path=tmp_path / "timing" / "run.json", progress=False)
    assert (report.generated, report.flagged) == (4, 2)
    totals = generation_totals(tmp_path / "timing")
    assert (totals["images"], totals["flagged"]) == (4, 2) and totals["seconds_per_image"] > 0


def test_interrupted_run_resumes_without_regenerating_and_gives_the_same_fid(tmp_path, tiny_pipe, coco_root, inception_cache,
                                                                          monkeypatch, capsys):
    stats = tmp_path / "stats"
    crashing = RecordingPipeline(tiny_pipe, crash_on=2)
    monkeypatch.setattr(fid, "load_pipeline", lambda *args: crashing)
    with pytest.raises(SimulatedCrash):
        fid.main(fid_argv(coco_root, tmp_path / "run", stats))
    images = tmp_path / "run" / "images"
    assert sorted(path.name for path in images.iterdir()) == ["00000.png", "00001.png"]  # no half-written files
    finished = {path.name: path.stat() for path in images.iterdir()}

    resumed = RecordingPipeline(tiny_pipe)
    monkeypatch.setattr(fid, "load_pipeline", lambda *args: resumed)
    assert fid.main(fid_argv(coco_root, tmp_path / "run", stats)) == 0
    assert resumed.calls == [[2, 3], [4]]
    for name, before in finished.items():
        after = (images / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert "3 images generated, 2 already done" in capsys.readouterr().out

    monkeypatch.setattr(fid, "load_pipeline", lambda *args: RecordingPipeline(tiny_pipe))
    assert fid.main(fid_argv(coco_root, tmp_path / "fresh", stats)) == 0
    assert "reference statistics from the cache" in capsys.readouterr().out
    for index in range(5):
        assert np.array_equal(pixels(image_path(images, index)), pixels(image_path(tmp_path / "fresh" / "images", index)))
    resumed_result = json.loads((tmp_path / "run" / "result.json").read_text())
    fresh_result = json.loads((tmp_path / "fresh" / "result.json").read_text())
    assert np.isfinite(resumed_result["fid"]) and resumed_result["fid"] > 0
    assert resumed_result["fid"] == fresh_result["fid"]

    assert {key: resumed_result[key] for key in ("metric", "model", "gate", "steps", "n", "tiny", "resolution")} == {
        "metric": "FID", "model": "sd15", "gate": 2, "steps": 3, "n": 5, "tiny": True, "resolution": 32}
    assert resumed_result["seconds_per_image"] > 0 and resumed_result["versions"]["pytorch-fid"] == "0.3.0"
    assert resumed_result["labels"] == ["tiny", "unofficial Inception", "dims 64", "n=5"]
    captions = read_captions(tmp_path / "run" / "captions.json")
    assert captions == CocoCaptions(coco_root).sample(5, seed=0)


def test_baseline_flag_runs_the_stock_pipeline(tmp_path, tiny_pipe, coco_root, inception_cache, monkeypatch):
    recording = RecordingPipeline(tiny_pipe)
    monkeypatch.setattr(fid, "load_pipeline", lambda *args: recording)
    argv = fid_argv(coco_root, tmp_path / "run", tmp_path / "stats")
    gate = argv.index("--gate")
    assert fid.main([*argv[:gate], *argv[gate + 2:], "--baseline"]) == 0
    assert recording.gate_steps == [None, None, None]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (result["gate"], result["tgate"]) == (None, False)


def test_a_gate_at_or_after_the_last_step_is_run_and_labelled_as_the_baseline(
        tmp_path, tiny_pipe, coco_root, inception_cache, monkeypatch, capsys):
    recording = RecordingPipeline(tiny_pipe)
    monkeypatch.setattr(fid, "load_pipeline", lambda *args: recording)
    assert fid.main(fid_argv(coco_root, tmp_path / "run", tmp_path / "stats", "--gate", "3")) == 0  # 3 steps
    assert recording.gate_steps == [None, None, None]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (result["gate"], result["tgate"]) == (None, False)
    printed = capsys.readouterr().out
    assert "gates no step" in printed and "| baseline |" in printed and "TGATE gate" not in printed
    args = fid.build_parser().parse_args(["--tiny", "--coco-root", str(coco_root), "--steps", "3", "--gate", "30"])
    fid.check_arguments(fid.build_parser(), args, get_model("sd15"))
    assert args.out.name == "sd15_baseline_tiny"


def test_default_workers_fit_the_cpus_without_torchs_warning(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    workers = fid.build_parser().parse_args([]).workers
    loader = torch.utils.data.DataLoader(list(range(4)), num_workers=workers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.check_worker_number_rationality()
    assert workers == 2


def test_v2_settings_reach_the_pipeline_the_run_name_and_the_result(tmp_path, tiny_pipe, coco_root, inception_cache,
                                                                     monkeypatch, capsys):
    recording = RecordingPipeline(tiny_pipe)
    monkeypatch.setattr(fid, "load_pipeline", lambda *args: recording)
    monkeypatch.chdir(tmp_path)  # the default --out is relative: results/fid/<run name>
    argv = fid_argv(coco_root, "unused", tmp_path / "stats", "--sp-interval", "2", "--warm-up", "1")
    out = argv.index("--out")
    assert fid.main([*argv[:out], *argv[out + 2:]]) == 0
    assert recording.v2 == [(2, 1, 1)] * 3  # the model's fi_interval (1), the given sp_interval and warm_up
    result = json.loads((tmp_path / "results" / "fid" / "sd15_gate2_sp2_fi1_wu1_tiny" / "result.json").read_text())
    assert (result["gate"], result["sp_interval"], result["fi_interval"], result["warm_up"]) == (2, 2, 1, 1)
    assert "TGATE gate 2, sp 2, fi 1, warm-up 1" in capsys.readouterr().out


def test_a_run_recorded_before_the_v2_settings_resumes_as_v1(tmp_path):
    settings = {"model": "sd15", "gate": 2, "steps": 3}
    (tmp_path / "run.json").write_text(json.dumps(settings))  # no sp_interval, fi_interval, warm_up
    fid.check_run_settings(tmp_path, {**settings, "sp_interval": 1, "fi_interval": 1, "warm_up": 0})
    with pytest.raises(fid.RunMismatchError, match="sp_interval: 1 there, 2 now"):
        fid.check_run_settings(tmp_path, {**settings, "sp_interval": 2, "fi_interval": 1, "warm_up": 0})


def test_rerun_with_other_settings_refuses_to_mix_images(tmp_path, tiny_pipe, coco_root, inception_cache, monkeypatch, capsys):
    monkeypatch.setattr(fid, "load_pipeline", lambda *args: RecordingPipeline(tiny_pipe, crash_on=1))
    with pytest.raises(SimulatedCrash):
        fid.main(fid_argv(coco_root, tmp_path / "run", tmp_path / "stats"))
    argv = [arg if arg != "2" else "1" for arg in fid_argv(coco_root, tmp_path / "run", tmp_path / "stats")]
    assert fid.main(argv) == 2  # --gate 1 and --batch-size 1 now
    err = capsys.readouterr().err
    assert "holds images of a run with other settings (gate: 2 there, 1 now)" in err
    captions = (tmp_path / "run" / "captions.json").read_text()
    assert fid.main([*fid_argv(coco_root, tmp_path / "run", tmp_path / "stats"), "--n", "4"]) == 2
    assert "holds images of a run with another caption list" in capsys.readouterr().err
    assert (tmp_path / "run" / "captions.json").read_text() == captions


def test_frechet_distance_matches_the_closed_form_for_known_gaussians():
    rng = np.random.default_rng(0)
    rotation, _ = np.linalg.qr(rng.normal(size=(4, 4)))  # shared eigenvectors: the covariances commute
    variances_a, variances_b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([4.0, 1.0, 0.5, 0.25])
    mean_a, mean_b = rng.normal(size=4), rng.normal(size=4)
    sigma_a, sigma_b = rotation @ np.diag(variances_a) @ rotation.T, rotation @ np.diag(variances_b) @ rotation.T
    expected = np.sum((mean_a - mean_b) ** 2) + np.sum((np.sqrt(variances_a) - np.sqrt(variances_b)) ** 2)
    assert frechet_distance((mean_a, sigma_a), (mean_b, sigma_b)) == pytest.approx(expected, rel=1e-9)
    samples = rng.normal(size=(200_000, 2)) * [1.0, 2.0] + [3.0, 0.0]
    mean, sigma = statistics(samples)
    assert mean == pytest.approx([3.0, 0.0], abs=0.02) and sigma == pytest.approx(np.diag([1.0, 4.0]), abs=0.03)


def test_missing_coco_files_give_clear_errors(tmp_path, coco_root, inception_cache, capsys):
    assert fid.main(fid_argv(tmp_path / "nowhere", tmp_path / "a", tmp_path / "s")) == 2
    err = capsys.readouterr().err
    assert "COCO captions not found" in err and "annotations/captions_val2014.json" in err and "cocodataset.org" in err

    broken = tmp_path / "broken"
    (broken / "annotations").mkdir(parents=True)
    (broken / "annotations" / "captions_val2014.json").write_text((coco_root / "annotations" / "captions_val2014.json").read_text())
    assert fid.main(fid_argv(broken, tmp_path / "b", tmp_path / "s")) == 2
    assert "COCO images folder not found" in capsys.readouterr().err

    (broken / "val2014").mkdir()
    assert fid.main(fid_argv(broken, tmp_path / "c", tmp_path / "s")) == 2
    assert "5 reference image(s) missing" in capsys.readouterr().err
    assert not (tmp_path / "c" / "images").exists()  # nothing generated before the check


def test_missing_inception_weights_offline_say_where_to_put_the_file(tmp_path, coco_root, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert fid.main(fid_argv(coco_root, tmp_path / "a", tmp_path / "s")) == 2
    err = capsys.readouterr().err
    expected = tmp_path / "empty_torch_home" / "hub" / "checkpoints" / INCEPTION_FILE
    assert str(expected) in err and INCEPTION_URL in err and "--inception-weights PATH" in err
    assert fid.main(fid_argv(coco_root, tmp_path / "b", tmp_path / "s", "--inception-weights", str(tmp_path / "x.pth"))) == 2
    assert "no such file" in capsys.readouterr().err


def test_inception_url_is_pytorch_fids():
    import pytorch_fid.inception

    assert INCEPTION_URL == pytorch_fid.inception.FID_WEIGHTS_URL


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gate", "0"], "--gate must be >= 1 (the guided steps before the gate), got 0; for the stock pipeline "
         "use --baseline"),
        (["--baseline"], "drop --gate or --baseline"),
        (["--n", "1"], "--n must be >= 2"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--resolution", "30"], "multiple of 8"),
        (["--checkpoint", "somewhere"], "drop --checkpoint or --tiny"),
        (["--dims", "100"], "invalid choice"),
        (["--sp-interval", "0"], "--sp-interval must be an int >= 1"),
        (["--warm-up", "-1"], "--warm-up must be an int >= 0"),
    ],
)
def test_bad_arguments_exit_with_a_short_message(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        fid.main(fid_argv(tmp_path, tmp_path / "out", tmp_path / "s", *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_script_runs_from_the_repository_root_and_fails_cleanly_without_coco(tmp_path):
    result = subprocess.run([sys.executable, "eval/fid.py", "--tiny", "--coco-root", str(tmp_path / "none"),
                             "--out", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "COCO captions not found" in result.stderr and "Traceback" not in result.stderr


# --- The toy benchmark: scikit-learn's digits as captions and references, toy-FD on classifier features ---


def test_toy_captions_ask_for_the_digit_of_distinct_real_digits():
    from eval.fid_toy import ToyDigitCaptions
    from eval.toy import digits

    source = ToyDigitCaptions()
    records = source.sample(30, seed=4)
    assert records == ToyDigitCaptions().sample(30, seed=4) and records != source.sample(30, seed=5)
    assert len({record.image_id for record in records}) == 30
    for record in records:
        label = source.label_of(record)
        assert record.caption in (digits.caption_for(label, "word"), digits.caption_for(label, "numeral"))
        real = digits.digit_tensors("all")[0][record.image_id, 0].numpy()
        assert np.array_equal(np.asarray(source.reference_image(record).convert("L")), (real * 255).round())


def test_toy_run_reports_toy_fd_and_accuracy_never_an_fid(tmp_path, capsys):
    out = tmp_path / "toy"
    argv = ["--model", "toy", "--n", "40", "--steps", "6", "--gate", "3", "--out", str(out),
            "--stats-dir", str(tmp_path / "stats"), "--workers", "0"]
    assert fid.main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["metric"] == "toy-FD" and "fid" not in result and result["distance"] > 0
    assert result["accuracy"] >= 0.9  # the trained toy draws the requested digits
    assert "toy-FD" in result["labels"] and not result["tiny"]
    assert "toy-FD" in capsys.readouterr().out
    from eval.table import load_fid_results

    assert load_fid_results([str(out / "result.json")])[0] == []  # a toy-FD never lands in the FID column


def test_toy_refuses_coco_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fid.main(["--model", "toy", "--coco-root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2 and "drop --coco-root" in capsys.readouterr().err


def test_other_models_still_require_coco(tmp_path, capsys):
    with pytest.raises(SystemExit):
        fid.main(["--model", "sd15", "--tiny", "--out", str(tmp_path / "o")])
    assert "--coco-root DIR is required" in capsys.readouterr().err


def test_deepcache_settings_reach_the_pipeline_the_run_name_and_the_result(tmp_path, tiny_pipe, coco_root,
                                                                           inception_cache, monkeypatch, capsys):
    calls = []
    recording = RecordingPipeline(tiny_pipe)
    original = RecordingPipeline.__call__

    def call(self, **kwargs):
        calls.append((kwargs.get("deepcache_interval"), kwargs.get("deepcache_branch")))
        return original(self, **kwargs)

    monkeypatch.setattr(RecordingPipeline, "__call__", call)
    monkeypatch.setattr(fid, "load_pipeline", lambda *args: recording)
    monkeypatch.chdir(tmp_path)
    argv = fid_argv(coco_root, "unused", tmp_path / "stats", "--deepcache-interval", "2", "--deepcache-branch", "1")
    out = argv.index("--out")
    assert fid.main([*argv[:out], *argv[out + 2:]]) == 0
    assert calls == [(2, 1)] * 3
    result = json.loads((tmp_path / "results" / "fid" / "sd15_gate2_dc2_br1_tiny" / "result.json").read_text())
    assert (result["gate"], result["deepcache_interval"], result["deepcache_branch"]) == (2, 2, 1)
    assert "TGATE gate 2, DeepCache interval 2, branch 1" in capsys.readouterr().out


def test_deepcache_alone_is_the_baseline_flag_with_an_interval(tmp_path):
    parser = fid.build_parser()
    args = parser.parse_args(fid_argv(tmp_path, tmp_path / "o", tmp_path / "s", "--deepcache-interval", "3"))
    args.gate, args.baseline, args.out = None, True, None
    fid.check_arguments(parser, args, fid.get_model("sd15"))
    assert args.gate is None and args.schedule == TgateSchedule(None, deepcache_interval=3, deepcache_branch=0)
    assert args.out.name == "sd15_baseline_dc3_br0_tiny"
    assert fid.describe(args) == "DeepCache interval 3, branch 0"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--deepcache-branch", "1"], "--deepcache-branch needs --deepcache-interval"),
        (["--deepcache-interval", "0"], "--deepcache-interval must be an int >= 1"),
        (["--model", "pixart_alpha", "--deepcache-interval", "3"], "DeepCache caches a UNet's deep blocks"),
    ],
)
def test_bad_deepcache_arguments_exit_with_a_short_message(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        fid.main(fid_argv(tmp_path, tmp_path / "out", tmp_path / "s", *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
