"""Timing and memory, for every benchmark: the clocks, the interleaving of variants, the memory probes.

- :func:`time_interleaved`: every variant run in rounds, each round in a rotated order, so that a change of
  machine load falls on all variants alike; :func:`timed_run` times one run (garbage collector paused, the
  device synchronised);
- :class:`LoopClock`: the denoising loop's seconds alone, read off the pipeline's progress bar;
- memory: this process's resident memory and its peak (:func:`process_memory`, :func:`reset_peak_rss`, for
  the CPU, where each probe runs in a fresh process) and CUDA's peak allocation (:func:`cuda_peak_memory`).

Every clock reading goes through this module's ``perf_counter`` (wall seconds) or ``process_time`` (the
process's CPU seconds: ``--clock cpu``), so a test can give it a fake clock.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter, process_time
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from common.cli import synchronize


def add_timing_args(parser: argparse.ArgumentParser) -> None:
    """The flags of every timed benchmark (eval/latency.py, eval/gpu_bench.py): rounds and torch.compile."""
    parser.add_argument("--repeats", type=int, default=3, metavar="K",
                        help="timed runs of each variant, interleaved (default: 3); the median is reported")
    parser.add_argument("--warmup", type=int, default=1, metavar="W",
                        help="untimed runs of each variant first (default: 1)")
    parser.add_argument("--compile-mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                        help="torch.compile mode (default: default; reduce-overhead uses CUDA graphs, CUDA only)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (default: inductor; eager for quick checks of the code path)")


CLOCKS = ("wall", "cpu")


def add_clock_arg(parser: argparse.ArgumentParser, default: str = "wall") -> None:
    """``--clock``, for a benchmark that can time the CPU (eval/latency.py, eval/compare.py; the GPU benchmark
    times wall seconds)."""
    parser.add_argument("--clock", choices=CLOCKS, default=default,
                        help=f"wall: wall-clock seconds (an idle machine, a GPU); cpu: this process's CPU seconds, "
                        "for the CPU: with --threads 1 they are the work done and hardly move when other jobs "
                        f"share the machine, where wall time varies several-fold (default: {default})")


def now(clock: str = "wall") -> float:
    """Seconds on ``clock``: wall-clock (``perf_counter``) or this process's CPU time (``process_time``)."""
    return perf_counter() if clock == "wall" else process_time()


def check_timing_args(args: argparse.Namespace) -> None:
    """A ``ValueError`` in the flags' words for rounds that cannot be run."""
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")


@dataclass(frozen=True)
class Timing:
    runs: tuple[float, ...]  # seconds of each timed run, in order
    loop_runs: tuple[float, ...] = ()  # seconds of the denoising loop of each timed run (where it was seen)
    peak_memory_bytes: int | None = None  # CUDA: the most memory allocated during any timed run

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def loop_median(self) -> float | None:
        return statistics.median(self.loop_runs) if self.loop_runs else None

    def summary(self) -> dict[str, Any]:
        summary = {"median_s": self.median, "min_s": min(self.runs), "max_s": max(self.runs), "runs_s": list(self.runs)}
        if self.loop_runs:
            summary.update(loop_median_s=self.loop_median, loop_runs_s=list(self.loop_runs))
        if self.peak_memory_bytes is not None:
            summary["peak_memory_bytes"] = self.peak_memory_bytes
        return summary


