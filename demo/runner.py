"""What the demo page runs, without Gradio: load a registry model once, run stock and TGATE on one seed, sweep
the gate. demo/app.py only lays these out on the page.

Concurrent visitors share one loaded pipeline. Each request gets its own pipeline object through diffusers'
``from_pipe`` (the weights are shared; the scheduler, which keeps per-call state, and the tokenizers, which are
not thread-safe, are its own), and the gate keeps its per-call state in a ``ContextVar`` (common/gate.py), so
stock and TGATE calls of several threads can run on one denoiser at once.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from diffusers.utils import logging as diffusers_logging
from PIL import Image

from common.cli import resolve_device_and_dtype, synchronize
from common.models import MODELS, TOY_MODEL, CheckpointNotFoundError, ModelSpec, get_model, looks_like_local_path
from common.schedule import TgateSchedule

from .macs import sampling_macs

DISPLAY_SIDE = 256  # small images (the toy's 16x16) are enlarged to at least this, pixel for pixel
MAX_STEPS = 100
MAX_SWEEP_GATES = 8
Progress = Callable[[float, str], None]  # (fraction done, what is running)


class DemoInputError(ValueError):
    """Bad input, said in the page's words (shown on the page, never as a traceback)."""


@dataclass(frozen=True)
class Settings:
    """One request's settings: everything but the gate."""

    prompt: str
    negative_prompt: str = ""
    steps: int = 25
    seed: int = 0
    guidance: float = 5.0
    sp_interval: int = 1
    fi_interval: int = 1
    warm_up: int = 0
    deepcache_interval: int | None = None  # None or 1: no DeepCache
    deepcache_branch: int = 0


@dataclass(frozen=True)
class Run:
    """One sampling run: its image at the pipeline's size, wall-clock seconds, the denoiser's MACs."""

    label: str
    image: Image.Image
    seconds: float
    macs: int


def model_choices() -> list[tuple[str, str]]:
    """(label, registry key) of every registry model, those whose weights are missing marked so."""
    return [(f"{spec.title} [{key}]" + ("" if weights_problem(spec) is None else " (weights not here)"), key)
            for key, spec in MODELS.items()]


def weights_source(spec: ModelSpec) -> str:
    """Where ``spec``'s weights are on this machine: its folder, or its snapshot in the Hugging Face cache.

    A ``DemoInputError`` saying how to provide them when they are not here (the demo never downloads)."""
    problem = weights_problem(spec)
    if problem is not None:
        raise DemoInputError(problem)
    if looks_like_local_path(spec.checkpoint):
        return spec.checkpoint
    from huggingface_hub import snapshot_download

    return snapshot_download(spec.checkpoint, local_files_only=True)


def weights_problem(spec: ModelSpec) -> str | None:
    """None when ``spec``'s checkpoint is on this machine, else a message naming it and how to get it."""
    if looks_like_local_path(spec.checkpoint):
        if (Path(spec.checkpoint).expanduser() / "model_index.json").is_file():
            return None
        where = f"the folder {spec.checkpoint}"
    else:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            snapshot_download(spec.checkpoint, local_files_only=True)
            return None
        except LocalEntryNotFoundError:
            where = "the Hugging Face cache ($HF_HOME)"
    return (f"The weights of {spec.title} ({spec.checkpoint}) are not in {where}, and this demo never downloads. "
            f"Download them once with network access (`hf download {spec.checkpoint}`) and pick it "
            f"again; or pick the toy model ('{TOY_MODEL}'), which runs offline.")


