"""The official ``tgate`` package (1.0.0) as a timed variant, on the same components as the project's pipeline.

Its loaders wrap the diffusers pipeline; its ``tgate()`` call rewrites the attention modules' ``forward`` and
leaves a cache on them, so their state is put back after each of its runs. Not a dependency: the variant
exists only where the package is importable.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from typing import Any, Callable, Iterator

import torch

from common.schedule import TgateSchedule
from eval.latency_variants import seeded, stock_pipeline

OFFICIAL_LOADERS = {  # the diffusers pipeline class -> the official package's loader for it
    "StableDiffusionPipeline": "TgateSDLoader",
    "StableDiffusionXLPipeline": "TgateSDXLLoader",
    "PixArtAlphaPipeline": "TgatePixArtAlphaLoader",
    "PixArtSigmaPipeline": "TgatePixArtSigmaLoader",
}


class OfficialPackageError(RuntimeError):
    """The official tgate package failed on this pipeline."""


def official_variant(pipe: Any, settings: dict[str, Any], seed: int, schedule: TgateSchedule,
                     guided: bool) -> Callable[[], None] | None:
    """A run of the official ``tgate`` package on ``pipe``'s components at ``schedule``'s gate and V2 intervals
    (its cross-attention-only mode at v1's), or None when the package is not installed. Each run restores the
    modules it rewrites."""
    if importlib.util.find_spec("tgate") is None:
        return None
    stock = stock_pipeline(pipe)
    loader = getattr(importlib.import_module("tgate"), OFFICIAL_LOADERS[type(stock).__name__])
    official = loader(stock)
    official.set_progress_bar_config(disable=True)
    # v1 (sp_interval = fi_interval = 1, no warm-up): cross-attention cached at the gate, self-attention computed
    run = seeded(official.tgate, settings, seed, gate_step=schedule.gate_step, sp_interval=schedule.sp_interval,
                 fi_interval=schedule.fi_interval, warm_up=schedule.warm_up, lcm=not guided)

    def run_restoring_modules() -> None:
        with restored_module_state(pipe.denoiser):
            try:
                run()
            except Exception as error:  # a package outside this project: say which, not a traceback
                raise OfficialPackageError(f"the official tgate package failed: {type(error).__name__}: {error}. "
                                           "Time without it: --no-official.") from error

    return run_restoring_modules


@contextlib.contextmanager
def restored_module_state(denoiser: torch.nn.Module) -> Iterator[None]:
    """Put back every module's instance ``forward`` and ``cache`` as they were (the official package leaves
    its own ``forward`` and a cross-attention cache on each attention module)."""
    saved = [(module, {key: module.__dict__[key] for key in ("forward", "cache") if key in module.__dict__})
             for module in denoiser.modules()]
    try:
        yield
    finally:
        for module, attributes in saved:
            for key in ("forward", "cache"):
                module.__dict__.pop(key, None)
            module.__dict__.update(attributes)
