"""MACs that count attention: one forward counted by ``torch.utils.flop_counter.FlopCounterMode``, per module.

Convention (say it beside every figure): multiply-accumulates of the matrix products that actually run (linear
layers, convolutions, and attention's ``Q K^T`` and ``A V``, ``2 N M d`` FLOPs each, inside
``scaled_dot_product_attention`` or written out), FLOPs / 2; elementwise operations, norms and softmax are not
counted. calflops (eval/macs.py, the paper-table reproduction's convention) counts the same linear layers but
skips ``scaled_dot_product_attention``: at 32,760 tokens (Wan2.1-1.3B, 832x480, 81 frames) that is 99T of a
141.5T forward. Counting runs on the ``meta`` device (no weights, no memory) in about a second.

For TGATE: a forward after the gate skips every cross-attention module (it returns its cache), so it costs
:attr:`ForwardMacs.without_cross_attention`; :func:`sampling_macs` adds up a run, with guidance by one batched
call (LTX-Video, Sana, HunyuanDiT: batch 2) or by two calls (Wan: two calls of batch 1).

>>> from common.flop_count import model_sampling_macs
>>> model_sampling_macs("wan")  # Wan2.1-T2V-1.3B, 832x480, 81 frames, 50 steps, gate 20  # doctest: +SKIP
{'stock': 14150..., 'tgate': 9716..., ...}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import HunyuanDiT2DModel, LTXVideoTransformer3DModel, SanaTransformer2DModel, WanTransformer3DModel
from torch.utils.flop_counter import FlopCounterMode

CONVENTION = ("torch FlopCounterMode MACs (FLOPs / 2): linear layers, convolutions and attention's QK^T and AV "
              "matmuls; not elementwise ops, norms, softmax")
# The cross-attention modules TGATE caches, per architecture (module names inside the transformer).
CROSS_ATTENTION = {
    WanTransformer3DModel: r"blocks\.\d+\.attn2",
    LTXVideoTransformer3DModel: r"transformer_blocks\.\d+\.attn2",
    SanaTransformer2DModel: r"transformer_blocks\.\d+\.attn2",
    HunyuanDiT2DModel: r"blocks\.\d+\.attn2",
}


@dataclass(frozen=True)
class MacCount:
    total: int  # MACs of the whole forward
    per_module: dict[str, int]  # MACs inside each module (its submodules included), by name within the root

    def inside(self, pattern: str) -> int:
        """MACs inside the modules whose whole name matches ``pattern`` (a regular expression), counted once."""
        matched = [name for name in self.per_module if re.fullmatch(pattern, name)]
        outermost = [name for name in matched if not any(name.startswith(other + ".") for other in matched)]
        return sum(self.per_module[name] for name in outermost)


@dataclass(frozen=True)
class ForwardMacs:
    total: int
    cross_attention: int  # inside the cross-attention modules (projections and attention)

    @property
    def without_cross_attention(self) -> int:
        return self.total - self.cross_attention


def count_macs(module: torch.nn.Module, inputs: dict[str, Any]) -> MacCount:
    """MACs of ``module(**inputs)`` (one forward, no gradient), in total and per submodule."""
    with FlopCounterMode(display=False, depth=None) as counter, torch.no_grad():
        module(**inputs)
    root = type(module).__name__
    per_module = {}
    for name, by_op in counter.get_flop_counts().items():
        if name == "Global" or not name.startswith(root + "."):
            continue
        per_module[name.removeprefix(root + ".")] = sum(by_op.values()) // 2
    return MacCount(total=counter.get_total_flops() // 2, per_module=per_module)


def cross_attention_pattern(denoiser: torch.nn.Module) -> str:
    for cls, pattern in CROSS_ATTENTION.items():
        if isinstance(denoiser, cls):
            return pattern
    raise TypeError(f"no cross-attention pattern for {type(denoiser).__name__}; known: "
                    + ", ".join(cls.__name__ for cls in CROSS_ATTENTION))


def forward_macs(denoiser: torch.nn.Module, inputs: dict[str, Any]) -> ForwardMacs:
    """One forward's MACs, and those of its cross-attention modules (what a gated forward skips)."""
    count = count_macs(denoiser, inputs)
    return ForwardMacs(total=count.total, cross_attention=count.inside(cross_attention_pattern(denoiser)))


