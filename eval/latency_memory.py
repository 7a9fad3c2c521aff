"""eval/latency.py's peak memory on the CPU: each variant at each batch size in a fresh process.

A process's peak resident memory (VmHWM) only grows, so the parent starts ``eval/latency.py`` again per variant
and batch size with the hidden ``--memory-probe VARIANT --memory-batch B``; the child builds the pipeline,
runs that variant once and prints one tagged JSON line (:func:`memory_probe`).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from common.models import get_model
from eval.latency_variants import benchmarked_pipeline, call_settings, run_settings, stock_pipeline, variant_call, variant_table
from eval.timing import process_memory, reset_peak_rss


def memory_probe(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh process: build the pipeline, run one variant once at one batch size, and report the resident
    memory after building and the peak during the run (the child side of ``--batch-sizes`` on the CPU)."""
    spec = get_model(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    built = benchmarked_pipeline(spec, args.weights, args.checkpoint, args.device_resolved, args.dtype_resolved)
    pipe, (steps, _resolution, size) = built.pipe, run_settings(args, spec, built.pipe)
    stock = stock_pipeline(pipe)
    for each in (pipe, stock):
        each.set_progress_bar_config(disable=True)
    settings = call_settings(stock, built.prompt_inputs, steps, size, spec.guidance_scale)
    variant = variant_table(args.schedule, steps, args.overhead)[args.memory_probe]
    gc.collect()
    before = process_memory()
    was_reset = reset_peak_rss()
    with torch.no_grad():
        variant_call(variant, pipe, stock, settings, args.seed, num_images_per_prompt=args.memory_batch)()
    after = process_memory()
    return {"variant": args.memory_probe, "batch": args.memory_batch, "rss_after_build_bytes": before.get("VmRSS"),
            "peak_rss_bytes": after.get("VmHWM"), "peak_reset_after_build": was_reset,
            "peak_above_build_bytes": (after["VmHWM"] - before["VmRSS"]) if was_reset and after and before else None}


MEMORY_PROBE_TAG = "MEMORY_PROBE "


def child_argv(args: argparse.Namespace) -> list[str]:
    """The command line of this run without the flags a memory probe must not repeat."""
    argv: list[str] = []
    skipping = False
    for item in args.argv:
        name = item.split("=", 1)[0]
        if skipping and not item.startswith("--"):
            continue  # a value of the flag dropped
        skipping = False
        if name in ("--json", "--batch-sizes", "--compile-mode", "--compile-backend"):
            skipping = "=" not in item
            continue
        if name == "--compile":
            continue
        argv.append(item)
    return argv


def cpu_peak_memory(args: argparse.Namespace, names: Sequence[str], progress: bool) -> dict[str, dict[str, Any]]:
    """Each variant at each of ``--batch-sizes``, each in a fresh Python process (eager): its peak resident
    memory, and the peak above the resident memory once the pipeline is built."""
    results: dict[str, dict[str, Any]] = {name: {} for name in names}
    script = str(Path(__file__).resolve().with_name("latency.py"))
    jobs = [(batch, name) for batch in args.batch_sizes for name in names]
    for batch, name in tqdm(jobs, desc="memory", unit="process", file=sys.stderr, disable=not progress):
        command = [sys.executable, script, *child_argv(args), "--memory-probe", name, "--memory-batch", str(batch)]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith(MEMORY_PROBE_TAG)]
        if done.returncode or not lines:
            raise ValueError(f"the memory probe of {name} at batch {batch} failed: {done.stderr.strip()[-2000:]}")
        results[name][str(batch)] = json.loads(lines[-1][len(MEMORY_PROBE_TAG):])
    return results