class CountingLock:
    """Generation runs share it; MAC counting takes it alone (calflops patches torch functions globally)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._running = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._running += 1
        try:
            yield
        finally:
            with self._condition:
                self._running -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: self._running == 0)
            yield  # holding the condition: no run starts meanwhile


COUNTING = CountingLock()


class LoadedModel:
    """A registry model's TGATE pipeline, loaded once and shared by every request."""

    def __init__(self, spec: ModelSpec, pipe, device: torch.device) -> None:
        self.spec, self.pipe, self.device = spec, pipe, device
        self.has_step_callback = "callback_on_step_end" in inspect.signature(pipe.__call__).parameters
        self.warm_up()

    @property
    def deepcache_applies(self) -> bool:
        return self.spec.denoiser == "unet"

    def defaults(self) -> Settings:
        spec = self.spec
        return Settings(prompt=spec.prompt, steps=spec.steps, seed=spec.seed, guidance=spec.guidance_scale,
                        sp_interval=spec.sp_interval, fi_interval=spec.fi_interval, warm_up=spec.warm_up)

    def warm_up(self) -> None:
        """A short stock run and a short TGATE run, so that no timed run pays for first-call costs."""
        with COUNTING.shared():
            for tgate in ({}, {"gate_step": 1}):
                self.request_pipeline()(prompt=self.spec.prompt, num_inference_steps=2, **tgate)

    def request_pipeline(self):
        """A pipeline object of this request: the shared weights, its own scheduler and tokenizers."""
        base = self.pipe
        own = {"scheduler": base.scheduler.from_config(base.scheduler.config)}
        own.update({name: copy.deepcopy(component) for name, component in base.components.items()
                    if "tokenizer" in name and component is not None})
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # from_pipe's notes on shared components, once per request
        try:
            pipe = type(base).from_pipe(base, **own)
        finally:
            diffusers_logging.set_verbosity(verbosity)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def check(self, settings: Settings, gates: list[int]) -> None:
        """A ``DemoInputError`` for settings the page cannot run, in the page's words."""
        if not settings.prompt.strip():
            raise DemoInputError("Enter a prompt: an empty prompt leaves nothing for cross-attention to attend to.")
        if not 1 <= settings.steps <= MAX_STEPS:
            raise DemoInputError(f"Steps must be between 1 and {MAX_STEPS}, got {settings.steps}.")
        for gate in gates:
            if not 1 <= gate <= settings.steps:
                raise DemoInputError(f"The gate must be between 1 and the number of steps ({settings.steps}), got "
                                     f"{gate}. A gate equal to the steps gates nothing: the stock image.")
        if settings.guidance < 0:
            raise DemoInputError(f"Guidance must be >= 0, got {settings.guidance}.")
        for name, value, minimum in (("sp_interval", settings.sp_interval, 1),
                                     ("fi_interval", settings.fi_interval, 1), ("warm_up", settings.warm_up, 0)):
            if value < minimum:
                raise DemoInputError(f"TGATE-V2's {name} must be >= {minimum}, got {value}.")
        if settings.deepcache_interval not in (None, 1):
            if not self.deepcache_applies:
                raise DemoInputError(f"DeepCache caches a UNet's deep blocks and {self.spec.title} is a transformer: "
                                     "set the DeepCache interval to 1 (off).")
            if settings.deepcache_interval < 1 or settings.deepcache_branch < 0:
                raise DemoInputError("The DeepCache interval must be >= 1 and its branch >= 0.")
        try:
            for gate in gates:
                self.schedule(settings, gate)
        except ValueError as error:  # e.g. a DeepCache branch beyond this UNet's
            raise DemoInputError(str(error)) from None

    def schedule(self, settings: Settings, gate: int | None) -> TgateSchedule:
        """The TGATE settings of a run (``gate=None``: the stock run, no V2 and no DeepCache)."""
        if gate is None:
            return TgateSchedule(None)
        deepcache = settings.deepcache_interval if settings.deepcache_interval not in (None, 1) else None
        schedule = TgateSchedule(gate, sp_interval=settings.sp_interval, fi_interval=settings.fi_interval,
                                 warm_up=settings.warm_up, deepcache_interval=deepcache,
                                 deepcache_branch=settings.deepcache_branch if deepcache else 0)
        if deepcache:
            from common.gate import check_deepcache

            check_deepcache(self.pipe.denoisers, schedule)
        return schedule

    def run(self, settings: Settings, gate: int | None, progress: Progress, share: tuple[float, float]) -> Run:
        """One image: stock (``gate=None``) or TGATE at ``gate``. ``share``: this run's part of the bar."""
        schedule = self.schedule(settings, gate)
        label = "stock" if gate is None else f"TGATE gate {gate}"
        with COUNTING.exclusive():
            stock_macs, tgate_macs = sampling_macs(self.pipe, self.spec, settings.steps, settings.guidance, schedule)
        start, width = share
        call = dict(prompt=settings.prompt, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                    generator=torch.Generator("cpu").manual_seed(settings.seed))
        if settings.negative_prompt:  # else the pipeline's own default (PixArt's is "", and None breaks it)
            call["negative_prompt"] = settings.negative_prompt
        if gate is not None:
            call.update(gate_step=schedule.gate_step, sp_interval=schedule.sp_interval,
                        fi_interval=schedule.fi_interval, warm_up=schedule.warm_up,
                        deepcache_interval=schedule.deepcache_interval, deepcache_branch=schedule.deepcache_branch)
        if self.has_step_callback:
            def on_step(_pipe, step, _timestep, tensors):
                progress(start + width * (step + 1) / settings.steps, f"{label}: step {step + 1}/{settings.steps}")
                return tensors

            call["callback_on_step_end"] = on_step
        progress(start, f"{label}: starting")
        pipe = self.request_pipeline()
        with COUNTING.shared():
            synchronize(self.device)
            began = time.perf_counter()
            output = pipe(**call)
            synchronize(self.device)
            seconds = time.perf_counter() - began
        return Run(label, first_image(output), seconds, tgate_macs if gate is not None else stock_macs)

    def compare(self, settings: Settings, gate: int, progress: Progress) -> tuple[Run, Run]:
        """Stock and TGATE on the same seed."""
        self.check(settings, [gate])
        return self.run(settings, None, progress, (0.0, 0.5)), self.run(settings, gate, progress, (0.5, 0.5))

    def sweep(self, settings: Settings, gates: list[int], progress: Progress) -> list[Run]:
        """Stock, then TGATE at each gate, on the same seed."""
        self.check(settings, gates)
        share = 1 / (len(gates) + 1)
        return [self.run(settings, gate, progress, (index * share, share))
                for index, gate in enumerate([None, *gates])]