def sampling_macs(guided: ForwardMacs, single: ForwardMacs, steps: int, gate_step: int | None,
                  calls_per_guided_step: int = 1, extra_guided_steps: int = 0) -> dict[str, int]:
    """Stock and TGATE MACs of a run of ``steps`` guided steps.

    ``guided``: one call of a guided step (batched guidance: the batch-2 forward; two-call guidance: one of the
    ``calls_per_guided_step`` batch-1 calls); ``single``: one call on one branch. TGATE: ``gate_step`` guided
    steps, then one single call per step without cross-attention, except ``extra_guided_steps`` after the gate
    that run guided to fill an expert's caches (Wan 2.2's second expert when it first runs after the gate).
    """
    guided_step = calls_per_guided_step * guided.total
    stock = steps * guided_step
    if gate_step is None or gate_step >= steps:
        return {"stock": stock, "tgate": stock}
    gated = steps - gate_step - extra_guided_steps
    tgate = (gate_step + extra_guided_steps) * guided_step + gated * single.without_cross_attention
    return {"stock": stock, "tgate": tgate}


def expert_switch_step(spec, steps: int) -> int | None:
    """The first step of Wan 2.2's low-noise expert (``transformer_2``: timesteps below ``boundary_ratio * 1000``)
    with ``spec``'s scheduler config; None for a model with one transformer."""
    import json

    from diffusers import UniPCMultistepScheduler

    index = spec.config_dir / "model_index.json"
    ratio = json.loads(index.read_text()).get("boundary_ratio") if index.is_file() else None
    if ratio is None:
        return None
    scheduler = UniPCMultistepScheduler.from_config(
        UniPCMultistepScheduler.load_config(spec.component_config_dir("scheduler")), **dict(spec.scheduler_kwargs))
    scheduler.set_timesteps(steps)
    boundary = ratio * scheduler.config.num_train_timesteps
    return next((i for i, t in enumerate(scheduler.timesteps) if t < boundary), None)


def model_sampling_macs(key: str, steps: int | None = None, gate_step: int | None = None,
                        height: int | None = None, width: int | None = None, frames: int | None = None) -> dict:
    """Stock and TGATE MACs of one guided run of the registry model ``key`` at its defaults (or those given),
    counted with attention (:data:`CONVENTION`), for one prompt; with the per-forward figures."""
    from .architectures import build_denoiser
    from .dit_architectures import dit_denoiser_inputs, is_dit
    from .models import get_model

    spec = get_model(key)
    denoiser = build_denoiser(spec)
    if not is_dit(denoiser):
        raise ValueError(f"{key}: attention-counting MACs are for the DiT models; eval/macs.py counts the others")
    default_height, default_width = spec.size
    height, width = height or default_height, width or default_width
    frames = frames or spec.frames or 1
    steps = steps or spec.steps
    gate_step = spec.gate_step if gate_step is None else gate_step
    two_calls = isinstance(denoiser, WanTransformer3DModel)  # Wan guides with two batch-1 calls
    single = forward_macs(denoiser, dit_denoiser_inputs(denoiser, 1, height, width, frames))
    guided = single if two_calls else forward_macs(denoiser, dit_denoiser_inputs(denoiser, 2, height, width, frames))
    switch = expert_switch_step(spec, steps)
    extra = int(switch is not None and gate_step is not None and gate_step <= switch < steps)
    run = sampling_macs(guided, single, steps, gate_step, 2 if two_calls else 1, extra_guided_steps=extra)
    return {
        "model": key, "height": height, "width": width, "frames": frames, "steps": steps, "gate_step": gate_step,
        "guidance": "two calls of batch 1" if two_calls else "one call of batch 2",
        "forward": single.total, "forward_without_cross_attention": single.without_cross_attention,
        "guided_forward": guided.total, "expert_switch_step": switch, **run,
        "speedup": run["stock"] / run["tgate"], "convention": CONVENTION,
    }
