"""The GPU latency benchmark: SD-1.5 at 512 px and SDXL at 1024 px, float16, 25 steps, stock vs TGATE (gate 10).

Run ``bash eval/gpu_bench.sh`` (or ``python eval/gpu_bench.py``) from anywhere, on a machine with one CUDA GPU;
``--random-weights`` needs no download (the real architectures with random weights: latency does not depend on
weight values). Each model goes through ``eval/latency.py`` (interleaved runs, median of ``--repeats``, the
hooks' overhead with no step gated) and both records go into one JSON. Not yet run on a GPU: by the work
counted (3 variants x 4 runs of each model), a few minutes on a recent data-centre GPU; on a much slower GPU,
lower ``--repeats`` to stay under 8 minutes.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, for `common`

# (registry model, image side in pixels): the paper's resolutions
BENCHMARKS = (("sd15", 512), ("sdxl", 1024))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="SD-1.5 (512 px) and SDXL (1024 px), float16, stock vs TGATE, seconds per image on one CUDA GPU, "
        "into one JSON. Fails at once without CUDA.",
    )
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--random-weights", action="store_true",
                         help="no download: the real architectures from common/model_configs with random weights")
    weights.add_argument("--tiny", action="store_true",
                         help="tiny random components at their own small size: a smoke test of this script only")
    parser.add_argument("--steps", type=int, default=25, metavar="N", help="sampling steps (default: 25)")
    parser.add_argument("--gate", type=int, default=10, metavar="N", help="gate step (default: 10, the paper's example scripts')")
    parser.add_argument("--repeats", type=int, default=3, metavar="K",
                        help="timed runs of each variant per model (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, metavar="W",
                        help="untimed runs of each variant first (default: 1)")
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda; cpu only with --tiny, to test "
                        "this script)")
    parser.add_argument("--out", type=Path, default=Path("gpu_bench.json"), metavar="PATH",
                        help="the JSON to write (default: gpu_bench.json in the current folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device.startswith("cpu") and not args.tiny:
        parser.error("this is the GPU benchmark: --device cpu only with --tiny (eval/latency.py times the CPU)")

    import torch  # before diffusers, whose import takes seconds: no CUDA fails at once

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch (torch.cuda.is_available() is False); this benchmark needs "
              "one. On a CPU, use eval/latency.py.", file=sys.stderr)
        return 2

    from eval import latency

    started = time.perf_counter()
    records = []
    for model, resolution in BENCHMARKS:
        argv = ["--model", model, "--steps", str(args.steps), "--gate", str(args.gate), "--repeats",
                str(args.repeats), "--warmup", str(args.warmup), "--device", args.device, "--overhead"]
        if args.tiny:
            argv.append("--tiny")  # at the tiny model's own size: 1024 px would only time its VAE
        else:
            argv += ["--resolution", str(resolution)]
        if args.random_weights:
            argv.append("--random-weights")
        record = latency.run_or_explain(latency.parse_args(argv))
        if record is None:
            return 2
        print(latency.report(record), flush=True)
        records.append(record)
        gc.collect()  # free one model before the next is built
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    summary = {  # "rows": the layout eval/table.py reads
        "device": records[0]["device"],
        "weights": records[0]["weights"],
        "weights_note": records[0]["weights_note"],
        "wall_s": time.perf_counter() - started,
        "rows": records,
    }
    latency.write_json(args.out, summary)
    print(f"{len(records)} models in {summary['wall_s']:.0f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
