#!/usr/bin/env bash
# TGATE cost on one CUDA GPU: SD-1.5 (512 px) and SDXL (1024 px), float16, 25 steps, eager and torch.compile'd:
# stock, TGATE v1 (gate 10), TGATE-V2 (gate 10, sp 5/fi 1/wu 2), DeepCache (3, branch 0), DeepCache + TGATE;
# seconds per image, loop speedup beside MACs', peak memory; one JSON and a markdown table. Offline without weights:
#
#   bash eval/gpu_bench.sh --out gpu_bench.json   (cached checkpoints, else random weights per model)
#
#   bash eval/gpu_bench.sh --compare --out gpu_bench.json   (+ eval/compare.py on Wan2.1-T2V-1.3B 832x480x17, 25 steps,
#       and SDXL 1024 px: TGATE, DeepCache, diffusers' caches, stacks -> gpu_bench_compare_{wan,sdxl}.{json,md,png})
#   bash eval/gpu_bench.sh --compare-only --models sdxl   (only the comparison, one model)
#
# Flags go to eval/gpu_bench.py (--help lists them). Exits at once, with a message, when no CUDA GPU is visible.
set -euo pipefail
exec python "$(dirname "$0")/gpu_bench.py" "$@"