def first_image(output) -> Image.Image:
    """The image of a pipeline's output.

    The one place that knows the output's shape: a video pipeline (the Wan toy, registry key 'wan_toy', once it
    exists) returns ``output.frames``; showing it means returning its frames here and a video component on the
    page (demo/app.py's ``image_box``)."""
    if not hasattr(output, "images"):
        raise DemoInputError(f"this demo shows images, and the pipeline returned {type(output).__name__} "
                             "(a video pipeline?): pick an image model")
    return output.images[0]


class ModelStore:
    """Loads each requested registry model once, on one device; keeps the last ``capacity`` loaded."""

    def __init__(self, device: str = "auto", capacity: int = 2) -> None:
        self.device, self.dtype = resolve_device_and_dtype(device, "auto")
        self.capacity = capacity
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> LoadedModel:
        if key not in MODELS:
            raise DemoInputError(f"Unknown model {key!r}; choose one of: {', '.join(MODELS)}.")
        with self._lock:
            if key not in self._loaded:
                spec = get_model(key)
                source = weights_source(spec)
                try:
                    pipe = spec.load(None if source == spec.checkpoint else source, torch_dtype=self.dtype)
                except CheckpointNotFoundError as error:
                    raise DemoInputError(" ".join(line.strip() for line in str(error).splitlines()[:2])) from None
                pipe = pipe.to(self.device, silence_dtype_warnings=True)
                if len(self._loaded) >= self.capacity:  # requests still running keep their own reference
                    self._loaded.pop(next(iter(self._loaded)))
                self._loaded[key] = LoadedModel(spec, pipe, self.device)
            return self._loaded[key]


def enlarge(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """``image`` scaled by a whole factor (nearest pixel) until its short side is at least ``side``."""
    factor = -(-side // min(image.size))
    return image if factor <= 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def abs_difference(a: Image.Image, b: Image.Image) -> tuple[Image.Image, float, int]:
    """|a - b| per pixel and channel (as an image), its mean and its max, in 0..255 levels."""
    diff = np.abs(np.asarray(a.convert("RGB"), dtype=np.int16) - np.asarray(b.convert("RGB"), dtype=np.int16))
    return Image.fromarray(diff.astype(np.uint8)), float(diff.mean()), int(diff.max())


def format_macs(macs: int) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= size:
            return f"{macs / size:.3f}{unit}"
    return str(macs)


def parse_gates(text: str) -> list[int]:
    """``"2, 5, 10"`` -> [2, 5, 10]; a ``DemoInputError`` for anything else."""
    parts = [part for part in text.replace(",", " ").split() if part]
    if not parts:
        raise DemoInputError("Enter the gates to sweep, e.g. 2, 5, 10, 20.")
    try:
        gates = [int(part) for part in parts]
    except ValueError:
        raise DemoInputError(f"The gates must be whole numbers separated by commas, got {text!r}.") from None
    if len(gates) > MAX_SWEEP_GATES:
        raise DemoInputError(f"Sweep at most {MAX_SWEEP_GATES} gates at once, got {len(gates)}.")
    return gates
