"""TGATE on the toy digits checkpoint: accuracy, toy-FD and time per image at several gate steps, and whether
cross-attention outputs converge early.

    python eval/toy/evaluate.py                          # stock and gates 1, 3, 5, 10 of 25 steps, guidance 5
    python eval/toy/evaluate.py --convergence            # also the per-step change of cross-attention outputs

Accuracy: the fraction of samples that the digit classifier (``eval/toy/digits.py``) reads as the requested
digit. toy-FD: the Frechet distance between the classifier's 64-d features of the samples and of the real
digits (all 1,797); it is not Inception FID and not comparable to it. MACs: the denoiser's over one image's
sampling run, counted by eval/macs.py at the toy's size. Seconds per image: one batched call
for all samples of a setting, divided by their number.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `common` and `eval`

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from eval.fid_features import frechet_distance, statistics  # noqa: E402
from eval.toy import digits  # noqa: E402

STOCK = None  # the gate "setting" of the stock pipeline


def toy_fd(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two (N, D) feature sets, as eval/fid.py computes it."""
    return frechet_distance(statistics(features_a), statistics(features_b))


def denoiser_macs(pipe, steps: int, guidance: float) -> Callable[[int | None], int]:
    """eval/macs.py's count of one run's denoiser MACs per image at the toy's size, as a function of the gate."""
    from common.schedule import TgateSchedule
    from common.step_macs import pipeline_counter

    counter = pipeline_counter(pipe, pipe.native_resolution, pipe.uses_guidance(guidance))
    return lambda gate: counter.total(TgateSchedule(gate), steps)


def requested_digits(per_digit: int, styles: list[str]) -> tuple[list[str], np.ndarray]:
    """Prompts asking for each digit ``per_digit`` times, cycling through the caption styles."""
    labels = np.repeat(np.arange(digits.NUM_CLASSES), per_digit)
    prompts = [digits.caption_for(label, styles[i % len(styles)]) for i, label in enumerate(labels)]
    return prompts, labels


def load_toy_pipeline(checkpoint: str | Path = digits.CHECKPOINT_DIR):
    from SD_1_5.pipeline import TgateStableDiffusionPipeline

    pipe = TgateStableDiffusionPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, prompts: list[str], steps: int, gate: int | None, guidance: float, seed: int) -> tuple[np.ndarray, float]:
    """Images (N, 16, 16, 3) in [0, 1] for the prompts, and the seconds the call took."""
    start = time.perf_counter()
    images = pipe(prompts, num_inference_steps=steps, gate_step=gate, guidance_scale=guidance,
                  generator=torch.Generator().manual_seed(seed), output_type="np").images
    return images, time.perf_counter() - start


def evaluate_gates(pipe, gates: list[int | None], per_digit: int, steps: int, guidance: float, seed: int,
                   styles: list[str]) -> list[dict]:
    """One row per gate setting: accuracy, toy-FD against all real digits, seconds per image, denoiser MACs."""
    prompts, labels = requested_digits(per_digit, styles)
    reference = digits.features(digits.load_reference_digits()[0])
    macs_of = denoiser_macs(pipe, steps, guidance)
    pipe(prompts[:2], num_inference_steps=2, guidance_scale=guidance, output_type="latent")  # warm-up, untimed
    rows = []
    for gate in tqdm(gates, desc="gate settings"):
        images, seconds = sample(pipe, prompts, steps, gate, guidance, seed)
        rows.append({
            "setting": "stock" if gate is STOCK else f"TGATE gate {gate}",
            "gate_step": gate,
            "accuracy": digits.accuracy(images, labels),
            "toy_fd": toy_fd(digits.features(images), reference),
            "seconds_per_image": seconds / len(prompts),
            "macs_per_image": macs_of(gate),
        })
    return rows


def real_digits_row(count: int) -> dict:
    """The same measures on held-out real digits: the floor that generated samples are compared with."""
    images, labels = digits.load_reference_digits(min(count, len(digits.split_indices("held_out"))), seed=0,
                                                  split="held_out")
    reference = digits.features(digits.load_reference_digits()[0])
    return {"setting": f"real held-out digits (n={len(labels)})", "gate_step": None,
            "accuracy": digits.accuracy(images, labels), "toy_fd": toy_fd(digits.features(images), reference),
            "seconds_per_image": None, "macs_per_image": None}


