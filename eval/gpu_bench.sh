#!/usr/bin/env bash
# TGATE latency on one CUDA GPU: SD-1.5 (512 px) and SDXL (1024 px), float16, 25 steps, stock vs TGATE
# (gate 10), into one JSON. Offline without weights:
#
#   bash eval/gpu_bench.sh --random-weights --out gpu_bench.json
#
# Flags go to eval/gpu_bench.py (--help lists them). Exits at once, with a message, when no CUDA GPU is visible.
set -euo pipefail
exec python "$(dirname "$0")/gpu_bench.py" "$@"
