"""The demo's MAC counts: ONE function over common/step_macs.py's step counter (the one eval/macs.py counts with).

Re-pointed at the merge of eval/'s refactor: the counter and the meta copy come from common/ now.
"""

from __future__ import annotations

import threading


from common.architectures import text_tokens
from common.models import ModelSpec
from common.schedule import TgateSchedule

_COUNTERS: dict[tuple, object] = {}  # one step counter per (model, guidance): it remembers each plan's count
_LOCK = threading.Lock()


def sampling_macs(pipe, spec: ModelSpec, steps: int, guidance: float, schedule: TgateSchedule) -> tuple[int, int]:
    """(stock, TGATE) MACs of the denoiser over one image's sampling run at the pipeline's own image size.

    Counted by common/step_macs.py's ``StepCounter`` (eval/macs.py's) (calflops, through the project's own hooks) on a ``meta`` copy of
    the denoiser: no weights, no memory. calflops patches torch functions globally while it counts, so the
    caller must make sure no other thread runs a model meanwhile (demo/runner.py holds its counting lock).
    """
    from common.builders import meta_copy
    from common.step_macs import StepCounter

    guided = pipe.uses_guidance(guidance)
    key = (spec.key, guided)
    with _LOCK:
        counter = _COUNTERS.get(key)
        if counter is None:
            denoiser = meta_copy(pipe.denoiser)
            # the text length the pipeline hands the denoiser: PixArt pads to its own, CLIP to its tokenizer's
            tokens = text_tokens(spec) or getattr(getattr(pipe, "tokenizer", None), "model_max_length", None)
            counter = _COUNTERS[key] = StepCounter(denoiser, pipe.native_resolution, guided,
                                                   pipe.vae_scale_factor, tokens)
        return steps * counter.stock_step(), sum(counter.step_macs(schedule, steps))
