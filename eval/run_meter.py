"""What one pipeline call's denoising loop actually executed: MACs, loop time, peak memory.

Caches such as FirstBlockCache or MagCache decide at run time what to skip, so their cost is counted while the
call runs (not derived from a formula):

- MACs: ``torch.utils.flop_counter.FlopCounterMode`` over the call, read for the denoiser module only (its
  FLOPs / 2; attention included, which calflops misses, also the CPU's fused kernel, which torch's counter
  misses: ``common.flop_count.attention_flop_counter``).
- Loop time: from the denoiser's first forward to the end of the last step (``callback_on_step_end``), so prompt
  encoding and decoding are left out; wall-clock seconds and the process's CPU seconds (on a CPU shared with
  other jobs the CPU seconds are the stable measure of the work done: wall time there varies several-fold).
- Peak memory: the most bytes of tensors alive at once during the loop above those alive when it began (weights
  and the prompt embeddings excluded): a live-tensor tracker on the CPU, the allocator's peak on CUDA.
"""

from __future__ import annotations

import time
import weakref
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from common.flop_count import attention_flop_counter


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storages created under this mode and still alive; the peak inside an open window."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self._sizes: dict[int, int] = {}
        self._window_base: int | None = None
        self.window_peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                self._track(tensor.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key = id(storage)  # views share their storage's Python object
        if key in self._sizes:
            return
        self._sizes[key] = storage.nbytes()
        self.live += self._sizes[key]
        if self._window_base is not None:
            self.window_peak = max(self.window_peak, self.live - self._window_base)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def open_window(self) -> None:
        self._window_base, self.window_peak = self.live, 0

    def close_window(self) -> None:
        self._window_base = None


class LoopClock:
    """Times a pipeline's denoising loop: first denoiser forward -> end of the last step's callback."""

    def __init__(self, denoiser: torch.nn.Module, on_start: Callable[[], None] | None = None,
                 on_step_end: Callable[[], None] | None = None) -> None:
        self.start: float | None = None
        self.end: float | None = None
        self.cpu_start: float | None = None
        self.cpu_end: float | None = None
        self._on_start, self._on_step_end = on_start, on_step_end
        self._handle = denoiser.register_forward_pre_hook(self._first_forward)

    def _first_forward(self, module, args) -> None:
        if self.start is None:
            if self._on_start:
                self._on_start()
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def callback(self, pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        """``callback_on_step_end``: the last call marks the loop's end."""
        self.end, self.cpu_end = time.perf_counter(), time.process_time()
        if self._on_step_end:
            self._on_step_end()
        return callback_kwargs

    def remove(self) -> None:
        self._handle.remove()

    @property
    def seconds(self) -> float:
        if self.start is None or self.end is None:
            raise RuntimeError("the denoising loop did not run (no denoiser forward or no step callback)")
        return self.end - self.start

    @property
    def cpu_seconds(self) -> float:
        self.seconds  # noqa: B018 - the same check that the loop ran
        return self.cpu_end - self.cpu_start


@dataclass
class RunCost:
    output: Any
    loop_seconds: float
    loop_cpu_seconds: float
    denoiser_macs: int | None = None
    peak_bytes: int | None = None


def run_timed(call: Callable[..., Any], denoiser: torch.nn.Module) -> RunCost:
    """``call(callback_on_step_end=...)`` with its loop timed, nothing else counted."""
    clock = LoopClock(denoiser)
    try:
        output = call(callback_on_step_end=clock.callback)
    finally:
        clock.remove()
    return RunCost(output, clock.seconds, clock.cpu_seconds)


def run_counted(call: Callable[..., Any], denoiser: torch.nn.Module) -> RunCost:
    """``call(callback_on_step_end=...)`` under a FLOP counter and a memory tracker (slower: time it apart)."""
    device = next(denoiser.parameters()).device
    on_cuda = device.type == "cuda"
    memory = None if on_cuda else LiveTensorBytes()
    marks: dict[str, int] = {}

    def loop_started() -> None:
        if on_cuda:
            torch.cuda.synchronize(device)
            marks["base"] = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            memory.open_window()

    def step_ended() -> None:
        if on_cuda:
            marks["peak"] = torch.cuda.max_memory_allocated(device) - marks["base"]
        else:
            marks["peak"] = memory.window_peak

    clock = LoopClock(denoiser, on_start=loop_started, on_step_end=step_ended)
    counter = attention_flop_counter()
    try:
        with ExitStack() as stack:
            stack.enter_context(counter)
            if memory is not None:
                stack.enter_context(memory)
            output = call(callback_on_step_end=clock.callback)
    finally:
        clock.remove()
    flops = counter.get_flop_counts().get(type(denoiser).__name__, {})
    return RunCost(output, clock.seconds, clock.cpu_seconds, sum(flops.values()) // 2, marks.get("peak"))