class LoopClock:
    """The denoising loop's seconds, apart from prompt encoding and VAE decoding.

    Every pipeline here opens its progress bar right before the loop (``with self.progress_bar(total=steps)``)
    and closes it right after the last step: the clock starts when the bar is opened and stops when it is
    closed, with the device synchronised at both ends. It sits outside the denoiser, so a torch.compile'd
    denoiser is timed the same way."""

    def __init__(self, device: torch.device, clock: str = "wall") -> None:
        self.device, self.clock = device, clock
        self.start: float | None = None
        self.end: float | None = None

    def reset(self) -> None:
        self.start = self.end = None

    @property
    def seconds(self) -> float | None:
        return None if self.start is None or self.end is None else self.end - self.start

    def instrument(self, pipe: Any) -> Any:
        """Time ``pipe``'s loops on this clock (an instance attribute over its ``progress_bar`` method)."""
        original = pipe.progress_bar

        def progress_bar(*args, **kwargs):
            synchronize(self.device)
            self.start, self.end = now(self.clock), None
            bar = original(*args, **kwargs)
            close = getattr(bar, "close", None)
            if close is not None:
                def close_and_stop(*close_args, **close_kwargs):
                    if self.end is None:
                        synchronize(self.device)
                        self.end = now(self.clock)
                    return close(*close_args, **close_kwargs)

                bar.close = close_and_stop
            return bar

        pipe.progress_bar = progress_bar
        return pipe


def timed_run(run: Callable[[], Any], device: torch.device, clock: str = "wall") -> float:
    """Seconds of ``run()`` on ``clock``, with the garbage collector paused as ``timeit`` does (no collection
    pause falls at random into one variant's run)."""
    synchronize(device)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = now(clock)
        run()
        synchronize(device)
        return now(clock) - start
    finally:
        if gc_was_enabled:
            gc.enable()


def time_interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int, device: torch.device,
                     progress: bool = True, clock: LoopClock | None = None, seconds_on: str = "wall"
                     ) -> dict[str, Timing]:
    """Run every variant ``warmup`` times untimed, then ``repeats`` timed rounds; round ``r`` starts with
    variant ``r mod n``: over the rounds each variant takes each place in the order in turn. With a ``clock``
    (on the pipelines the variants call), each run's denoising loop is timed too; on CUDA each variant's peak
    allocated memory over its timed runs is kept (the peak is reset before every run). ``seconds_on``: the
    clock of the runs' seconds, "wall" or "cpu" (the loop clock has its own)."""
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    loops: dict[str, list[float]] = {name: [] for name in names}
    peaks: dict[str, int] = {}
    cuda = device.type == "cuda"
    bar = tqdm(total=(warmup + repeats) * len(names), desc="timing", unit="run", file=sys.stderr,
               disable=not progress)
    with bar:
        for round_index in range(warmup + repeats):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                bar.set_postfix_str(("warm-up " if round_index < warmup else "") + name)
                if clock is not None:
                    clock.reset()
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                elapsed = timed_run(variants[name], device, seconds_on)
                if round_index >= warmup:
                    seconds[name].append(elapsed)
                    if clock is not None and clock.seconds is not None:
                        loops[name].append(clock.seconds)
                    if cuda:
                        peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated(device))
                bar.update()
    return {name: Timing(tuple(runs), tuple(loops[name]) if len(loops[name]) == len(runs) else (), peaks.get(name))
            for name, runs in seconds.items()}


def load_average() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(value, 2) for value in os.getloadavg()]
    return None


def process_memory() -> dict[str, int]:
    """This process's resident memory now (VmRSS) and at its peak (VmHWM), in bytes, from /proc/self/status."""
    values = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(value.split()[0]) * 1024
    return values


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current resident set (Linux: ``5`` into /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cuda_peak_memory(batch_sizes: Sequence[int], variants: dict[str, Callable[..., Any]],
                     device: torch.device) -> dict[str, dict[str, Any]]:
    """Each variant (``make(num_images_per_prompt=batch)`` gives its run) at each batch size on CUDA: ``torch.cuda.max_memory_allocated`` over one run (the
    peak reset before it), and the peak above what was allocated before the run (weights)."""
    results: dict[str, dict[str, Any]] = {name: {} for name in variants}
    for batch in batch_sizes:
        for name, make in variants.items():
            gc.collect()
            torch.cuda.empty_cache()
            synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            make(num_images_per_prompt=batch)()
            synchronize(device)
            peak = torch.cuda.max_memory_allocated(device)
            results[name][str(batch)] = {"variant": name, "batch": batch, "allocated_before_bytes": before,
                                         "peak_allocated_bytes": peak, "peak_above_build_bytes": peak - before}
    return results