@torch.no_grad()
def cross_attention_change(pipe, prompts: list[str], steps: int, guidance: float, seed: int) -> dict[str, list[float]]:
    """Per step, over every cross-attention module of a stock run: the relative change of its output from the
    previous step, ||A_i - A_(i-1)|| / ||A_(i-1)||, and its relative distance to the last step's output."""
    from common.gate import cross_attention_modules

    outputs: dict[int, list[torch.Tensor]] = {}
    step = {"index": 0}

    def record(module, args, output):
        outputs.setdefault(step["index"], []).append(output.detach().clone())

    def next_step(pipeline, index, timestep, callback_kwargs):
        step["index"] = index + 1
        return callback_kwargs

    handles = [module.register_forward_hook(record) for module in cross_attention_modules(pipe.unet)]
    try:
        pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
             generator=torch.Generator().manual_seed(seed), callback_on_step_end=next_step)
    finally:
        for handle in handles:
            handle.remove()

    def relative(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        return float(np.mean([((x - y).norm() / y.norm()).item() for x, y in zip(a, b)]))

    last = outputs[steps - 1]
    return {
        "change_from_previous_step": [relative(outputs[i], outputs[i - 1]) for i in range(1, steps)],
        "distance_to_last_step": [relative(outputs[i], last) for i in range(steps)],
    }


def gate_setting(text: str) -> int | None:
    if text == "stock":
        return STOCK
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a gate step is >= 1 (or 'stock'), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="TGATE on the toy digits checkpoint (trained here, not a paper model): classifier accuracy, "
        "toy-FD (classifier features, not Inception FID) and seconds per image at several gate steps.")
    parser.add_argument("--gates", nargs="+", type=gate_setting, default=[STOCK, 1, 3, 5, 10],
                        help="settings to compare: 'stock' and gate steps >= 1 (default: stock 1 3 5 10)")
    parser.add_argument("--per-digit", type=int, default=20, help="samples per digit and setting (default 20)")
    parser.add_argument("--steps", type=int, default=25, help="DPM-Solver steps (default 25, as the paper's SD runs)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default 0)")
    parser.add_argument("--styles", nargs="+", choices=digits.CAPTION_STYLES, default=list(digits.CAPTION_STYLES),
                        help="caption styles, cycled: word = 'a handwritten digit seven', numeral = 'the digit 7'")
    parser.add_argument("--convergence", action="store_true", help="also measure, on a stock run, how much each "
                        "step changes the cross-attention outputs (TGATE's key observation)")
    parser.add_argument("--checkpoint", type=Path, default=digits.CHECKPOINT_DIR,
                        help="toy pipeline folder (default: the committed eval/toy/checkpoint/)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.per_digit < 1 or args.steps < 1 or args.threads < 1 or args.guidance < 0:
        parser.error("--per-digit, --steps and --threads must be >= 1, --guidance >= 0")
    if not (args.checkpoint / "model_index.json").is_file():
        parser.error(f"no pipeline folder at {args.checkpoint} (model_index.json missing)")
    torch.set_num_threads(args.threads)
    pipe = load_toy_pipeline(args.checkpoint)
    print(f"toy digits checkpoint {args.checkpoint} (trained here, not a paper model): {args.per_digit} samples per "
          f"digit, {args.steps} DPM-Solver steps, guidance {args.guidance}, seed {args.seed}")
    rows = evaluate_gates(pipe, args.gates, args.per_digit, args.steps, args.guidance, args.seed, args.styles)
    rows.append(real_digits_row(10 * args.per_digit))
    if 10 * args.per_digit < 2 * digits.FEATURE_DIM:
        print(f"note: toy-FD from fewer than {2 * digits.FEATURE_DIM} samples is dominated by estimation bias; "
              "compare settings only at the same --per-digit")
    print(f"\n{'setting':<34} {'accuracy':>9} {'toy-FD':>8} {'s/image':>9} {'MACs/image':>11}")
    for row in rows:
        seconds = f"{row['seconds_per_image']:.4f}" if row["seconds_per_image"] is not None else "-"
        macs = f"{row['macs_per_image'] / 1e6:.1f}M" if row["macs_per_image"] is not None else "-"
        print(f"{row['setting']:<34} {row['accuracy']:>9.1%} {row['toy_fd']:>8.2f} {seconds:>9} {macs:>11}")
    results = {"model": "toy digits, trained here (not a paper model)", "checkpoint": str(args.checkpoint),
               "settings": {k: v for k, v in vars(args).items() if k not in ("json", "checkpoint")}, "rows": rows}
    if args.convergence:
        prompts, _ = requested_digits(2, args.styles)
        change = cross_attention_change(pipe, prompts, args.steps, args.guidance, args.seed)
        results["cross_attention"] = change
        print("\ncross-attention outputs of a stock run (mean over modules; 20 prompts):")
        print(f"{'step':>4} {'change from previous':>21} {'distance to last step':>22}")
        for i, distance in enumerate(change["distance_to_last_step"]):
            previous = f"{change['change_from_previous_step'][i - 1]:.4f}" if i else "-"
            print(f"{i:>4} {previous:>21} {distance:>22.4f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"-> {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
